"""What a session-API source needs: where the service is, and where it lists sessions."""

from __future__ import annotations

from dataclasses import dataclass

from telemetry_pipeline.sources.base import Variable


@dataclass(frozen=True)
class SessionApiSettings:
    url: str  # the service's base URL
    list_path: str | None = None  # the listing path; None: the source's default, "": no listing endpoint


def listing_variable(field: str, env: str) -> Variable:
    """The listing path's variable, the same for every session API: an empty value means "no listing"."""
    return Variable(field, env, "'' = no listing endpoint", keep_empty=True)
