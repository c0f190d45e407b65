"""The warehouse as plain code, on both stores (the DuckDB file and a real PostgreSQL database): the claim rule
(holders known alive or dead, else leases), versioned migrations that several processes may run at once, and the
bulk writes keeping every value (bytes verbatim, text with quotes and line breaks, extreme timestamps, JSON escapes)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import psycopg2
import psycopg2.errors
import pytest

from telemetry_pipeline.canonical.model import DEVIATIONS, EVENTS, SESSIONS, Dialect
from telemetry_pipeline.canonical.raw import RawSession
from telemetry_pipeline.canonical.replace import duckdb_transaction, replace_rows
from telemetry_pipeline.warehouse import DuckDBWarehouse, Holder, PostgresWarehouse, Warehouse, open_warehouse
from telemetry_pipeline.warehouse.migrations import LATEST_VERSION, MIGRATIONS, SCHEMA_VERSION_DDL
from telemetry_pipeline.warehouse.schema import EXPORT_ARCHIVE, EXPORT_CLAIMS, RAW_TELEMETRY, ExportRecord
from telemetry_pipeline_tests.postgres import create_database, drop_database

MakeStore = Callable[..., Warehouse]


class Clock:
    """The time leases are judged by in these tests: it moves when a test says, not on the wall clock."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["duckdb", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               clock: Clock) -> MakeStore:
    """A factory of warehouses sharing one store (several runs, processes or hosts see the same rows) and one
    `clock`; `WAREHOUSE_URL` is set for the PostgreSQL one, so processes the test starts find it too."""
    path = tmp_path / "w.duckdb"
    if request.param == "duckdb":
        monkeypatch.delenv("WAREHOUSE_URL", raising=False)
        return lambda lease=60.0: DuckDBWarehouse(path, lease_seconds=lease, clock=clock)
    url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("WAREHOUSE_URL", url)
    return lambda lease=60.0: PostgresWarehouse(url, lease_seconds=lease, clock=clock)


def test_the_export_archive_keeps_each_sessions_newest_record(make_store: MakeStore):
    store = make_store()
    day = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

    def record(key: str, days: int, run: str) -> ExportRecord:
        return ExportRecord(key, day + dt.timedelta(days=days), f"exec-{run}", "COMPLETED", run)

    store.archive_exports([record("extract:a", 1, "r1"), record("extract:a", 3, "r3"), record("extract:b", 1, "r1")])
    store.archive_exports([record("extract:a", 2, "r2"), record("extract:b", 4, "r4")])  # an older and a newer one
    assert store.archived_exports(["extract:a", "extract:b", "extract:c"]) == {
        "extract:a": record("extract:a", 3, "r3"), "extract:b": record("extract:b", 4, "r4"),
    }
    assert store.archived_exports([]) == {}


def test_raw_payloads_of_sessions_exported_long_ago_are_pruned_and_no_others(make_store: MakeStore):
    store = make_store()
    day = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

    def raw(key: str, fetched: dt.datetime) -> RawSession:
        source, _, session_id = key.partition(":")
        return RawSession(source, session_id, b'{"events": []}', "application/json", fetched, "test")

    store.store_raw([raw("extract:old", day), raw("extract:archived", day), raw("extract:pending", day),
                     raw("extract:refetched", day + dt.timedelta(days=20))])
    store.archive_exports([ExportRecord("extract:archived", day, "e", "COMPLETED", "r")])
    cutoff = day + dt.timedelta(days=10)
    # exported before the cut-off: `old` (in Dagster's history), `archived` (in the archive), `refetched` (but
    # fetched again since, for a later export: its payload is that one's)
    assert store.prune_raw(["extract:old", "extract:refetched"], cutoff) == 2
    assert store.prune_raw(["extract:old", "extract:refetched"], cutoff) == 0, "once"
    left = {"pending", "refetched"}
    assert store.probe()[0] and raw_keys(store) == {f"extract:{k}" for k in left}


def raw_keys(store: Warehouse) -> set[str]:
    if isinstance(store, DuckDBWarehouse):
        return set(store.raw.keys())  # the payloads' own SQLite file
    assert isinstance(store, PostgresWarehouse)
    with store.transaction("reading raw payloads") as cur:
        cur.execute("SELECT session_key FROM raw_telemetry")
        return {k for (k,) in cur.fetchall()}


