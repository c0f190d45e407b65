"""What the OTLP source needs: the inbox directory of trace files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from telemetry_pipeline.sources.base import Values, Variable


def _home_inbox(home: Path) -> str | None:
    """Without OTLP_INBOX_DIR, `<home>/inbox` is the inbox when it exists (drop files there, nothing to set)."""
    inbox = home / "inbox"
    return str(inbox) if inbox.is_dir() else None


VARIABLES = (Variable("otlp_dir", "OTLP_INBOX_DIR", "enables source otlp: the inbox directory", default=_home_inbox),)


@dataclass(frozen=True)
class OtlpSettings:
    inbox_dir: Path


def configure(values: Values) -> OtlpSettings | None:
    """Enabled by an inbox directory (OTLP_INBOX_DIR, else `<home>/inbox` when it exists)."""
    inbox = values["otlp_dir"]
    return OtlpSettings(Path(inbox)) if inbox else None
