"""The simulator's server: its routes on a loopback server."""

from __future__ import annotations

import logging
import time

from telemetry_pipeline.simulate.loopback import LoopbackServer
from telemetry_pipeline.simulate.routes import Routes
from telemetry_pipeline.simulate.runs import SOURCES, session_id, source_of
from telemetry_pipeline.simulate.timelines import SimulationConfig, Timeline

logger = logging.getLogger(__name__)


class Simulator:
    """Serves the generated population on `url` (one port for both sources). A context manager."""

    def __init__(
        self, config: SimulationConfig, host: str = "127.0.0.1", port: int = 0, prerender: bool = False
    ) -> None:
        """`prerender`: render every history session's answer before serving (`Routes.prerender`)."""
        self.config = config
        now_ms = int(time.time() * 1000)
        self.timeline = Timeline.live(config, now_ms) if config.live_rate > 0 else Timeline.fixed(config)
        self._routes = Routes(config, self.timeline, time.time)
        if prerender:
            self._routes.prerender()
        self._server = LoopbackServer(self._routes, host, port, name="simulator")
        self.url = self._server.url

    def start(self) -> Simulator:
        """Serve on a background thread (idempotent); returns self."""
        self._server.start()
        logger.debug("simulator serving %d sessions on %s", self.config.sessions, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and hang up on clients. Idempotent, and safe to call from several threads
        (the CLI's `serve_forever` stops on its way out while its `with` block stops too)."""
        self._server.stop()

    def serve_forever(self) -> None:
        """Serve until interrupted (the CLI's `simulate`), started or not; KeyboardInterrupt propagates."""
        self.start()
        try:
            self._server.wait()
        finally:
            self.stop()

    def session_ids(self, source: str | None = None) -> list[str]:
        """Ids visible now, in end-time order; `source` is `extract`, `agent_telemetry` or None for both."""
        if source is not None and source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
        indexes = range(self._routes.visible_count())
        return [session_id(i) for i in indexes if source is None or source_of(i) == source]

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