def claim_rows(store: Warehouse) -> dict[str, str]:
    if isinstance(store, DuckDBWarehouse):
        with duckdb.connect(str(store.claims_path)) as con:  # the claims' own file
            return dict(con.execute("SELECT session_key, run_id FROM export_claims").fetchall())
    assert isinstance(store, PostgresWarehouse)
    with store.transaction("reading claims") as cur:
        cur.execute("SELECT session_key, run_id FROM export_claims")
        return dict(cur.fetchall())


# -- claims ------------------------------------------------------------------------------------------------------


def test_claims_keep_overlapping_runs_apart_until_their_run_is_over_or_their_lease_runs_out(make_store: MakeStore,
                                                                                            clock: Clock):
    wh = make_store()
    state = {"run-a": Holder.UNKNOWN, "run-b": Holder.UNKNOWN}
    check = lambda run_id: state.get(run_id, Holder.DEAD)  # noqa: E731

    assert wh.claim(["k1", "k2", "k3"], "run-a", check) == (["k1", "k2", "k3"], {})
    claimed, held = wh.claim(["k2", "k3", "k4"], "run-b", check)
    assert claimed == ["k4"] and held == {"k2": "run-a", "k3": "run-a"}, "a live run's claims are respected"
    assert wh.claim(["k1"], "run-a", check) == (["k1"], {}), "a run may claim its own keys again"

    wh.release(["k1", "k2", "k3", "k4"], "run-a")  # only run-a's own claims go
    assert wh.claim(["k1", "k4"], "run-c", check) == (["k1"], {"k4": "run-b"})

    state["run-b"] = Holder.DEAD  # run-b is over (finished, failed, its record is gone, or its process is)
    assert wh.claim(["k4"], "run-c", check) == (["k4"], {}), "the claim of a run that is over is stale at once"

    short = make_store(lease=0.5)
    assert short.claim(["k9"], "run-a", check) == (["k9"], {})
    assert wh.claim(["k9"], "run-d", check) == ([], {"k9": "run-a"}), "within its lease, a run elsewhere keeps it"
    clock.advance(0.7)
    state["run-a"] = Holder.ALIVE  # its process is known to run (on this host): the lease does not matter
    assert wh.claim(["k9"], "run-d", check) == ([], {"k9": "run-a"}), "a run known alive keeps it past its lease"
    state["run-a"] = Holder.UNKNOWN
    assert wh.claim(["k9"], "run-d", check) == (["k9"], {}), "a lease that ran out is stale unless known alive"
    assert short.renew(["k9"], "run-a") == [], "run-a learns that it lost k9"
    assert wh.holders(["k9", "k1", "nobody"]).keys() == {"k9", "k1"}
    assert wh.holders(["k9"])["k9"].run_id == "run-d"


def test_a_live_run_renews_its_lease_and_keeps_its_claims(make_store: MakeStore, clock: Clock):
    holder, other = make_store(lease=0.6), make_store()
    holder.claim(["k1", "k2"], "run-a")

    with holder.leased(["k1", "k2"], "run-a"):
        for _ in range(3):  # well past one lease: only the renewals keep it
            clock.advance(0.5)
            renewed_to = clock.now + dt.timedelta(seconds=0.6)
            wait_until(lambda to=renewed_to: all(c.lease_until >= to for c in other.holders(["k1", "k2"]).values()))
            assert other.claim(["k1", "k2"], "run-b") == ([], {"k1": "run-a", "k2": "run-a"})
    clock.advance(0.7)  # renewals stopped (as if the run had died): the lease runs out
    assert other.claim(["k1", "k2"], "run-b") == (["k1", "k2"], {})
    assert claim_rows(other) == {"k1": "run-b", "k2": "run-b"}


