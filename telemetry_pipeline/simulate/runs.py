"""One agent run: the events of a simulated session, generated from `(seed, session index)`."""

from __future__ import annotations

import math
import random
from typing import Any

from telemetry_pipeline.simulate.timelines import SimulationConfig, Timeline, format_ms
from telemetry_pipeline.simulate.vocabulary import (
    ERRORS,
    MEMORY_KEYS,
    MODELS,
    THOUGHTS,
    TOOL_TIMEOUT_MS,
    TOOLS,
    WORKFLOWS,
    Step,
)

EXTRACT = "extract"
AGENT_TELEMETRY = "agent_telemetry"
SOURCES = (EXTRACT, AGENT_TELEMETRY)
ID_PREFIX = {EXTRACT: "sim-ex-", AGENT_TELEMETRY: "sim-at-"}
PARITY = {EXTRACT: 0, AGENT_TELEMETRY: 1}

Run = list[tuple[int, str, dict[str, Any]]]  # (epoch ms, event type, payload)


def session_id(index: int) -> str:
    return f"{ID_PREFIX[source_of(index)]}{index:06d}"


def source_of(index: int) -> str:
    return EXTRACT if index % 2 == 0 else AGENT_TELEMETRY


def generate_events(config: SimulationConfig, index: int, timeline: Timeline | None = None) -> list[dict[str, Any]]:
    """The events of session `index`: pure, deterministic per `(config, index)` (and the timeline)."""
    timeline = timeline or Timeline.fixed(config)
    _, run = build_run(f"{config.seed}:{index}", config.events_per_session, timeline.end_ms(index))
    sid = session_id(index)
    return [
        {"timestamp": format_ms(at), "session_id": sid, "type": kind, "payload": payload} for at, kind, payload in run
    ]


def build_run(key: str, n: int, end_ms: int) -> tuple[RunBuilder, Run]:
    """A run of `n` events from the random stream `key`, ending exactly at `end_ms`."""
    builder = RunBuilder(random.Random(key))
    relative = builder.build(n)
    shift = end_ms - relative[-1][0]
    return builder, [(shift + offset, kind, payload) for offset, kind, payload in relative]


