"""What an outbound connection is configured with: its timeout and retries, and the secret it sends (which never
prints). `settings.py` reads them from the environment; the sources and the Signavio client take them as they are."""

from __future__ import annotations

from dataclasses import dataclass, field

from telemetry_pipeline.transport.http import RetryPolicy

MB = 1024 * 1024


@dataclass(frozen=True)
class Secret:
    """A token. `env_var` names the variable it came from (None when given directly, e.g. in tests)."""

    value: str = field(repr=False)
    env_var: str | None = None


@dataclass(frozen=True)
class HttpSettings:
    """How one kind of outbound call behaves: per-request timeout and bounded retries."""

    timeout: float = 30.0  # seconds
    max_retries: int = RetryPolicy.max_retries
    retry_wait_initial: float = RetryPolicy.wait_initial  # seconds; doubles per attempt, with jitter

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, wait_initial=self.retry_wait_initial)