@pytest.mark.processes
def test_claims_of_a_process_that_died_hold_until_their_lease_runs_out(make_store: MakeStore, tmp_path: Path,
                                                                       clock: Clock):
    """Without a check that knows the holder (plain code, or a run on another host), a claim left by a process
    that is gone is judged by its lease alone."""
    wh = make_store(lease=1.5)
    script = (
        "import os, sys; from pathlib import Path; from telemetry_pipeline.warehouse import open_warehouse; "
        "wh = open_warehouse(os.environ.get('WAREHOUSE_URL'), Path(sys.argv[1]), lease_seconds=1.5); "
        "print(wh.claim(['k1', 'k2'], 'dead-run'))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "w.duckdb")],
                          capture_output=True, text=True, check=True)
    assert "(['k1', 'k2'], {})" in done.stdout  # that process claimed both, then ended without releasing them
    clock.now = dt.datetime.now(dt.UTC)  # no earlier than its claim, on the database's clock

    assert wh.claim(["k1", "k2"], "next-run") == ([], {"k1": "dead-run", "k2": "dead-run"})
    clock.advance(1.7)  # that process's lease was the database's now + 1.5 s
    assert wh.claim(["k1", "k2"], "next-run") == (["k1", "k2"], {})


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until `condition` holds (the timeout only bounds a failure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_claims_race_between_connections(make_store: MakeStore):
    keys = [f"k{i:02d}" for i in range(50)]
    results: dict[str, list[str]] = {}
    start = threading.Barrier(8)

    def contend(run_id: str) -> None:
        wh = make_store()  # its own warehouse object: its own connections
        start.wait()
        results[run_id] = wh.claim(list(reversed(keys)) if run_id.endswith(("1", "3")) else keys, run_id)[0]

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [run for run, got in results.items() if got]
    assert len(results) == 8 and len(winners) == 1 and sorted(results[winners[0]]) == keys, "one run got every key"


# -- schema versions ---------------------------------------------------------------------------------------------


@pytest.mark.processes
def test_several_processes_migrate_a_fresh_postgres_warehouse_at_once(postgres_url: str):
    script = (
        "import sys; from telemetry_pipeline.warehouse import PostgresWarehouse; "
        "ok, detail = PostgresWarehouse(sys.argv[1]).probe(); print(detail); sys.exit(0 if ok else 1)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, postgres_url], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert all(f"schema version {LATEST_VERSION}" in out for out in outs)
    with psycopg2.connect(postgres_url) as con, con.cursor() as cur:
        cur.execute("SELECT version FROM schema_version ORDER BY version")
        assert [v for (v,) in cur.fetchall()] == list(range(1, LATEST_VERSION + 1)), "each migration applied once"
    con.close()


def test_a_duckdb_file_from_before_versioning_is_migrated_in_place(tmp_path: Path):
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:  # the tables as the first release created them
        con.execute("CREATE TABLE raw_telemetry (session_key VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, "
                    "session_id VARCHAR NOT NULL, body BLOB NOT NULL, content_type VARCHAR, byte_size BIGINT NOT NULL, "
                    "sha256 VARCHAR NOT NULL, location VARCHAR, fetched_at TIMESTAMPTZ NOT NULL)")
        con.execute(
            "INSERT INTO raw_telemetry VALUES ('extract:a', 'extract', 'a', 'x'::BLOB, NULL, 1, 'h', NULL, now())"
        )
        con.execute("CREATE TABLE export_claims (session_key VARCHAR PRIMARY KEY, run_id VARCHAR NOT NULL, "
                    "claimed_at TIMESTAMPTZ NOT NULL, host VARCHAR NOT NULL, pid BIGINT NOT NULL)")
        con.execute("INSERT INTO export_claims VALUES ('extract:a', 'old-run', now(), 'h', 1)")

    wh = DuckDBWarehouse(path)
    assert wh.probe() == (True, f"DuckDB file {path}, schema version {LATEST_VERSION}")
    [moved] = wh.raw.read(["extract:a"])
    assert (moved.session_key, moved.body, moved.sha256) == ("extract:a", b"x", "h"), "data kept"
    with wh.connect() as con:
        tables = {t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert not tables & {"export_claims", "raw_telemetry"}, "claims and payloads in files of their own (migration 6)"
    assert wh.claim(["extract:a"], "new-run") == (["extract:a"], {})
    with duckdb.connect(str(wh.claims_path)) as con:
        columns = [c for (c,) in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = "
                                             "'export_claims'").fetchall()]
    assert columns == ["session_key", "run_id", "claimed_at", "lease_until"], "claims are leases"


# A database as an older release left it, migrated forward by this code, must hold the tables this code's row types
# describe (`schema.py`, `canonical.model`): a row type changed without a migration fails here, on either store.
CURRENT_TABLES = (RAW_TELEMETRY, SESSIONS, EVENTS, DEVIATIONS, EXPORT_CLAIMS, EXPORT_ARCHIVE)
Shape = dict[str, tuple[list[tuple[str, str, bool]], list[str]]]  # table -> ([(column, type, nullable)], primary key)


def duckdb_shape(path: Path) -> Shape:
    with duckdb.connect(str(path)) as con:
        columns = con.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM duckdb_columns() WHERE NOT internal "
            "AND database_name = current_database() AND table_name <> 'schema_version' "
            "ORDER BY table_name, column_index"
        ).fetchall()
        keys = dict(con.execute("SELECT table_name, constraint_column_names FROM duckdb_constraints() "
                                "WHERE constraint_type = 'PRIMARY KEY' AND database_name = current_database()"
                                ).fetchall())
    return _shape(columns, keys)


def sqlite_shape(path: Path) -> Shape:
    with sqlite3.connect(path) as con:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        info = {t: con.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
    con.close()
    return {t: ([(c[1], c[2], not c[3] and not c[5]) for c in cols], [c[1] for c in cols if c[5]])
            for t, cols in info.items()}


def postgres_shape(url: str) -> Shape:
    with psycopg2.connect(url) as con, con.cursor() as cur:
        cur.execute(
            "SELECT table_name, column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name <> 'schema_version' ORDER BY table_name, ordinal_position"
        )
        columns = cur.fetchall()
        cur.execute(
            "SELECT c.table_name, array_agg(k.column_name::text ORDER BY k.ordinal_position) "
            "FROM information_schema.table_constraints c JOIN information_schema.key_column_usage k "
            "USING (constraint_schema, constraint_name) "
            "WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = 'public' GROUP BY c.table_name"
        )
        keys = dict(cur.fetchall())
    con.close()
    return _shape(columns, keys)


def _shape(columns: list[tuple[str, str, str, bool]], keys: dict[str, list[str]]) -> Shape:
    shape: Shape = {}
    for table, column, type_, nullable in columns:
        shape.setdefault(table, ([], list(keys.get(table, []))))[0].append((column, type_, nullable))
    return shape


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_a_warehouse_from_migration_1_migrated_forward_matches_a_fresh_one_and_the_row_types(
    dialect: Dialect, tmp_path: Path, request: pytest.FixtureRequest
):
    version_1 = MIGRATIONS[0]
    record = "INSERT INTO schema_version VALUES (1, 'raw payloads and the canonical model', now())"
    if dialect == "duckdb":
        old, fresh, described = (tmp_path / f"{name}.duckdb" for name in ("old", "fresh", "described"))
        with duckdb.connect(str(old)) as con:  # what the release with version 1 created, and recorded
            for statement in (SCHEMA_VERSION_DDL, *version_1.statements["duckdb"], record):
                con.execute(statement)
        with duckdb.connect(str(described)) as con:
            for table in CURRENT_TABLES:
                if table is not RAW_TELEMETRY:
                    con.execute(table.ddl("duckdb"))
        with sqlite3.connect(tmp_path / "described.sqlite") as lite:
            lite.execute(RAW_TELEMETRY.ddl("sqlite"))
        lite.close()
        for path in (old, fresh):
            store = DuckDBWarehouse(path)
            assert store.probe() == (True, f"DuckDB file {path}, schema version {LATEST_VERSION}")
            store.claim(["extract:x"], "run")  # the claims' own file, made at its first use
            store.raw.keys()  # the payloads' file, made at its first use
        shapes = [duckdb_shape(path) for path in (old, fresh, described)]
        for path, shape in zip((old, fresh), shapes, strict=False):  # each claims file beside its warehouse
            shape.update(duckdb_shape(DuckDBWarehouse(path).claims_path))
        for raw_path, shape in zip((*(DuckDBWarehouse(p).raw.path for p in (old, fresh)),
                                    tmp_path / "described.sqlite"), shapes, strict=True):
            shape.update(sqlite_shape(raw_path))  # and its payloads' SQLite file
    else:
        old = request.getfixturevalue("postgres_url")
        fresh, described = create_database(), create_database()
        request.addfinalizer(lambda: (drop_database(fresh), drop_database(described)))
        with psycopg2.connect(old) as con, con.cursor() as cur:
            for statement in (SCHEMA_VERSION_DDL, *version_1.statements["postgres"], record):
                cur.execute(statement)
        con.close()
        with psycopg2.connect(described) as con, con.cursor() as cur:
            for table in CURRENT_TABLES:
                cur.execute(table.ddl("postgres"))
        con.close()
        for url in (old, fresh):
            ok, detail = PostgresWarehouse(url).probe()
            assert ok and detail.endswith(f"schema version {LATEST_VERSION}"), detail
        shapes = [postgres_shape(url) for url in (old, fresh, described)]
    migrated, new, expected = shapes
    assert sorted(expected) == sorted(t.name for t in CURRENT_TABLES)
    assert migrated == new == expected


def test_a_warehouse_migrated_by_newer_code_is_refused(make_store: MakeStore):
    wh = make_store()
    assert wh.probe()[0]
    sql = "INSERT INTO schema_version VALUES (99, 'from the future', now())"
    if isinstance(wh, DuckDBWarehouse):
        with wh.connect() as con:
            con.execute(sql)
    else:
        assert isinstance(wh, PostgresWarehouse)
        with wh.transaction("test") as cur:
            cur.execute(sql)

    ok, detail = make_store().probe()
    assert not ok and "schema version 99, newer than this code knows" in detail


# -- what the stores keep ----------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
HOSTILE = 'quote " comma , semicolon ; tab \t CRLF \r\n lone CR \r NUL \x00 emoji \U0001f600 line \\. end'


def _session(key: str, **overrides: Any) -> dict[str, Any]:
    row = {"session_key": key, "source": "extract", "session_id": key.split(":", 1)[1], "agent_name": "",
           "task_description": HOSTILE, "start_time": dt.datetime(1, 1, 1, tzinfo=dt.UTC),
           "end_time": dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC), "status": "completed",
           "event_count": 2, "prompt_metrics": json.dumps({"nul": "\x00", "q": '"'}), "normalized_at": NOW}
    return {**row, **overrides}


def _fill(con: duckdb.DuckDBPyConnection, sessions: list[dict[str, Any]], events: list[tuple[str, str]]) -> None:
    for s in sessions:
        con.execute(
            "INSERT INTO sessions (session_key, source, session_id, agent_name, task_description, start_time, "
            "end_time, status, event_count, prompt_metrics, normalized_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [s["session_key"], s["source"], s["session_id"], s["agent_name"], s["task_description"], s["start_time"],
             s["end_time"], s["status"], s["event_count"], s["prompt_metrics"], s["normalized_at"]])
    for i, (event_id, key) in enumerate(events):
        con.execute("INSERT INTO events (event_id, session_key, seq, activity, event_type, event_time, latency_ms, "
                    "attributes) VALUES (?, ?, ?, 'Call tool x', 'tool_call', ?, ?, '{}')",
                    [event_id, key, i, NOW, 2**63 - 1])


