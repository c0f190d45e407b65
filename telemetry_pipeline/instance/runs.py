"""Our jobs run in this process against the instance (the CLI's way in): a discovery, export runs over batched
key ranges, and what each run's events say of each session."""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import dagster as dg
from tqdm import tqdm

from telemetry_pipeline.instance.history import exported_since
from telemetry_pipeline.instance.keys import SIGNAVIO_EXPORT_KEY
from telemetry_pipeline.instance.partitions import KeyRange, batched_ranges
from telemetry_pipeline.instance.recovery import mark_dead_runs
from telemetry_pipeline.instance.stopping import helper_processes, mark_interrupted, stop
from telemetry_pipeline.names import (
    AGENT_SESSIONS,
    DISCOVERED_SESSIONS,
    EXPORTED_MEANWHILE_META,
    FAILED_SESSIONS_META,
    IN_FLIGHT_META,
    PENDING_AS_OF_TAG,
    SESSION_EXPORT_STEP,
    SESSIONS_NOT_FOUND_META,
)
from telemetry_pipeline.settings import Settings

log = logging.getLogger(__name__)


def discover_once(
    instance: dg.DagsterInstance, definitions: dg.Definitions, run_config: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """Materialise `discovered_sessions` once: (its metadata's values, None), or (None, the run's error)."""
    asset = definitions.get_assets_def(DISCOVERED_SESSIONS)
    result = dg.materialize([asset], instance=instance, resources=definitions.resources, raise_on_error=False,
                            run_config=run_config)
    if not result.success:
        return None, run_error(result)
    meta = result.asset_materializations_for_node(DISCOVERED_SESSIONS)[0].metadata
    return {name: value.value for name, value in meta.items()}, None


@contextlib.contextmanager
def open_resources(definitions: dg.Definitions) -> Iterator[Any]:
    """The definitions' resources, initialised as a run would have them (for `check`)."""
    with dg.build_resources(definitions.resources or {}) as resources:
        yield resources


def unregister_unknown(instance: dg.DagsterInstance, keys: list[str], results: dict[str, dict[str, Any]]) -> None:
    """Remove the keys this command registered whose source answered that it has no such session."""
    for key in keys:
        instance.delete_dynamic_partition(AGENT_SESSIONS, key)
        results[key]["error"] = (f"not registered: {results[key]['error']} "
                                 "(`export --register` keeps a key its source does not know)")


_SIGNAL_GRACE_S = 5.0  # how long a helper's interrupt waits for the command's own before it counts as a failure


class Exporter:
    """Runs `export_sessions` over keys in batched runs and reads each key's outcome. The runs go to
    `settings.export_workers` processes side by side: this one, and helpers started for the first batch beyond
    its own, so one run's own work (fetch, DuckDB, upload) overlaps another's recording in Dagster. Each batch
    is one run either way; which process ran it is in its tags (`liveness`)."""

    def __init__(self, settings: Settings, job: dg.JobDefinition, build_job: Callable[[Settings], dg.JobDefinition],
                 instance: dg.DagsterInstance, run_config: dict[str, Any], tags: dict[str, str] | None = None,
                 prepare_helper: Callable[[], None] | None = None) -> None:
        self.settings, self.job, self.instance, self.run_config = settings, job, instance, run_config
        self.build_job = build_job  # how a helper process builds `job` for itself
        self.tags = tags or {}  # on every run, besides its key range's
        self.prepare_helper = prepare_helper  # run first in each helper process (the CLI's logging)
        self.not_found: set[str] = set()  # keys whose source has no such session

    def export(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        ranges = batched_ranges(self.instance.get_dynamic_partitions(AGENT_SESSIONS), keys, self.settings.batch_size)
        todo = deque(enumerate(ranges, 1))
        results: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()
        stopping = threading.Event()  # Ctrl-C or SIGTERM: the helpers are being stopped

        def take() -> tuple[int, KeyRange] | None:
            with lock:
                return todo.popleft() if todo else None

        def record(outcome: RangeOutcome) -> None:
            with lock:
                results.update(outcome.results)
                self.not_found.update(outcome.not_found)
                bar.update(len(outcome.results))

        def run_here() -> None:
            while (item := take()) is not None:
                log.info("run %d/%d: %d sessions", item[0], len(ranges), len(item[1].keys))
                record(run_range(self.job, self.instance, self.run_config, item[1], self.tags))

        def run_in(pool: ProcessPoolExecutor) -> None:
            while (item := take()) is not None:
                log.info("run %d/%d: %d sessions, in a helper process", item[0], len(ranges), len(item[1].keys))
                try:
                    record(pool.submit(_run_in_helper, self.run_config, item[1], self.tags).result())
                except (Exception, KeyboardInterrupt) as exc:  # the helper died or was stopped: this batch failed
                    # Stopped with the command (`ExportInterrupted` says so): a Ctrl-C reaches the helper and this
                    # process together, and the helper's interrupt may come back before this process's own.
                    if stopping.is_set() or (isinstance(exc, KeyboardInterrupt) and stopping.wait(_SIGNAL_GRACE_S)):
                        return
                    error = f"export worker process failed: {type(exc).__name__}: {exc}"
                    log.warning("run %d/%d: %s", item[0], len(ranges), error)
                    mark_dead_runs(self.instance)  # its run, left STARTED, says it failed (and why)
                    record(RangeOutcome({k: {"session_id": k, "status": "failed", "error": error}
                                         for k in item[1].keys}, set()))
                    return

        # Progress on stderr (sessions done, rate, ETA); stdout keeps the JSON.
        with tqdm(total=len(keys), unit="session", file=sys.stderr, disable=not keys, dynamic_ncols=True) as bar:
            helpers = min(self.settings.export_workers, len(ranges)) - 1
            if helpers <= 0:
                try:
                    run_here()
                except KeyboardInterrupt:
                    raise ExportInterrupted(dict(results)) from None
                return results
            # spawn, not fork: this process holds open database connections and threads.
            pool = ProcessPoolExecutor(helpers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_start_helper,
                                       initargs=(self.settings, self.build_job, self.prepare_helper))
            threads = [threading.Thread(target=run_in, args=(pool,), daemon=True) for _ in range(helpers)]
            try:
                for thread in threads:
                    thread.start()
                run_here()
                for thread in threads:
                    thread.join()
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: no new run; the helpers' runs stop within the bound
                stopping.set()
                with lock:
                    todo.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                mark_interrupted(self.instance, stop(helper_processes, signal.SIGTERM), "`telemetry-pipeline export`")
                raise ExportInterrupted(dict(results)) from None
            pool.shutdown(wait=True)
        return results


class ExportInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during `Exporter.export`: no new run was started, the runs under way were stopped and
    recorded failed; `results` holds the keys whose runs had ended before."""

    def __init__(self, results: dict[str, dict[str, Any]]) -> None:
        super().__init__("interrupted")
        self.results = results


@dataclass
class RangeOutcome:
    results: dict[str, dict[str, Any]]  # key -> its answer (`export`'s `results` rows)
    not_found: set[str]


def run_range(job: dg.JobDefinition, instance: dg.DagsterInstance, run_config: dict[str, Any],
              key_range: KeyRange, tags: dict[str, str]) -> RangeOutcome:
    """One export run over `key_range`, in this process, and what it says of each of its keys. The sessions
    other runs exported since the command saw them pending (`PENDING_AS_OF_TAG`) are left out of the run before
    it is created: a run plans each of its partitions, and a planned partition with no materialisation after it
    shows as failed in the UI. (A session exported after the run's creation, the run itself leaves: `exporting`.)"""
    since = tags.get(PENDING_AS_OF_TAG)
    done = exported_since(instance, key_range.keys, float(since)) if since else {}
    outcome = RangeOutcome({key: _exported_meanwhile(key, run) for key, run in done.items()}, set())
    rest = [key for key in key_range.keys if key not in done]
    ranges = batched_ranges(instance.get_dynamic_partitions(AGENT_SESSIONS), rest, len(rest)) if done else [key_range]
    for sub_range in ranges:
        part = _run_once(job, instance, run_config, sub_range, tags)
        outcome.results.update(part.results)
        outcome.not_found |= part.not_found
    return outcome


def _exported_meanwhile(key: str, run_id: str) -> dict[str, Any]:
    return {"session_id": key, "status": "skipped", "reason": f"exported meanwhile by run {run_id}"}


def _run_once(job: dg.JobDefinition, instance: dg.DagsterInstance, run_config: dict[str, Any],
              key_range: KeyRange, tags: dict[str, str]) -> RangeOutcome:
    result = job.execute_in_process(instance=instance, tags={**tags, **key_range.tags}, run_config=run_config,
                                    raise_on_error=False)
    if _interrupted(result):  # Dagster recorded the run failed ("interrupted"); the command stops here
        raise KeyboardInterrupt
    failed, whole_run_error = _failed_sessions(result)
    if not result.success:
        log.warning("run %s failed (%s); its whole log: that run in the Dagster UI (DAGSTER_HOME=%s), "
                    "or run again with -v", result.run_id, whole_run_error or f"{len(failed)} sessions",
                    instance.root_directory)
    confirmed, in_flight, exported_meanwhile, not_found = _run_outcome(result)
    results: dict[str, dict[str, Any]] = {}
    for key in key_range.keys:
        error = whole_run_error or failed.get(key) or not_found.get(key)
        if error:
            results[key] = {"session_id": key, "status": "failed", "error": error}
        elif key in confirmed:
            results[key] = {"session_id": key, "status": "exported"}
        elif key in exported_meanwhile:  # done since this command saw it pending
            results[key] = _exported_meanwhile(key, exported_meanwhile[key])
        elif key in in_flight:  # another run is exporting it right now: left to that run
            results[key] = {"session_id": key, "status": "skipped", "reason": f"being exported by run {in_flight[key]}",
                            "held_by": {"run_id": in_flight[key]}}
        else:
            results[key] = {"session_id": key, "status": "failed",
                            "error": f"{key}: the run ended without a confirmed load of this session"}
    return RangeOutcome(results, set(not_found))


# A helper process's job and instance, opened once by `_start_helper` for all the runs it is given.
_helper: tuple[dg.JobDefinition, dg.DagsterInstance] | None = None


def _start_helper(settings: Settings, build_job: Callable[[Settings], dg.JobDefinition],
                  prepare: Callable[[], None] | None) -> None:
    from telemetry_pipeline.instance import dagster_environment, open_instance

    global _helper
    # A terminal's Ctrl-C reaches every process of its group: a helper between runs leaves it to the command,
    # which stops the helpers itself (`export`); inside a run Dagster's own handler takes it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if prepare is not None:
        prepare()
    os.environ.update(dagster_environment(settings.run_bookkeeping))  # as the CLI's `dagster_settings` does
    instance = open_instance(settings.dagster_home)
    atexit.register(instance.dispose)
    _helper = (build_job(settings), instance)


def _run_in_helper(run_config: dict[str, Any], key_range: KeyRange, tags: dict[str, str]) -> RangeOutcome:
    assert _helper is not None, "started by _start_helper"
    return run_range(*_helper, run_config, key_range, tags)


def _run_outcome(
    result: dg.ExecuteInProcessResult,
) -> tuple[set[str], dict[str, str], dict[str, str], dict[str, str]]:
    """(the partitions the run materialised, i.e. confirmed loaded; {key: run id} it left in flight; {key: run id}
    that exported it since the run was asked for; {key: error} of those their source does not have)."""
    confirmed = {
        m.partition for m in result.asset_materializations_for_node(SESSION_EXPORT_STEP)
        if m.asset_key == SIGNAVIO_EXPORT_KEY and m.partition
    }
    left: dict[str, dict[str, str]] = {IN_FLIGHT_META: {}, EXPORTED_MEANWHILE_META: {}, SESSIONS_NOT_FOUND_META: {}}
    for observation in result.asset_observations_for_node(SESSION_EXPORT_STEP):
        if observation.asset_key == SIGNAVIO_EXPORT_KEY:
            for name, keys in left.items():
                if name in observation.metadata:
                    keys.update(cast(dict[str, str], observation.metadata[name].value))
    return confirmed, left[IN_FLIGHT_META], left[EXPORTED_MEANWHILE_META], left[SESSIONS_NOT_FOUND_META]


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run ended because this process was interrupted (Dagster turns the signal into a failed run)."""
    return not result.success and any(
        event.is_step_failure and event.step_failure_data and event.step_failure_data.error
        and event.step_failure_data.error.cls_name in _INTERRUPTS
        for event in result.all_events
    )


_INTERRUPTS = frozenset({"DagsterExecutionInterruptedError", "KeyboardInterrupt"})


def _failed_sessions(result: dg.ExecuteInProcessResult) -> tuple[dict[str, str], str | None]:
    """(per-session errors, None), or ({}, the run's error) when the step died before any per-session outcome
    existed, in which case every session of the run failed with it."""
    if result.success:
        return {}, None
    for event in result.all_events:
        data = event.step_failure_data if event.is_step_failure else None
        user = data.user_failure_data if data else None
        if user and FAILED_SESSIONS_META in user.metadata:
            return cast(dict[str, str], user.metadata[FAILED_SESSIONS_META].value), None
    return {}, run_error(result)


def run_error(result: dg.ExecuteInProcessResult) -> str:
    """The user-facing cause of a failed run: the innermost error, not Dagster's wrapper."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            # Dagster's message already starts with the (qualified) class name: say it once, short.
            message = error.message.strip()
            named, sep, rest = message.partition(": ")
            if sep and named.rsplit(".", 1)[-1] == error.cls_name:
                message = rest
            return f"{error.cls_name}: {message}"
    return "run failed"
