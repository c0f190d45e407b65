"""What a session-API source needs: where the service is, and where it lists sessions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionApiSettings:
    url: str  # the service's base URL
    list_path: str | None = None  # the listing path; None: the source's default, "": no listing endpoint