def test_postgres_keeps_every_value_and_replaces_a_session_whole(postgres_url: str):
    wh = PostgresWarehouse(postgres_url)
    body = bytes(range(256)) * 3
    raw = RawSession("extract", "s1", body, "application/json", NOW, "http://x/s1")
    wh.store_raw([raw])
    wh.store_raw([raw])  # a second fetch replaces the first
    with wh.workspace() as con:
        _fill(con, [_session("extract:s1"), _session("extract:s2", task_description=None)],
              [("e1", "extract:s1"), ("e2", "extract:s1"), ("e3", "extract:s2")])
        wh.save_canonical(con, ["extract:s1", "extract:s2"])
    with wh.workspace() as con:  # the next normalisation of s1 has one event only
        _fill(con, [_session("extract:s1", event_count=1)], [("e4", "extract:s1")])
        wh.save_canonical(con, ["extract:s1"])

    with psycopg2.connect(postgres_url) as pg, pg.cursor() as cur:
        cur.execute("SELECT body, byte_size, content_type, location, fetched_at FROM raw_telemetry")
        [(stored, size, content_type, location, fetched_at)] = cur.fetchall()
        assert bytes(stored) == body and size == len(body) and fetched_at == NOW
        assert (content_type, location) == ("application/json", "http://x/s1")
        cur.execute("SELECT session_key, agent_name, task_description, start_time, end_time, prompt_metrics::text, "
                    "event_count FROM sessions ORDER BY 1")
        s1, s2 = cur.fetchall()
        cur.execute("SELECT event_id, session_key, latency_ms, event_time FROM events ORDER BY 1")
        events = cur.fetchall()
    pg.close()
    assert s1[1] == "", "an empty string stays empty, not NULL"
    assert s1[2] == HOSTILE.replace("\x00", "\ufffd"), "PostgreSQL text cannot hold NUL: it becomes U+FFFD"
    latest = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert s1[3:5] == (dt.datetime(1, 1, 1, tzinfo=dt.UTC), latest)
    assert json.loads(s1[5]) == {"nul": "\x00", "q": '"'} and s1[6] == 1, "JSON escapes kept as written"
    assert s2[2] is None
    assert events == [("e3", "extract:s2", 2**63 - 1, NOW), ("e4", "extract:s1", 2**63 - 1, NOW)], (
        "s1's old events went with its new normalisation; s2's stayed"
    )


