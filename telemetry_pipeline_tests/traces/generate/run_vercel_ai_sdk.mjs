// Vercel AI SDK (ai v6, ToolLoopAgent) with its built-in OpenTelemetry spans (experimental_telemetry).
//
// Writes ../vercel_ai_sdk.jsonl (one line per session). The triage agent delegates to the billing agent through a
// tool (`ask_billing_specialist`) that runs the billing agent; the billing agent has the two tools. `@ai-sdk/openai`'s
// default model (`openai(id)`, the Responses API) talks to fake_openai_server.py, which this script starts on
// loopback. The SDK's spans go to the globally registered tracer provider (scope `ai`) and are serialised by
// `@opentelemetry/otlp-transformer`'s JsonTraceSerializer (OTLP/JSON, hex ids). The session id goes in as telemetry
// metadata (`ai.telemetry.metadata.sessionId`).
// Node resolves packages from the script's own folder, so run a copy next to the installed package.json:
//   cp run_vercel_ai_sdk.mjs package.json /tmp/tracegen/vercel && cd /tmp/tracegen/vercel && npm install
//   TRACEGEN_DIR=<this folder> node run_vercel_ai_sdk.mjs
import { spawn } from 'node:child_process';
import { writeFileSync, appendFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { createOpenAI } from '@ai-sdk/openai';
import { JsonTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { ToolLoopAgent, stepCountIs, tool } from 'ai';
import { z } from 'zod';

const HERE = process.env.TRACEGEN_DIR ?? dirname(fileURLToPath(import.meta.url));
const OUT = join(HERE, '..', 'vercel_ai_sdk.jsonl');

// The same scenario as scenario.py (all values fake).
const EMAIL = 'jane.doe@example.com';
const PHONE = '+49 30 12345678';
const USER_PROMPT =
  `Hi, I'm ${EMAIL} (${PHONE}). I was double charged for my March invoice. ` +
  'My dev pasted our key sk-proj-T3stK3yPl4nt3dF0rRedact10nCheck0123456789abcd and AWS AKIAIOSFODNN7EXAMPLE / ' +
  'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY into the ticket, please ignore. Please refund 42 EUR.';
const TRIAGE_INSTRUCTIONS =
  "You are the triage agent of ACME's customer support. Decide which specialist handles the request; billing " +
  'questions (charges, invoices, refunds) go to the Billing Specialist. Never answer billing questions yourself.';
const BILLING_INSTRUCTIONS =
  "You are ACME's billing specialist. Look the customer's account up with lookup_account, then issue refunds " +
  'with refund_payment. Tell the customer the outcome in two sentences.';
const SESSIONS = [
  ['vercel-ai-session-0001-refund-declined', true],
  ['vercel-ai-session-0002-refund-ok', false],
];

class PaymentGatewayError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PaymentGatewayError';
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The JS serializer writes int64 attribute values as JSON numbers; the Collector's file exporter (protobuf's JSON
// mapping) writes them as decimal strings, as this project's other files do.
function int64AsString(key, value) {
  return key === 'intValue' && typeof value === 'number' ? String(value) : value;
}

async function startFakeServer() {
  const server = spawn('python3', [join(HERE, 'fake_openai_server.py'), '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const firstLine = await new Promise((resolve, reject) => {
    createInterface({ input: server.stdout }).once('line', resolve);
    server.once('exit', (code) => reject(new Error(`fake server exited with ${code}`)));
  });
  return { server, baseURL: firstLine.trim() };
}

function buildAgents(openai, sessionId, failRefund) {
  const telemetry = (functionId) => ({ isEnabled: true, functionId, metadata: { sessionId } });
  const billing = new ToolLoopAgent({
    id: 'billing-specialist',
    model: openai('gpt-4o'),
    instructions: BILLING_INSTRUCTIONS,
    stopWhen: stepCountIs(6),
    experimental_telemetry: telemetry('Billing Specialist'),
    tools: {
      lookup_account: tool({
        description: "Look up a customer's billing account by e-mail address.",
        inputSchema: z.object({ customer_email: z.string() }),
        execute: async ({ customer_email }) => {
          await sleep(50);
          return {
            account_id: 'ACC-1042', name: 'Jane Doe', email: customer_email, phone: PHONE, plan: 'Business Monthly',
            last_invoices: [
              { invoice: 'INV-2025-0311', amount_eur: 42.0, status: 'paid' },
              { invoice: 'INV-2025-0311-DUP', amount_eur: 42.0, status: 'paid' },
            ],
          };
        },
      }),
      refund_payment: tool({
        description: 'Refund an amount (EUR) to the payment method on file of an account.',
        inputSchema: z.object({ account_id: z.string(), amount: z.number() }),
        execute: async ({ account_id, amount }) => {
          await sleep(120);
          if (failRefund) {
            throw new PaymentGatewayError(`refund declined for account ${account_id} (contact ${EMAIL})`);
          }
          return { refund_id: 'RF-77813', account_id, amount_eur: amount, status: 'succeeded' };
        },
      }),
    },
  });
  return new ToolLoopAgent({
    id: 'triage-agent',
    model: openai('gpt-4o-mini'),
    instructions: TRIAGE_INSTRUCTIONS,
    stopWhen: stepCountIs(4),
    experimental_telemetry: telemetry('Triage Agent'),
    tools: {
      ask_billing_specialist: tool({
        description: 'Hand a billing request (charges, invoices, refunds) to the Billing Specialist.',
        inputSchema: z.object({ request: z.string() }),
        execute: async ({ request }) => (await billing.generate({ prompt: request })).text,
      }),
    },
  });
}

async function main() {
  const exporter = new InMemorySpanExporter();
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'support-desk-vercel-ai-sdk' }),
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  provider.register();
  const { server, baseURL } = await startFakeServer();
  try {
    const openai = createOpenAI({ baseURL, apiKey: 'sk-fake-not-a-real-key' });
    writeFileSync(OUT, '');
    for (const [sessionId, failRefund] of SESSIONS) {
      await buildAgents(openai, sessionId, failRefund).generate({ prompt: USER_PROMPT });
      await provider.forceFlush();
      const request = new TextDecoder().decode(JsonTraceSerializer.serializeRequest(exporter.getFinishedSpans()));
      appendFileSync(OUT, JSON.stringify(JSON.parse(request), int64AsString) + '\n');
      exporter.reset();
    }
  } finally {
    server.kill();
    await provider.shutdown();
  }
}

await main();
