"""What the OTLP source needs: the inbox directory of trace files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from telemetry_pipeline.settings import SourcesSettings


@dataclass(frozen=True)
class OtlpSettings:
    inbox_dir: Path


def configure(settings: SourcesSettings) -> OtlpSettings | None:
    """Enabled by an inbox directory (OTLP_INBOX_DIR, else `<home>/inbox` when it exists)."""
    return OtlpSettings(settings.otlp_dir) if settings.otlp_dir else None
