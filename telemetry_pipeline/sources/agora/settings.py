"""What the Agora source needs: the platform's URL and a user token."""

from __future__ import annotations

from dataclasses import dataclass, field

from telemetry_pipeline.sources.base import Values, Variable

VARIABLES = (
    Variable("agora_url", "AGORA_PLATFORM_URL", "enables source agora: the platform's URL"),
    Variable("agora_token", "AGORA_API_TOKEN", "secret: bound with EnvVar", secret=True),
)


@dataclass(frozen=True)
class AgoraSettings:
    url: str
    token: str | None = field(default=None, repr=False)  # secret: never in a repr or a message


def configure(values: Values) -> AgoraSettings | None:
    """Enabled by the platform URL (AGORA_PLATFORM_URL)."""
    url = values["agora_url"]
    return AgoraSettings(url, values["agora_token"]) if url else None
