"""End-to-end benchmark: `python bench/run.py --sessions 10000 --events 100` (or `make bench`).

In one run, on fresh temporary homes, against `telemetry-pipeline simulate` on loopback:
0. minimal   — what the older Go service did (bench/minimal_exporter.py): one case row per session, no event
               log, no checks, no confirmation: the side-by-side row for the price of what we add;
0. own work  — the same listing and the same batches through the same functions, with no Dagster around them
               (bench/own_work.py): the limit the pipeline can approach;
for each instance (`--instances`): `default`, the embedded SQLite instance; `postgres`, deploy/dagster.yaml as
shipped (pooled PostgreSQL) on a fresh database of `--postgres` (default postgresql://postgres@127.0.0.1:5432):
1. pipeline  — `discover` + `export --pending` through the Dagster instance (batched runs) to the outbox:
               sessions/s, events/s, peak RSS of the exporting process; ÷ own work;
2. floor     — the same asset graph (same specs, same partitions, same batches, the same two
               processes) with bodies that do nothing but report what ours report: Dagster's own cost; pipeline ÷ floor;
then, on the first instance:
2b. the pipeline once more with the warehouse in PostgreSQL (`WAREHOUSE_URL`, a fresh database on `--postgres`);
3. per-session — the same CLI `export KEY`, one process per session, on a few sessions: s/session;
4. sensor    — one `new_sessions_sensor` tick with 100,000 known partitions and 1,000 new sessions.
Prints one JSON document on stdout (progress on stderr); `per_session_ms` sums it up per session.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
INSTANCES = ("default", "postgres")  # the embedded SQLite default; deploy/dagster.yaml (pooled PostgreSQL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--instances", default=",".join(INSTANCES), help=f"comma-separated, of {', '.join(INSTANCES)}")
    parser.add_argument("--per-session-samples", type=int, default=3)
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--sensor-known", type=int, default=100_000)
    parser.add_argument("--sensor-new", type=int, default=1_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432",
                        help="PostgreSQL server for the `postgres` instance and the PostgreSQL-warehouse row "
                             "('' skips the warehouse row)")
    args = parser.parse_args()
    instances = [name for name in args.instances.split(",") if name]
    if not instances or set(instances) - set(INSTANCES):
        parser.error(f"--instances: choose from {', '.join(INSTANCES)}")

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    simulator = subprocess.Popen(
        [str(BIN / "telemetry-pipeline"), "simulate", "--port", str(port), "--sessions", str(args.sessions),
         "--events-per-session", str(args.events), "--seed", "1", "--prerender"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(url, seconds=600)  # it renders every answer first (~1 ms a session)
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            results: dict = {
                "machine": _machine(),
                "python_loop_10m_seconds": _machine_speed(),
                "sessions": args.sessions,
                "events_per_session": args.events,
                "batch_size": args.batch_size,
                "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
                "minimal_exporter": _minimal_exporter(Path(tmp) / "minimal", url, args),
                "own_work": _own_work(Path(tmp) / "own", url, args),
                "instances": {},
            }
            for name in instances:
                results["instances"][name] = _instance_row(name, Path(tmp) / name, url, args, results["own_work"])
            results["per_session_ms"] = _per_session_ms(results)
            default = instances[0]
            if args.postgres:
                warehouse_row = _pipeline_on_postgres(Path(tmp) / "pipeline-pg", url, args, default)
                results["pipeline_postgres_warehouse"] = warehouse_row
                results["postgres_over_duckdb"] = round(
                    warehouse_row["seconds"] / results["instances"][default]["pipeline"]["seconds"], 2
                )
            results["per_session_cli"] = _per_session(Path(tmp) / "single", url, args, default)
            pipeline_seconds = results["instances"][default]["pipeline"]["seconds"]
            results["speedup_vs_per_session_cli"] = round(
                results["per_session_cli"]["seconds_per_session"] / (pipeline_seconds / args.sessions), 1
            )
            results["sensor_tick"] = _sensor_tick(Path(tmp) / "sensor", args)
            results["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _instance_row(name: str, root: Path, url: str, args: argparse.Namespace, own_work: dict) -> dict:
    """The pipeline and the floor on fresh instances of one kind, with their ratios."""
    with _instance_env(name, root / "pipeline", args.postgres) as extra:
        row: dict = {"pipeline": _pipeline(root / "pipeline", url, args, extra)}
    seconds = row["pipeline"]["seconds"]
    row["pipeline_over_own_work"] = round(seconds / own_work["seconds"], 2)
    if not args.skip_floor:
        with _instance_env(name, root / "floor", args.postgres) as extra:
            row["floor"] = _floor(root / "floor", args, extra)
        row["pipeline_over_floor"] = round(seconds / row["floor"]["seconds"], 2)
    return row


@contextmanager
def _instance_env(name: str, home: Path, server: str) -> Iterator[dict[str, str]]:
    """The variables that select the instance: nothing for the embedded default (SQLite under the home);
    for `postgres`, deploy/dagster.yaml as shipped in DAGSTER_HOME and a fresh database, dropped afterwards."""
    if name == "default":
        yield {}
        return
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    with _database(server) as url:
        yield {"DAGSTER_HOME": str(dagster_home), "DAGSTER_POSTGRES_URL": url}


@contextmanager
def _database(server: str) -> Iterator[str]:
    """A fresh database on `server`, dropped afterwards; yields its URL."""
    import psycopg2

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(f"{server}/postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"{server}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _pipeline_on_postgres(home: Path, url: str, args: argparse.Namespace, instance: str) -> dict:
    """The same pipeline with the warehouse in a database of its own (`WAREHOUSE_URL`)."""
    with _database(args.postgres) as warehouse_url, _instance_env(instance, home, args.postgres) as extra:
        return _pipeline(home, url, args, {**extra, "WAREHOUSE_URL": warehouse_url})


def _env(home: Path, url: str, batch_size: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNAVIO_", "DAGSTER_", "AGORA_", "OTLP_"))}
    env.update(
        TELEMETRY_PIPELINE_HOME=str(home),
        EXTRACT_SERVICE_URL=url,
        AGENT_METRICS_BASE_URL=url,
        EXPORT_BATCH_SIZE=str(batch_size),
        AGENT_NAME="bench-agent",
        **(extra or {}),
    )
    return env


def _own_work(home: Path, url: str, args: argparse.Namespace) -> dict:
    _log(f"own work: the same listing and batches with no Dagster ({args.sessions} sessions)")
    return _timed_script("own_work.py", home, url, args)


def _minimal_exporter(home: Path, url: str, args: argparse.Namespace) -> dict:
    _log(f"minimal exporter: one case row per session, no confirmation ({args.sessions} sessions)")
    return _timed_script("minimal_exporter.py", home, url, args)


def _timed_script(script: str, home: Path, url: str, args: argparse.Namespace) -> dict:
    """One of bench/'s scripts in the pipeline's environment: its JSON answer, its seconds and ms per session."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name(script))],
                          env=_env(home, url, args.batch_size), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"bench/{script} failed")
    out = json.loads(proc.stdout)
    return {**out, "seconds": round(seconds, 1), "ms_per_session": round(seconds / max(1, out["exported"]) * 1000, 1)}