def test_open_warehouse_picks_the_store_from_the_url(tmp_path: Path):
    assert isinstance(open_warehouse(None, tmp_path / "w.duckdb"), DuckDBWarehouse)
    pg = open_warehouse("postgresql+psycopg2://me:s3cret@db.example:6543/wh", tmp_path / "w.duckdb")
    assert isinstance(pg, PostgresWarehouse) and pg.describe() == "PostgreSQL me@db.example:6543/wh"
    with pytest.raises(ValueError, match="WAREHOUSE_URL must be a postgresql:// URL") as caught:
        open_warehouse("mysql://me:s3cret@db/wh", tmp_path / "w.duckdb")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_a_replacement_that_fails_half_way_keeps_the_sessions_old_rows(
    dialect: Dialect, tmp_path: Path, request: pytest.FixtureRequest
):
    """The new rows break the events' primary key after the old ones were deleted: the delete is rolled back."""
    new_event = ("INSERT INTO events (event_id, session_key, seq, activity, event_type, event_time, latency_ms, "
                 "attributes) VALUES ('e9', 'extract:s1', 0, 'Call tool x', 'tool_call', now(), 1, '{}')")

    def insert_twice(cur: Any) -> None:
        cur.execute(new_event)
        cur.execute(new_event)

    def rows(cur: Any) -> list[tuple[str, ...]]:
        cur.execute("SELECT s.session_key, e.event_id FROM sessions s JOIN events e USING (session_key) ORDER BY 2")
        return [tuple(row) for row in cur.fetchall()]

    old = [("extract:s1", "e1"), ("extract:s1", "e2")]
    if dialect == "duckdb":
        with DuckDBWarehouse(tmp_path / "w.duckdb").connect() as con:
            _fill(con, [_session("extract:s1")], [("e1", "extract:s1"), ("e2", "extract:s1")])
            with pytest.raises(duckdb.ConstraintException):
                replace_rows(duckdb_transaction(con), (EVENTS, SESSIONS), ["extract:s1"], insert_twice)
            assert rows(con) == old
            replace_rows(duckdb_transaction(con), (EVENTS, SESSIONS), ["extract:s1"], lambda cur: None)
            assert con.execute("SELECT count(*) FROM sessions").fetchone() == (0,), "the same helper commits"
        return
    wh = PostgresWarehouse(request.getfixturevalue("postgres_url"))
    with wh.workspace() as con:
        _fill(con, [_session("extract:s1")], [("e1", "extract:s1"), ("e2", "extract:s1")])
        wh.save_canonical(con, ["extract:s1"])
    with pytest.raises(psycopg2.errors.UniqueViolation):
        replace_rows(wh.transaction("replacing"), (EVENTS, SESSIONS), ["extract:s1"], insert_twice, "%s")
    with wh.transaction("reading") as cur:
        assert rows(cur) == old
