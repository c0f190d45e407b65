"""When simulated sessions end: the configuration and the timeline that orders every session by end time."""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import dataclass

# Without live sessions the newest session ends at this fixed instant, so bodies never depend on the
# wall clock; it lies in the past, so every session is already "finished" when the server starts.
FIXED_ANCHOR = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SESSION_SPACING_MS = 60_000  # one session ends about every minute
LIVE_SETTLED_MS = 10 * 60_000  # in live mode, history ends this long before start (already finished)


@dataclass(frozen=True)
class SimulationConfig:
    """What to serve. Same values (with `live_rate == 0`) → byte-identical responses."""

    sessions: int = 200
    events_per_session: int = 30
    seed: int = 7
    live_rate: float = 0.0  # new sessions per minute after start; 0 = a fixed population

    def __post_init__(self) -> None:
        if self.sessions < 0:
            raise ValueError("sessions must be >= 0")
        if self.events_per_session < 1:
            raise ValueError("events_per_session must be >= 1")
        if self.live_rate < 0:
            raise ValueError("live_rate must be >= 0")




@dataclass(frozen=True)
class Timeline:
    """End time (epoch ms) of every session index, strictly increasing with the index.

    History (the first `sessions` indexes) ends at `anchor_ms`, one session per spacing going back.
    In live mode (`live_interval_ms > 0`) later indexes end one interval apart after `live_start_ms`
    and become visible once their end time has passed.
    """

    sessions: int
    seed: int
    anchor_ms: int
    live_start_ms: int = 0
    live_interval_ms: int = 0

    @classmethod
    def fixed(cls, config: SimulationConfig) -> Timeline:
        return cls(config.sessions, config.seed, int(FIXED_ANCHOR.timestamp() * 1000))

    @classmethod
    def live(cls, config: SimulationConfig, now_ms: int) -> Timeline:
        interval = max(1, round(60_000 / config.live_rate))
        return cls(config.sessions, config.seed, now_ms - LIVE_SETTLED_MS, now_ms, interval)

    def end_ms(self, index: int) -> int:
        if index >= self.sessions:
            return self.live_start_ms + (index - self.sessions + 1) * self.live_interval_ms
        # Jitter below half a spacing keeps ends strictly increasing while avoiding a metronome.
        jitter = random.Random(f"{self.seed}:{index}:end").randrange(SESSION_SPACING_MS // 2)
        return self.anchor_ms - (self.sessions - 1 - index) * SESSION_SPACING_MS - jitter

    def visible_count(self, now_ms: int) -> int:
        if self.live_interval_ms <= 0 or now_ms < self.live_start_ms:
            return self.sessions
        return self.sessions + (now_ms - self.live_start_ms) // self.live_interval_ms



def format_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. `2025-12-31T23:59:01.042Z`."""
    # gmtime + strftime is several times faster than datetime here, and this runs once per event.
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"
