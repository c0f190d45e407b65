"""A fake OpenAI-compatible model server on loopback that scripts the support scenario deterministically.

Implements `POST /v1/chat/completions` and `POST /v1/responses` (non-streaming). What it answers depends only on the
request: the tools offered and the tool calls/results already in the conversation.

1. A handoff/delegation tool (a tool whose name mentions "billing") is offered and not called yet: call it.
2. `lookup_account` is offered and not called yet: call it for the planted e-mail.
3. `refund_payment` is offered and not called yet: call it for ACC-1042, 42 EUR.
4. Otherwise answer in text; the answer apologises when a tool result in the conversation says "declined" or "error".

Usage is made up but shaped like OpenAI's: prompt tokens ~ request size / 4, `cached_tokens` non-zero on every call
that continues a conversation, `reasoning_tokens` non-zero on final answers of gpt-4o. Latency is simulated
(0.15 s + 4 ms per completion token). Run standalone with `python fake_openai_server.py --port 8089`; it
prints its base URL as the first line of its output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any

from scenario import ACCOUNT_ID, PLANTED_EMAIL, PLANTED_PHONE, REFUND_AMOUNT

SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}
_ids = count(1)


def _uid(prefix: str, length: int = 24) -> str:
    digest = hashlib.sha256(f"{time.time_ns()}-{next(_ids)}".encode()).hexdigest()
    return f"{prefix}{digest[:length]}"


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part.get("text", part.get("output", ""))) if isinstance(part, dict) else str(part)
                       for part in content)
    return json.dumps(content)


@dataclass
class Conversation:
    """The parts of a request the script looks at, the same for both APIs."""

    model: str
    tools: dict[str, dict[str, Any]]  # name -> JSON schema of its parameters
    calls: list[tuple[str, str]] = field(default_factory=list)  # (call id, tool name) the model made so far
    results: dict[str, str] = field(default_factory=dict)  # call id -> tool output

    def called(self, name: str) -> bool:
        return any(n == name for _, n in self.calls)


def from_chat(body: dict[str, Any]) -> Conversation:
    conv = Conversation(body.get("model", ""), {
        t["function"]["name"]: t["function"].get("parameters") or {} for t in body.get("tools") or []
        if t.get("type") == "function"})
    for msg in body.get("messages", []):
        for call in msg.get("tool_calls") or []:
            conv.calls.append((call["id"], call["function"]["name"]))
        if msg.get("role") == "tool":
            conv.results[msg.get("tool_call_id", "")] = _text(msg.get("content"))
    return conv


def from_responses(body: dict[str, Any]) -> Conversation:
    conv = Conversation(body.get("model", ""), {
        t["name"]: t.get("parameters") or {} for t in body.get("tools") or [] if t.get("type") == "function"})
    items = body.get("input")
    for item in items if isinstance(items, list) else []:
        if item.get("type") == "function_call":
            conv.calls.append((item["call_id"], item["name"]))
        elif item.get("type") == "function_call_output":
            conv.results[item["call_id"]] = _text(item.get("output"))
    return conv


HANDOFF_SUMMARY = (
    f"Customer {PLANTED_EMAIL} ({PLANTED_PHONE}) reports a double charge on the March invoice "
    "and asks for a refund of 42 EUR."
)


def decide(conv: Conversation) -> tuple[str, dict[str, Any]] | str:
    """The next step: (tool name, arguments) for a tool call, or the text of the answer."""
    handoffs = [name for name in conv.tools if "billing" in name.lower()]
    for name in handoffs:
        if not conv.called(name):
            props = conv.tools[name].get("properties") or {}
            return name, {p: HANDOFF_SUMMARY for p, s in props.items() if s.get("type", "string") == "string"}
    if "lookup_account" in conv.tools and not conv.called("lookup_account"):
        return "lookup_account", {"customer_email": PLANTED_EMAIL}
    if "refund_payment" in conv.tools and not conv.called("refund_payment"):
        return "refund_payment", {"account_id": ACCOUNT_ID, "amount": REFUND_AMOUNT}
    declined = any(word in out.lower() for out in conv.results.values() for word in ("declined", "error"))
    if handoffs:  # the triage agent / supervisor, after the specialist is done
        if declined:
            return ("I'm sorry: our billing specialist could not complete the 42 EUR refund because the payment "
                    "gateway declined it. A colleague from billing will contact you at "
                    f"{PLANTED_EMAIL} within one business day.")
        return ("All set: our billing specialist refunded the duplicate charge of 42 EUR (refund RF-77813). "
                "Please also rotate the keys your developer pasted into the ticket.")
    if declined:
        return (f"I found your account {ACCOUNT_ID} and the duplicate March charge, but the payment gateway declined "
                "the 42 EUR refund. I have escalated it to our payments team, who will contact you at "
                f"{PLANTED_EMAIL}.")
    return (f"I found your account {ACCOUNT_ID} and the duplicate March charge, and refunded 42 EUR (refund "
            "RF-77813); it will reach your card within 5 business days.")


def usage(body: dict[str, Any], conv: Conversation, output: str, final: bool) -> tuple[int, int, int, int]:
    """(prompt, completion, cached, reasoning) tokens."""
    prompt = max(8, len(json.dumps(body)) // 4)
    reasoning = 128 if final and conv.model.startswith("gpt-4o") and "mini" not in conv.model else 0
    completion = max(5, len(output) // 4) + reasoning
    cached = (prompt * 6 // 10) // 64 * 64 if conv.calls else 0
    return prompt, completion, cached, reasoning


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    conv = from_chat(body)
    step = decide(conv)
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    if isinstance(step, str):
        message["content"], finish = step, "stop"
        output = step
    else:
        name, args = step
        output = json.dumps(args)
        message["tool_calls"] = [{"id": _uid("call_"), "type": "function",
                                  "function": {"name": name, "arguments": output}}]
        finish = "tool_calls"
    prompt, completion, cached, reasoning = usage(body, conv, output, isinstance(step, str))
    _simulate_latency(completion)
    return {
        "id": _uid("chatcmpl-", 29), "object": "chat.completion", "created": int(time.time()),
        "model": SNAPSHOTS.get(conv.model, conv.model), "system_fingerprint": "fp_" + _uid("", 10),
        "service_tier": "default",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
    }


def response(body: dict[str, Any]) -> dict[str, Any]:
    conv = from_responses(body)
    step = decide(conv)
    item: dict[str, Any]
    if isinstance(step, str):
        output = step
        item = {"type": "message", "id": _uid("msg_", 48), "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": step, "annotations": [], "logprobs": []}]}
    else:
        name, args = step
        output = json.dumps(args)
        item = {"type": "function_call", "id": _uid("fc_", 48), "call_id": _uid("call_"), "name": name,
                "arguments": output, "status": "completed"}
    prompt, completion, cached, reasoning = usage(body, conv, output, isinstance(step, str))
    _simulate_latency(completion)
    created = int(time.time())
    return {
        "id": _uid("resp_", 48), "object": "response", "created_at": created, "completed_at": created,
        "status": "completed", "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": SNAPSHOTS.get(conv.model, conv.model), "output": [item],
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0), "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0), "truncation": "disabled", "user": None, "metadata": {},
        "usage": {
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
        },
    }


def _simulate_latency(completion_tokens: int) -> None:
    time.sleep(0.15 + 0.004 * completion_tokens)


ROUTES = {"/v1/chat/completions": chat_completion, "/v1/responses": response}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_requests = False

    def do_POST(self) -> None:
        route = ROUTES.get(self.path.split("?")[0].rstrip("/"))
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if route is None or body.get("stream"):
            self._send(404 if route is None else 400, {"error": {
                "message": f"fake server: {'streaming' if route else self.path} not supported",
                "type": "invalid_request_error", "param": None, "code": None}})
            return
        self._send(200, route(body))

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", _uid("req_", 32))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.log_requests:
            super().log_message(format, *args)


@contextmanager
def fake_openai_server(port: int = 0) -> Iterator[str]:
    """Serve on 127.0.0.1 in a daemon thread; yields the base URL (".../v1")."""
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args()
    Handler.log_requests = args.log_requests
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    sys.stdout.write(f"http://127.0.0.1:{server.server_address[1]}/v1\n")  # the first line: the base URL
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
