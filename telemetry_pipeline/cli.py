"""`telemetry-pipeline`: the command line (docs/INTERFACE.md). JSON on stdout, progress on stderr;
exit 0 on success, 1 when any item failed, 2 on bad usage, 3 when sessions asked for were left to other
runs that hold them (none failed).

Every export goes through the Dagster instance under `<home>/dagster_home` (or `$DAGSTER_HOME`),
so the CLI and the UI read and write the same history. Settings are read from the environment once,
in `main` (tests pass `Settings` built directly).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from telemetry_pipeline.canonical.content import govern_logs
from telemetry_pipeline.instance import dagster_settings, open_instance
from telemetry_pipeline.names import AGENT_SESSIONS, PENDING_AS_OF_TAG, SESSION_EXPORT_STEP
from telemetry_pipeline.settings import Settings, from_environment

if TYPE_CHECKING:
    from telemetry_pipeline.instance.liveness import RunLiveness
    from telemetry_pipeline.warehouse import Warehouse

log = logging.getLogger("telemetry_pipeline.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_HELD = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C (128 + SIGINT)
_WAIT_POLL_S = 0.5


def main(argv: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        args.settings = settings or from_environment(settings_file=True)
        govern_logs(args.settings.content)  # what the command logs leaves governed, as its output does
        with dagster_settings(args.settings.run_bookkeeping), _stop_signals_interrupt(), _stdout_is_json_only():
            payload, code = args.run(args)
    except ValueError as exc:  # configuration and usage problems found past argparse
        print(json.dumps({"error": str(exc)}), file=sys.stdout)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a command with nothing to say of its items (`export` says what it did)
        print(json.dumps({"error": "interrupted"}), file=sys.stdout)
        return EXIT_INTERRUPTED
    print(json.dumps(payload, indent=2, default=str))
    return code


@contextlib.contextmanager
def _stdout_is_json_only() -> Iterator[None]:
    """Whatever the command's work writes to stdout (file descriptor 1: DuckDB's progress bar, a library's print, in
    this process or a helper it starts) goes to stderr; stdout gets the JSON alone, printed after."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager, an orchestrator, `kill`) stops a command as Ctrl-C does: its runs are recorded
    failed ("interrupted") and it ends within seconds, instead of dying on the spot with its runs left STARTED."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    # Started in the background by a script, the command begins with SIGINT ignored, and Dagster gives SIGTERM
    # SIGINT's handler during a run: SIGTERM would then be ignored mid-run. Both interrupt, however it was started.
    previous = {signum: signal.signal(signum, signal.default_int_handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def configure_logging(verbose: bool) -> None:
    """Quiet by default: our own progress and warnings; Dagster's run events, alembic's migrations and httpx's
    requests only with -v (a failed run is one line on stderr, naming the run whose log has the rest). The same
    in `export`'s helper processes."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("telemetry_pipeline").setLevel(logging.INFO)
    for noisy in ("dagster", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


def _run_config(verbose: bool) -> dict[str, Any]:
    """The CLI's runs log to its console only with -v (their events are in the instance either way)."""
    return {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}}}