def _per_session_ms(results: dict) -> dict:
    """The headline, per session: the minimal exporter, our own work, each instance's pipeline and floor, and the
    pipeline's ratios to our own work and to the minimal exporter (the price of the event log and confirmed loads)."""
    own, minimal = results["own_work"]["ms_per_session"], results["minimal_exporter"]["ms_per_session"]
    row: dict = {"minimal_exporter": minimal, "own_work": own, "own_work_over_minimal": round(own / minimal, 2)}
    for name, instance in results["instances"].items():
        pipeline = instance["pipeline"]["ms_per_session"]
        row[name] = {"pipeline": pipeline, "pipeline_over_own_work": instance["pipeline_over_own_work"],
                     "pipeline_over_minimal": round(pipeline / minimal, 2)}
        if "floor" in instance:
            row[name]["floor"] = round(instance["floor"]["seconds"] / results["sessions"] * 1000, 1)
    return row


def _cli(env: dict[str, str], *argv: str) -> tuple[dict | list, float, float]:
    """The command's JSON answer, its seconds, and the peak of its processes' RSS together (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "telemetry-pipeline"), *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with _TreeRss(proc.pid) as rss:
        stdout, stderr = proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.stderr.write(stderr[-3000:])
        raise SystemExit(f"telemetry-pipeline {argv[0]} exited {proc.returncode}")
    return json.loads(stdout), elapsed, rss.peak_mb


class _TreeRss(threading.Thread):
    """Samples, every 20 ms, the RSS of a process and all its descendants (the export's helper processes) summed:
    its peak is what the command holds at once, where ru_maxrss gives the largest single process. The RSS sum
    counts the pages the processes share (the libraries' code) once per process; with `pss`, the peak of their
    PSS summed is taken as well, which counts a shared page once (what a container's memory limit charges)."""

    def __init__(self, pid: int, pss: bool = False) -> None:
        super().__init__(daemon=True)
        self._root = psutil.Process(pid)
        self._done = threading.Event()
        self._pss = pss
        self.peak_mb = 0.0
        self.peak_pss_mb = 0.0

    def __enter__(self) -> _TreeRss:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        while not self._done.wait(0.02):
            total = pss = 0
            try:
                for process in [self._root, *self._root.children(recursive=True)]:
                    total += process.memory_info().rss
                    pss += _pss(process.pid) if self._pss else 0
            except (psutil.Error, OSError):  # a process ended between listing and reading
                continue
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self.peak_pss_mb = max(self.peak_pss_mb, pss / 2**20)


def _pss(pid: int) -> int:
    """A process's PSS in bytes, from the kernel's one-line summary (psutil reads the whole smaps: too slow)."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
        for line in rollup:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _pipeline(home: Path, url: str, args: argparse.Namespace, extra: dict[str, str]) -> dict:
    env = _env(home, url, args.batch_size, extra)
    where = "PostgreSQL" if "WAREHOUSE_URL" in extra else "the DuckDB file"
    instance = "pooled PostgreSQL" if "DAGSTER_POSTGRES_URL" in extra else "the embedded default"
    _log(f"pipeline: discover + export of {args.sessions} sessions x {args.events} events, "
         f"instance {instance}, warehouse in {where}")
    discovered, t_discover, _ = _cli(env, "discover")
    exported, t_export, export_rss_mb = _cli(env, "export", "--pending")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    seconds = t_discover + t_export
    events = _count_events(home, extra.get("WAREHOUSE_URL"))
    if exported["exported_count"] != args.sessions:
        _log(f"warning: {exported['failed_count']} sessions failed: {exported['results'][:3]}")
    return {
        "seconds": round(seconds, 1),
        "discover_seconds": round(t_discover, 1),
        "export_seconds": round(t_export, 1),
        "discovered": discovered["new_count"],
        "exported": exported["exported_count"],
        "failed": exported["failed_count"],
        "events_rows": events,
        "sessions_per_second": round(exported["exported_count"] / seconds, 1),
        "events_per_second": round(events / seconds, 0),
        "ms_per_session": round(seconds / max(1, exported["exported_count"]) * 1000, 1),
        "peak_rss_mb": round(peak_rss_mb, 0),
        "peak_rss_all_processes_mb": round(export_rss_mb, 0),  # the export and its helpers at once
    }


def _count_events(home: Path, warehouse_url: str | None = None) -> int:
    if warehouse_url:
        import psycopg2

        con = psycopg2.connect(warehouse_url)
        try:
            with con.cursor() as cur:
                cur.execute("SELECT count(*) FROM events")
                return int(cur.fetchone()[0])
        finally:
            con.close()
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return int(con.execute("SELECT count(*) FROM events").fetchone()[0])


def _per_session(home: Path, url: str, args: argparse.Namespace, instance: str) -> dict:
    with _instance_env(instance, home, args.postgres) as extra:
        return _per_session_on(_env(home, url, args.batch_size, extra), args)


def _per_session_on(env: dict[str, str], args: argparse.Namespace) -> dict:
    keys = [f"extract:sim-ex-{i:06d}" for i in range(0, 2 * args.per_session_samples, 2)]
    _log(f"per-session CLI: {len(keys)} separate `export KEY` processes")
    times = []
    for key in keys:
        out, elapsed, _ = _cli(env, "export", key)
        if out["exported_count"] != 1:
            raise SystemExit(f"per-session export of {key} failed: {out}")
        times.append(elapsed)
    return {"samples": len(times), "seconds_per_session": round(sum(times) / len(times), 2),
            "min": round(min(times), 2), "max": round(max(times), 2)}


def _floor(home: Path, args: argparse.Namespace, extra: dict[str, str]) -> dict:
    _log(f"floor: the same asset graph doing nothing over {args.sessions} partitions")
    env = _env(home, "http://127.0.0.1:9", args.batch_size, extra)
    floor = [sys.executable, str(Path(__file__).with_name("floor.py"))]
    timings = {}
    for mode, number in (("discover", args.sessions), ("export", args.batch_size)):
        start = time.perf_counter()
        subprocess.run([*floor, mode, str(number)], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        timings[mode] = time.perf_counter() - start
    return {"seconds": round(sum(timings.values()), 1), "discover_seconds": round(timings["discover"], 1),
            "export_seconds": round(timings["export"], 1)}


def _sensor_tick(home: Path, args: argparse.Namespace) -> dict:
    _log(f"sensor tick: {args.sensor_known} known partitions, {args.sensor_new} new sessions")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    simulator = subprocess.Popen(
        [str(BIN / "telemetry-pipeline"), "simulate", "--port", str(port), "--sessions", str(args.sensor_new),
         "--events-per-session", "10", "--seed", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(url)
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("sensor_tick.py")), str(args.sensor_known)],
            env=_env(home, url, args.batch_size), check=True, capture_output=True, text=True,
        )
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    return json.loads(proc.stdout)


def _machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def _machine_speed() -> float:
    """Seconds for 10 million additions in a Python loop, best of three: machines of one kind differ (and one
    machine from day to day), so figures from two runs compare only as far as this does."""
    best = float("inf")
    for _ in range(3):
        start, total = time.perf_counter(), 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return round(best, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/agent_metrics/sessions?limit=1", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"simulator did not start on {url}")


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
