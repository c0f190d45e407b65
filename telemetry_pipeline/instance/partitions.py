"""The `agent_sessions` partitions and how a set of keys becomes batched runs."""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import dagster as dg

from telemetry_pipeline.names import AGENT_SESSIONS

agent_sessions = dg.DynamicPartitionsDefinition(name=AGENT_SESSIONS)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class KeyRange:
    """Contiguous partition keys (never empty): what one run targets, named by its first and last key."""

    keys: tuple[str, ...]

    @property
    def start(self) -> str:
        return self.keys[0]

    @property
    def end(self) -> str:
        return self.keys[-1]

    @property
    def tags(self) -> dict[str, str]:
        return {RANGE_START_TAG: self.start, RANGE_END_TAG: self.end}


def batched_ranges(all_keys: Sequence[str], wanted: Collection[str], max_per_run: int) -> list[KeyRange]:
    """Contiguous runs of `wanted` keys in partition order, each at most `max_per_run` long.

    A run over a dynamic partitions definition covers a contiguous range in the order the keys were
    added, so scattered keys become several ranges; a range never includes a key not wanted.
    """
    wanted = set(wanted)
    ranges: list[KeyRange] = []
    current: list[str] = []
    for key in all_keys:
        if key in wanted:
            current.append(key)
            if len(current) == max_per_run:
                ranges.append(KeyRange(tuple(current)))
                current = []
        elif current:
            ranges.append(KeyRange(tuple(current)))
            current = []
    if current:
        ranges.append(KeyRange(tuple(current)))
    return ranges