class RunBuilder:
    """Builds one agent run as exactly `n` events of `(offset_ms, type, payload)`.

    Shape: user prompt → planning → tool calls walking through the workflow's steps in order (with
    retries after failures, some parallel calls, thoughts and memory writes) → summarising → response.
    Optional parts are dropped when `n` is small so the count is always exact.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.workflow = rng.choice(WORKFLOWS)
        self.version = self.workflow.versions[0] if rng.random() < 0.7 else rng.choice(self.workflow.versions[1:])
        self.request = rng.randrange(len(self.workflow.prompts))
        self.events: Run = []  # offsets from 0 until `_run` shifts them
        self.now = 0
        self.model: str | None = None
        self.state = "idle"
        self.prompt_at = 0
        self.step = self.workflow.steps[0]
        self.finished_tools: list[str] = []  # successful tools of earlier steps: the next step's inputs
        self.step_tools: list[str] = []
        self.retry: str | None = None
        self.last_failed = False

    def build(self, n: int) -> Run:
        self._user_prompt(self.workflow.prompts[self.request], first=True)
        if n == 1:
            return self.events
        middle = n - 2
        head = [part for part, needs in (("planning", 6), ("model", 1), ("executing", 8)) if middle >= needs]
        tail = [part for part, needs in (("summarising", 7), ("responding", 6)) if middle >= needs]
        for part in head:
            self._fixed_part(part)
        self._body(middle - len(head) - len(tail))
        for part in tail:
            self._fixed_part(part)
        self._response(final=True)
        return self.events

    # -- structure

    def _fixed_part(self, part: str) -> None:
        if part == "model":
            self._model_change("planning")
        elif part == "summarising":
            self._model_change("summarization")
        else:
            self._state_change(part)

    def _body(self, n: int) -> None:
        """Fill exactly `n` events; the step follows progress so every run visits the steps in order."""
        follow_up_at = int(n * 0.6) if n >= 14 and self.rng.random() < 0.25 else None
        done = 0
        while done < n:
            self._enter_step(self.workflow.steps[done * len(self.workflow.steps) // n])
            left = n - done
            if follow_up_at is not None and done >= follow_up_at and left >= 4:
                self._response(final=False)
                self._user_prompt(self.rng.choice(self.workflow.follow_ups), first=False)
                follow_up_at = None
                done += 2
                continue
            done += self._block(left)

    def _block(self, left: int) -> int:
        """One unit of work that fits in `left` events; returns how many events it added."""
        if left == 1:
            self._single()
            return 1
        if self.retry is not None:
            tool, self.retry = self.retry, None
            self._tool_call(tool)
            return 2
        roll = self.rng.random()
        if roll < 0.12 and left >= 4 and len(set(self.step.tools)) >= 2:
            self._parallel_calls()
            return 4
        if roll < 0.72:
            self._tool_call(self.rng.choice(self.step.tools))
            return 2
        self._single()
        return 1

    def _single(self) -> None:
        roll = self.rng.random()
        if roll < 0.45:
            self._thought()
        elif roll < 0.7:
            self._memory_write()
        elif roll < 0.85 and self.last_failed:
            self._state_change("reflecting")
        else:
            self._model_change("tool_selection")

    def _enter_step(self, step: Step) -> None:
        if step is not self.step:
            self.finished_tools.extend(self.step_tools)
            # A failure at the end of a step is not retried in the next one: the agent moved on.
            self.step, self.step_tools, self.retry = step, [], None

    # -- events

    def _emit(self, kind: str, payload: dict[str, Any], at: int | None = None) -> None:
        """Append at `at`, or after a short pause of the agent's own bookkeeping."""
        self.now = at if at is not None else self._next_time()
        self.events.append((self.now, kind, payload))

    def _next_time(self) -> int:
        return self.now + self.rng.randint(15, 400)

    def _user_prompt(self, prompt: str, first: bool) -> None:
        wf = self.workflow
        payload: dict[str, Any] = {"prompt": prompt, "tokens": _token_count(prompt, self.rng)}
        if first:
            payload |= {"service_name": wf.service_name, "workflow_name": wf.workflow_name,
                        "workflow_version": self.version, "agent_type": wf.agent_type}
        self.now += self.rng.randint(2_000, 20_000)  # the user reads and types
        self._emit("user_prompt", payload, at=self.now)
        self.prompt_at = self.now

    def _response(self, final: bool) -> None:
        failed = final and self.last_failed
        answer = self.workflow.responses[self.request]
        text = ("Sorry, I could not finish: a required tool kept failing." if failed
                else answer if final else f"First results: {answer}")
        state = "failed" if failed else "completed" if final else "waiting_for_user"
        at = self._next_time()
        payload = {"response": text, "tokens": _token_count(text, self.rng), "latency_ms": at - self.prompt_at,
                   "agent_state": state}
        self._emit("agent_response", payload, at=at)

    def _state_change(self, state: str) -> None:
        self._emit("agent_state_change", {"agent_state": state, "previous_state": self.state})
        self.state = state

    def _model_change(self, purpose: str) -> None:
        model = MODELS[self.rng.choice(self.workflow.models)]
        input_tokens = self.rng.randint(600, 6_000) + 40 * len(self.events)  # context grows with the run
        output_tokens = self.rng.randint(40, 900)
        payload: dict[str, Any] = {
            "model": model.name, "purpose": purpose, "temperature": self.rng.choice((0.0, 0.2, 0.3, 0.7)),
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cost": round((input_tokens * model.usd_per_m_input + output_tokens * model.usd_per_m_output) / 1e6, 6),
            "context_length": model.context_length,
        }
        if self.model is not None:
            payload["previous_model"] = self.model
        self._emit("model_change", payload)
        self.model = model.name
        # The model's generation time passes before the agent's next move.
        self.now += 250 + int(output_tokens * model.ms_per_output_token)

    # Only tool calls carry `step_name`: the normaliser names an instant event after its step, which would
    # blur thoughts, memory writes and state changes into one activity per step.

    def _thought(self) -> None:
        self._emit("agent_thought", {"thought": self.rng.choice(THOUGHTS)})

    def _memory_write(self) -> None:
        size = self.rng.randint(200, 20_000)
        self._emit("memory_write", {"memory_key": self.rng.choice(MEMORY_KEYS), "size_bytes": size})

    def _tool_call(self, name: str) -> None:
        self._emit("tool_call_started", self._started_payload(name, parallel=False))
        latency, completed = self._outcome(name)
        self._emit("tool_call_completed", completed, at=self.now + latency)

    def _parallel_calls(self) -> None:
        """Two different tools in flight at once; completions are emitted in the order they finish."""
        first, second = self.rng.sample(sorted(set(self.step.tools)), 2)
        self._emit("tool_call_started", self._started_payload(first, parallel=True))
        start_first = self.now
        self._emit("tool_call_started", self._started_payload(second, parallel=True),
                   at=self.now + self.rng.randint(1, 40))
        start_second = self.now
        ends = []
        for name, started in ((first, start_first), (second, start_second)):
            latency, completed = self._outcome(name)
            ends.append((started + latency, started, completed))
        ends.sort(key=lambda end: end[0])
        for finish, started, completed in ends:
            finish = max(finish, self.now + 1)  # strictly increasing timestamps, even on a tie
            completed["latency_ms"] = finish - started
            self._emit("tool_call_completed", completed, at=finish)

    def _started_payload(self, name: str, parallel: bool) -> dict[str, Any]:
        tool = TOOLS[name]
        payload: dict[str, Any] = {
            "tool_name": name,
            "parameters": {key: self.rng.choice(values) for key, values in tool.parameters.items()},
            "category": tool.category,
            "step_name": self.step.name,
        }
        if not self.step_tools and self.finished_tools:
            # Until this step has a result of its own, it works from what the earlier steps produced.
            payload["dependencies"] = sorted(set(self.finished_tools[-2:]))
        if parallel:
            payload["parallel"] = True
        return payload

    def _outcome(self, name: str) -> tuple[int, dict[str, Any]]:
        """(latency_ms, completed payload); a failure is retried next with probability 0.6."""
        tool = TOOLS[name]
        latency = max(5, int(self.rng.lognormvariate(math.log(tool.median_ms), 0.45)))
        payload: dict[str, Any] = {"tool_name": name, "success": True, "latency_ms": latency,
                                   "step_name": self.step.name}
        self.last_failed = self.rng.random() < tool.failure_rate
        if self.last_failed:
            error, details, is_timeout = self.rng.choice(ERRORS)
            latency = TOOL_TIMEOUT_MS + self.rng.randint(0, 50) if is_timeout else max(5, latency // 4)
            payload |= {"success": False, "latency_ms": latency, "error": error, "error_details": details}
            if self.rng.random() < 0.6:
                self.retry = name
        else:
            self.step_tools.append(name)
        return latency, payload


def _token_count(text: str, rng: random.Random) -> int:
    # Roughly 4/3 tokens per word, with tokenizer noise.
    return len(text.split()) * 4 // 3 + rng.randint(0, 5)


def session_summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The Extract service's per-session figures, computed from the events themselves."""
    prompts = [e["payload"] for e in events if e["type"] == "user_prompt"]
    started = [e for e in events if e["type"] == "tool_call_started"]
    completed = [e["payload"] for e in events if e["type"] == "tool_call_completed"]
    successes = sum(1 for p in completed if p["success"])
    responses = [e["payload"] for e in events if e["type"] == "agent_response"]
    first = prompts[0]
    return {
        "metrics": {
            "user_prompt_count": len(prompts),
            "tool_call_count": len(completed),
            "tool_call_started_count": len(started),
            "tool_success_count": successes,
            "tool_error_count": len(completed) - successes,
            "tool_success_rate": round(successes / len(completed), 4) if completed else 0.0,
            "avg_tool_latency_ms": _mean([p["latency_ms"] for p in completed]),
            "model_change_count": sum(1 for e in events if e["type"] == "model_change"),
            "last_user_prompt": prompts[-1]["prompt"],
        },
        "service_name": first["service_name"],
        "workflow_name": first["workflow_name"],
        "agent_type": first["agent_type"],
        "prompt_count": len(prompts),
        "total_prompt_tokens": sum(p["tokens"] for p in prompts),
        "total_response_tokens": sum(p["tokens"] for p in responses),
        "avg_prompt_latency_ms": _mean([p["latency_ms"] for p in responses]),
    }


def _mean(values: list[int]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0
