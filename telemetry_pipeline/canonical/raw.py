"""A session's payload exactly as its source served it: what a source hands over, the warehouse keeps verbatim and a
normaliser reads. A session is named `<source>:<session id>` everywhere (its partition key)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


def session_key(source: str, session_id: str) -> str:
    return f"{source}:{session_id}"


@dataclass(frozen=True)
class RawSession:
    """A payload exactly as the source served it, before any parsing."""

    source: str
    session_id: str
    body: bytes
    content_type: str
    fetched_at: dt.datetime
    location: str  # URL or file path it came from (no credentials)

    @property
    def key(self) -> str:
        return session_key(self.source, self.session_id)
