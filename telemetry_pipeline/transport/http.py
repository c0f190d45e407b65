"""One place for how we talk HTTP: timeouts, which failures are transient, and bounded retries.
Every outbound call (sources, Signavio) goes through `request_with_retries`, so the retry policy is
written once: 429, 5xx and transport errors are retried with exponential backoff and jitter (stamina),
`Retry-After` is honoured up to a cap, and every other status is returned to the caller untouched.
The request is rebuilt for every attempt by the caller's `build` callable, so a body is never a
stream that a first attempt already drained.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import stamina
import stamina.instrumentation

# stamina logs retries through structlog when it is installed (Dagster brings it), and structlog
# prints to stdout, which is where the CLI writes its JSON. Send retries to stdlib logging instead.
stamina.instrumentation.set_on_retry_hooks([stamina.instrumentation.LoggingOnRetryHook])

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "telemetry-pipeline/0.1"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: `max_retries` extra attempts after the first, waits capped by `wait_max`."""

    max_retries: int = 3
    wait_initial: float = 0.5  # seconds: HTTP_RETRY_WAIT_INITIAL's default
    wait_max: float = 10.0
    wait_jitter: float | None = None  # random extra wait per attempt; default: as large as wait_initial
    retry_after_cap: float = 60.0


class TransientHTTPError(Exception):
    """A response worth retrying (429/5xx); carries the response so `Retry-After` can be read."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code} from {redact_url(str(response.request.url))}")
        self.response = response


class RequestFailed(Exception):
    """Retries are exhausted, or the transport failed for good. The message names the URL, never a token."""


def parse_duration(value: str | float | int) -> float:
    """`30s`, `2m`, `1m30s`, `500ms`, `1h` (Go-style) or plain seconds -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 2m, 1m30s or seconds)")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds (delta-seconds or HTTP date), or None when absent or unreadable."""
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def redact_url(url: str) -> str:
    """Drop the query string (it may carry credentials in some deployments) from URLs we log."""
    return url.split("?", 1)[0]


def make_client(timeout: float, *, max_connections: int = 20, headers: dict[str, str] | None = None) -> httpx.Client:
    """One client per run: pooled connections, explicit timeouts on every phase."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        follow_redirects=False,
    )


def request_with_retries(
    client: httpx.Client,
    build: Callable[[], httpx.Request],
    policy: RetryPolicy,
) -> httpx.Response:
    """Send `build()` until it gives a non-transient answer or the policy is exhausted.

    Returns the final response for every non-transient status (2xx, 3xx, 4xx but 408/425/429) so the
    caller decides what a 404 or 401 means. Raises `RequestFailed` when every attempt was transient.
    """

    def backoff(exc: Exception) -> bool | float:
        if isinstance(exc, TransientHTTPError):
            wait = retry_after_seconds(exc.response)
            return True if wait is None else min(wait, policy.retry_after_cap)
        return isinstance(exc, httpx.TransportError)

    try:
        for attempt in stamina.retry_context(
            on=backoff,
            attempts=policy.max_retries + 1,
            timeout=None,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            wait_jitter=policy.wait_initial if policy.wait_jitter is None else policy.wait_jitter,
        ):
            with attempt:
                response = client.send(build())
                if response.status_code in RETRYABLE_STATUS:
                    response.read()
                    raise TransientHTTPError(response)
                return response
    except TransientHTTPError as exc:
        raise RequestFailed(
            f"{exc} after {policy.max_retries + 1} attempts: {_short_body(exc.response)}"
        ) from None
    except httpx.TransportError as exc:
        url = redact_url(str(exc.request.url)) if exc.request else "?"
        raise RequestFailed(
            f"{type(exc).__name__} for {url} after {policy.max_retries + 1} attempts: {exc}"
        ) from None
    raise AssertionError("unreachable: stamina ran no attempt")


def _short_body(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
