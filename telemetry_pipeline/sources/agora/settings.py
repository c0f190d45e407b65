"""What the Agora source needs: the platform's URL and a user token."""

from __future__ import annotations

from dataclasses import dataclass, field

from telemetry_pipeline.settings import SourcesSettings


@dataclass(frozen=True)
class AgoraSettings:
    url: str
    token: str | None = field(default=None, repr=False)  # secret: never in a repr or a message


def configure(settings: SourcesSettings) -> AgoraSettings | None:
    """Enabled by the platform URL (AGORA_PLATFORM_URL)."""
    if not settings.agora_url:
        return None
    return AgoraSettings(settings.agora_url, settings.agora_token.value if settings.agora_token else None)
