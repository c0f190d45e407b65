"""The sources' shared settings: each source's own variables (declared in `sources/<name>/`) and what every fetch
shares. `settings.py` reads them from the environment."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from telemetry_pipeline.sources.registry import VARIABLES
from telemetry_pipeline.transport.config import MB, HttpSettings, Secret

FIELDS: tuple[str, ...] = tuple(v.field for v in VARIABLES)  # every source's variables, by field


@dataclass(frozen=True)
class SourcesSettings:
    """The telemetry sources. `values` holds each source's own variables (declared in `sources/<name>/`), by field
    name, e.g. `agora_url`; a source is enabled by its first one (its URL or inbox directory). The rest is shared."""

    values: Mapping[str, str | Secret | None] = field(default_factory=lambda: dict.fromkeys(FIELDS))
    http: HttpSettings = HttpSettings()
    fetch_concurrency: int = 16
    settle_seconds: float = 0.0  # a listed session is taken once its last event is this old
    chunk_max_bytes: int = 32 * MB  # a run fetches about this much payload, exports it, then fetches more
    agent_name: str | None = None  # AGENT_NAME, else SERVICE_NAME: the agent when the data names none (identity.py)

    @classmethod
    def of(cls, **fields: object) -> SourcesSettings:
        """The defaults with `fields` changed: see `replace`."""
        return cls().replace(**fields)

    def replace(self, **changes: object) -> SourcesSettings:
        """Shared fields by name, a source's variables by their field (`extract_url=...`; a path is kept as text)."""
        declared = {k: v if v is None or isinstance(v, Secret) else str(v) for k, v in changes.items() if k in FIELDS}
        values = {**self.values, **declared}
        shared = {k: v for k, v in changes.items() if k not in FIELDS}
        return dataclasses.replace(self, values=values, **shared)  # type: ignore[arg-type]

    def plain(self) -> dict[str, str | None]:
        """Each variable's value as text (a secret's too): what a source's `configure` reads."""
        return {k: v.value if isinstance(v, Secret) else v for k, v in self.values.items()}