def _code(ok: bool) -> int:
    return EXIT_OK if ok else EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telemetry-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log Dagster's run events and more")
    sub = parser.add_subparsers(required=True, metavar="command")

    p = sub.add_parser("discover", help="materialise discovered_sessions once (register new keys)")
    p.set_defaults(run=cmd_discover)

    p = sub.add_parser("export", help="export sessions through the Dagster instance, in batched runs")
    p.add_argument("keys", nargs="*", metavar="KEY", help="<source>:<session_id>")
    p.add_argument("--pending", action="store_true", help="every known session not exported yet")
    p.add_argument("--source", help="with --pending: only this source")
    p.add_argument("--dataset", help="table-name prefix for this export (default SIGNAVIO_DATASET)")
    p.add_argument("--force", action="store_true", help="export again even if already exported")
    p.add_argument("--register", action="store_true", help="keep keys registered in agent_sessions even when their "
                   "source has no such session (by default such a key, a typo most likely, is removed again)")
    p.add_argument("--wait", action="store_true", help="sessions another run holds: wait until it releases "
                   "them or its claim lapses, then export them (those it exported meanwhile are skipped)")
    p.add_argument("--wait-timeout", type=float, default=float("inf"), metavar="SECONDS",
                   help="with --wait: give up waiting after this long (default: no limit)")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("recheck", help="check exported sessions against the playbooks as they are now (PLAYBOOKS_FILE) "
                       "and upload both tables again (upserts by key): from the warehouse, nothing fetched")
    p.add_argument("keys", nargs="*", metavar="KEY", help="<source>:<session_id>")
    p.add_argument("--all", action="store_true", help="every exported session")
    p.add_argument("--source", help="with --all: only this source")
    p.set_defaults(run=cmd_recheck)

    p = sub.add_parser("status", help="export status of sessions, from materialisation history")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("sessions", help="known sessions with their export status")
    p.add_argument("--source")
    p.add_argument("--pending", action="store_true", help="only sessions not exported yet")
    p.set_defaults(run=cmd_sessions)

    p = sub.add_parser("prune", help="remove partitions exported more than N days ago, and the export runs "
                       "left with none (their records archived in the warehouse, where `status` reads them)")
    p.add_argument("--older-than-days", type=float, required=True)
    p.add_argument("--raw-older-than-days", type=float, metavar="DAYS",
                   help="also delete the raw payloads of sessions exported more than DAYS ago (default "
                        "RAW_RETENTION_DAYS)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(run=cmd_prune)

    p = sub.add_parser("check", help="reach each configured source and the destination")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("warehouse", help="the warehouse's own operations")
    actions = p.add_subparsers(required=True, metavar="action")
    p = actions.add_parser("copy", help="copy a DuckDB warehouse into PostgreSQL (idempotent: copies what is missing)")
    p.add_argument("--from", dest="source", metavar="FILE", help="the DuckDB file (default <home>/warehouse.duckdb)")
    p.add_argument("--to", dest="target", metavar="URL",
                   help="postgresql://... (default WAREHOUSE_URL; prefer the variable when the URL holds a password)")
    p.set_defaults(run=cmd_warehouse_copy)

    p = sub.add_parser("simulate", help="serve generated telemetry on loopback (demos, benchmarks)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--events-per-session", type=int, default=30)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--live-rate", type=float, default=0.0, help="new sessions per minute (0: a fixed set)")
    p.add_argument("--prerender", action="store_true",
                   help="render every session's answer before serving (the benchmark: the double's own work "
                        "stays out of the measurement)")
    p.set_defaults(run=cmd_simulate)
    return parser


def cmd_discover(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    from telemetry_pipeline.definitions import build_definitions
    from telemetry_pipeline.instance.runs import discover_once

    definitions = build_definitions(args.settings)
    with open_instance(args.settings.dagster_home) as instance:
        meta, error = discover_once(instance, definitions, _run_config(args.verbose))
    if meta is None:
        return {"new_count": 0, "new_keys": [], "error": error}, EXIT_FAILED
    errors = meta["source_errors"]
    unreadable: list[dict[str, str]] = meta["unreadable_files"]
    for entry in unreadable:  # never silently: a file the inbox could not read is named, with why
        log.warning("inbox file %s was not read: %s", entry["file"], entry["error"])
    payload = {"new_count": meta["new_count"], "new_keys": meta["new_keys"], "unreadable_files": unreadable}
    if errors:
        payload["source_errors"] = errors
    return payload, _code(not errors)


def cmd_export(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    from telemetry_pipeline.definitions import export_job
    from telemetry_pipeline.instance.history import exported_keys
    from telemetry_pipeline.instance.liveness import RunLiveness
    from telemetry_pipeline.instance.runs import Exporter, unregister_unknown
    from telemetry_pipeline.settings import configured_warehouse
    from telemetry_pipeline.sources.registry import parse_key
    from telemetry_pipeline.sources.source_set import SourceSet

    if bool(args.keys) == bool(args.pending):
        raise ValueError("give session keys or --pending (not both)")
    # Configuration errors (e.g. an endpoint without a token) refuse the command before anything changes.
    job = export_job(args.settings)
    warehouse = configured_warehouse(args.settings)
    results: dict[str, dict[str, Any]] = {}
    with open_instance(args.settings.dagster_home) as instance, SourceSet(args.settings.sources) as sources:
        known = instance.get_dynamic_partitions(AGENT_SESSIONS)
        if args.pending:
            keys = [k for k in known if not args.source or parse_key(k)[0] == args.source]
        else:
            keys = list(dict.fromkeys(args.keys))
            _refuse_bad_keys(keys, sources.sources)
        known_set = set(known)
        missing = [k for k in keys if k not in known_set]
        # A key retention pruned was exported: its record is in the archive once its run was deleted.
        archived = warehouse.archived_exports(missing) if missing else {}
        register = [k for k in missing if args.force or k not in archived]
        if register:  # sessions can be exported by hand: register them first
            instance.add_dynamic_partitions(AGENT_SESSIONS, register)
        pending_as_of = time.time()  # a session exported after this is not exported again (PENDING_AS_OF_TAG)
        if not args.force:
            done = exported_keys(instance, [k for k in keys if k not in results]) | set(archived)
            results |= {k: {"session_id": k, "status": "skipped", "reason": ALREADY_EXPORTED} for k in done}
        run_config = _run_config(args.verbose)
        if args.dataset:
            run_config["ops"] = {SESSION_EXPORT_STEP: {"config": {"dataset": args.dataset}}}
        exporter = Exporter(args.settings, job, export_job, instance, run_config,
                            tags={} if args.force else {PENDING_AS_OF_TAG: repr(pending_as_of)},
                            prepare_helper=functools.partial(configure_logging, args.verbose))
        try:
            results.update(exporter.export([k for k in keys if k not in results]))
            if register and not args.register:  # a typo must not leave a partition behind, red for ever
                unregister_unknown(instance, [k for k in register if k in exporter.not_found], results)
            liveness = RunLiveness(instance)
            deadline = time.monotonic() + args.wait_timeout
            while args.wait and (held := [k for k in keys if "held_by" in results[k]]):
                free = _wait_for_release(warehouse, liveness, held, deadline)
                if not free:
                    break
                # Those the holder exported meanwhile are skipped by the exporter (`PENDING_AS_OF_TAG`), unless --force.
                results.update(exporter.export(free))
        except KeyboardInterrupt as stopped:  # Ctrl-C or SIGTERM: say what was done, and what was not
            return _interrupted(stopped, keys, results)
        _describe_holders(warehouse, liveness, [k for k in keys if "held_by" in results[k]], results)
    return _export_summary([results[k] for k in keys])


def cmd_recheck(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Each exported session's verdict against the current playbooks, in runs of `export_sessions` with `recheck`
    set (recorded in its history as exports are), each to the dataset it was last exported to."""
    from telemetry_pipeline.definitions import export_job
    from telemetry_pipeline.instance.history import export_datasets
    from telemetry_pipeline.instance.runs import Exporter
    from telemetry_pipeline.sources.registry import parse_key

    if bool(args.keys) == bool(args.all):
        raise ValueError("give session keys or --all (not both)")
    job = export_job(args.settings)  # an invalid playbook is refused here
    with open_instance(args.settings.dagster_home) as instance:
        known = instance.get_dynamic_partitions(AGENT_SESSIONS)
        if args.all:
            keys = [k for k in known if not args.source or parse_key(k)[0] == args.source]
        else:
            keys = list(dict.fromkeys(args.keys))
            _refuse_bad_keys(keys)
        datasets = export_datasets(instance, keys)
        known_set = set(known)
        results: dict[str, dict[str, Any]] = {
            k: {"session_id": k, "status": "failed", "error": "not a known session"} if k not in known_set
            else {"session_id": k, "status": "skipped", "reason": "not exported yet: `export` checks it"}
            for k in keys if k not in datasets
        }
        by_dataset: dict[str, list[str]] = {}
        for key in keys:
            if key in datasets:
                by_dataset.setdefault(datasets[key], []).append(key)
        try:
            for dataset, batch in by_dataset.items():
                run_config = _run_config(args.verbose)
                run_config["ops"] = {SESSION_EXPORT_STEP: {"config": {"dataset": dataset, "recheck": True}}}
                exporter = Exporter(args.settings, job, export_job, instance, run_config,
                                    prepare_helper=functools.partial(configure_logging, args.verbose))
                results.update(exporter.export(batch))
        except KeyboardInterrupt as stopped:
            return _interrupted(stopped, keys, results)
    return _export_summary([results[k] for k in keys])


def _refuse_bad_keys(keys: list[str], configured: Collection[str] | None = None) -> None:
    """Bad usage (exit 2) before anything changes: a key that cannot be one (no source prefix, an unknown source, a
    character Dagster refuses), or of a source that is not `configured`."""
    from telemetry_pipeline.sources.registry import key_problem, parse_key

    problems = [problem for key in keys if (problem := key_problem(key))]
    if configured is not None:
        problems += [f"{key}: source {parse_key(key)[0]!r} is not configured" for key in keys
                     if not key_problem(key) and parse_key(key)[0] not in configured]
    if problems:
        raise ValueError("; ".join(problems))


ALREADY_EXPORTED = "already exported (`status KEY` says when and where); `--force` exports it again"
INTERRUPTED = ("interrupted: the command was stopped (Ctrl-C or SIGTERM) before this session's run finished; its "
               "run is recorded failed, and the next export or sensor tick takes the session")


def _interrupted(stopped: KeyboardInterrupt, keys: list[str],
                 results: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], int]:
    from telemetry_pipeline.instance.runs import ExportInterrupted

    results.update(stopped.results if isinstance(stopped, ExportInterrupted) else {})
    for key in keys:
        results.setdefault(key, {"session_id": key, "status": "failed", "error": INTERRUPTED})
    return _export_summary([results[k] for k in keys], interrupted=True)


def _export_summary(ordered: list[dict[str, Any]], interrupted: bool = False) -> tuple[dict[str, Any], int]:
    counts = {s: sum(1 for r in ordered if r["status"] == s) for s in ("exported", "skipped", "failed")}
    held_count = sum(1 for r in ordered if "held_by" in r)
    status = (
        "interrupted" if interrupted
        else "failed" if counts["failed"] and not counts["exported"]
        else "partial" if counts["failed"] or (held_count and counts["exported"])
        else "held" if held_count else "ok"
    )
    code = (EXIT_INTERRUPTED if interrupted else EXIT_FAILED if counts["failed"] else EXIT_HELD if held_count
            else EXIT_OK)
    return {
        "status": status,
        "total_count": len(ordered),
        "exported_count": counts["exported"],
        "skipped_count": counts["skipped"],
        "failed_count": counts["failed"],
        "held_count": held_count,
        "results": ordered,
    }, code


def _wait_for_release(warehouse: Warehouse, liveness: RunLiveness, keys: list[str], deadline: float) -> list[str]:
    """Wait until some of `keys` are free (unclaimed, or their holder is dead or its lease has lapsed) or the
    deadline passes; returns the free ones (all free keys at that moment, possibly none)."""
    from telemetry_pipeline.warehouse.base import standing

    while True:
        claims = warehouse.holders(keys)
        now = dt.datetime.now(dt.UTC)
        # The claim rule itself: a claim stands while its holder is alive, or unknown and within its lease.
        kept, _, _ = standing(((k, c.run_id, c.lease_until > now) for k, c in claims.items()), liveness)
        free = [k for k in keys if k not in kept]
        if free or time.monotonic() >= deadline:
            return free
        log.info("waiting for %d sessions held by %s", len(keys), sorted(set(kept.values())))
        time.sleep(min(_WAIT_POLL_S, max(0.0, deadline - time.monotonic())))


def _describe_holders(warehouse: Warehouse, liveness: RunLiveness, keys: list[str],
                      results: dict[str, dict[str, Any]]) -> None:
    """Say, of each session left to another run, which run holds it, whether it looks alive, and until when
    its lease runs."""
    claims = warehouse.holders(keys)
    states = {claim.run_id: liveness.describe(claim.run_id) for claim in claims.values()}
    for key in keys:
        claim = claims.get(key)
        if claim is None:  # released since: the next export takes it
            results[key]["held_by"]["alive"] = "released"
            continue
        results[key]["reason"] = f"being exported by run {claim.run_id}"
        results[key]["held_by"] = {"run_id": claim.run_id, "alive": states[claim.run_id],
                                   "lease_until": claim.lease_until.isoformat()}


def cmd_status(args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    from telemetry_pipeline.instance.history import export_records
    from telemetry_pipeline.settings import configured_warehouse

    with open_instance(args.settings.dagster_home) as instance:
        records = export_records(instance, configured_warehouse(args.settings), list(args.keys))
        known = set(instance.get_dynamic_partitions(AGENT_SESSIONS)) | set(records)
    return [
        {
            "session_id": key,
            "known": key in known,  # not known: never registered (a typo?), exit 1
            "exported": key in records,
            "exported_at": records[key].exported_at.isoformat() if key in records else None,
            "execution_id": records[key].execution_id if key in records else None,
            "ingestion_status": records[key].ingestion_status if key in records else None,
        }
        for key in args.keys
    ], _code(known.issuperset(args.keys))


def cmd_sessions(args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    from telemetry_pipeline.instance.history import latest_exports

    with open_instance(args.settings.dagster_home) as instance:
        keys = instance.get_dynamic_partitions(AGENT_SESSIONS)
        records = latest_exports(instance, keys)
    rows = []
    for key in keys:
        source = key.partition(":")[0]
        if (args.source and source != args.source) or (args.pending and key in records):
            continue
        rec = records.get(key)
        rows.append({
            "session_id": key,
            "source": source,
            "exported": rec is not None,
            "exported_at": rec.exported_at.isoformat() if rec else None,
        })
    return rows, EXIT_OK


def cmd_prune(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    from telemetry_pipeline.instance.retention import apply_retention
    from telemetry_pipeline.settings import configured_warehouse

    with open_instance(args.settings.dagster_home) as instance:
        raw_days = args.settings.raw_retention_days if args.raw_older_than_days is None else args.raw_older_than_days
        out = apply_retention(instance, configured_warehouse(args.settings), args.older_than_days,
                              dry_run=args.dry_run, raw_older_than_days=raw_days)
    return {"pruned_count": len(out.pruned_keys), "dry_run": args.dry_run, "pruned_keys": out.pruned_keys,
            "deleted_runs": len(out.deleted_runs), "archived_records": out.archived,
            "raw_payloads_deleted": out.raw_pruned}, EXIT_OK


def cmd_check(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    from telemetry_pipeline.application.health import run_checks
    from telemetry_pipeline.definitions import build_definitions
    from telemetry_pipeline.instance.runs import open_resources

    settings: Settings = args.settings
    # The playbooks are checked as one of the checks (an invalid file fails it), not refused before the others run.
    definitions = build_definitions(settings.replace(playbooks_file=None))
    with open_resources(definitions) as resources, resources.sources.open() as sources:
        checks = run_checks(sources, resources.warehouse.warehouse(), resources.signavio.destination,
                            settings.playbooks_file)
    for warning in next((c.get("warnings", []) for c in checks if c["name"] == "playbooks"), []):
        log.warning("playbooks: %s", warning)
    healthy = all(c["ok"] for c in checks)
    return {"healthy": healthy, "checks": checks}, _code(healthy)


def cmd_warehouse_copy(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    from pathlib import Path

    from telemetry_pipeline.warehouse import PostgresWarehouse, WarehouseError
    from telemetry_pipeline.warehouse.copy import copy_duckdb_to_postgres
    from telemetry_pipeline.warehouse.postgres_store import is_postgres_url

    settings: Settings = args.settings
    path = Path(args.source) if args.source else settings.warehouse_path
    url = args.target or (settings.warehouse.url.value if settings.warehouse.url else None)
    if not url or not is_postgres_url(url):  # never echo the URL: it may hold a password
        raise ValueError("give --to postgresql://... or set WAREHOUSE_URL to a postgresql:// URL")
    if not path.is_file():
        raise ValueError(f"no DuckDB warehouse at {path}")
    target = PostgresWarehouse(url)
    payload: dict[str, Any] = {"from": str(path), "to": target.describe()}
    try:
        report = copy_duckdb_to_postgres(path, target)
    except WarehouseError as exc:
        return {**payload, "error": str(exc)}, EXIT_FAILED
    return {**payload, "copied": report.copied, "already_there": report.already_there}, EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    from telemetry_pipeline.simulate import SimulationConfig, Simulator

    config = SimulationConfig(
        sessions=args.sessions, events_per_session=args.events_per_session, seed=args.seed, live_rate=args.live_rate
    )
    with Simulator(config, port=args.port, prerender=args.prerender) as simulator:
        log.info("simulating %d sessions on %s (Ctrl-C to stop)", args.sessions, simulator.url)
        try:
            simulator.serve_forever()
        except KeyboardInterrupt:
            pass
    return {"stopped": True, "url": simulator.url}, EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
