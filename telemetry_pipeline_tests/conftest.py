"""Shared fixtures: a temporary pipeline home, the source double, settings built directly, the Signavio double."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from telemetry_pipeline import cli
from telemetry_pipeline.definitions import build_definitions
from telemetry_pipeline.instance import open_instance
from telemetry_pipeline.settings import HttpSettings, Secret, Settings, SourcesSettings, for_home, to_environment
from telemetry_pipeline_tests.postgres import postgres_url  # noqa: F401  (fixture)
from telemetry_pipeline_tests.signavio_double import SignavioDouble
from telemetry_pipeline_tests.source_double import SourceDouble

# A suite started in the background by a non-interactive shell (as CI may start it) begins with SIGINT ignored, and
# Dagster's interrupt handling then sets SIGTERM to the same: every process the tests start afterwards (deploy/start.sh
# among them) would inherit SIGTERM ignored, and a shell cannot trap a signal ignored on entry. The stop tests then
# failed at random (a fresh-clone CI run of 2026-12-07: start.sh did nothing for 10 s after its SIGTERM). The suite
# takes its signals as a foreground process has them.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

# Distinctive, so that finding it anywhere is proof of a leak and not a coincidence.
TOKEN = "sgv-TOKEN-4f1c9e27b3d84a6e-do-not-leak"


@dataclass
class Pipeline:
    """The pipeline as a test drives it: `settings` built directly (replace them to reconfigure), the CLI run
    in this process with them, `Definitions` built from them, and the environment a subprocess needs."""

    settings: Settings
    capsys: pytest.CaptureFixture[str]

    def cli(self, *argv: str) -> tuple[int, Any]:
        self.capsys.readouterr()
        code = cli.main(list(argv), settings=self.settings)
        return code, json.loads(self.capsys.readouterr().out)

    def defs(self) -> dg.Definitions:
        return build_definitions(self.settings)

    def configure(self, **changes: Any) -> None:
        """`sources=` / `signavio=` / `warehouse=` take dicts of field changes; other keys replace top-level
        settings."""
        if "sources" in changes:  # a source's variables (`extract_url`) and the shared fields alike
            changes["sources"] = self.settings.sources.replace(**changes["sources"])
        for part in ("signavio", "warehouse"):
            if part in changes:
                changes[part] = dataclasses.replace(getattr(self.settings, part), **changes[part])
        self.settings = dataclasses.replace(self.settings, **changes)

    def environment(self) -> dict[str, str]:
        """What a `python -m telemetry_pipeline` subprocess needs to run with these settings."""
        prefixes = ("SIGNAVIO_", "EXTRACT_", "AGENT_", "AGORA_", "WAREHOUSE_", "CLAIM_")
        keep = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        return {**keep, **to_environment(self.settings)}


@pytest.fixture
def source_double() -> Iterator[SourceDouble]:
    with SourceDouble() as double:
        yield double


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def pipeline(home: Path, source_double: SourceDouble, capsys: pytest.CaptureFixture[str]) -> Pipeline:
    """A fresh pipeline home wired to the source double, with the outbox as destination."""
    settings = for_home(home, sources=SourcesSettings.of(
        extract_url=source_double.url,
        agent_telemetry_url=source_double.url,
        agent_name="test-agent",
        http=HttpSettings(max_retries=2, retry_wait_initial=0.01),
    ))
    return Pipeline(settings, capsys)


@pytest.fixture
def signavio(pipeline: Pipeline) -> Iterator[SignavioDouble]:
    """The Signavio double as the destination."""
    with SignavioDouble(token=TOKEN) as api:
        pipeline.configure(signavio={
            "api_url": api.url, "api_key": Secret(api.token),
            "http": HttpSettings(timeout=5.0, max_retries=3, retry_wait_initial=0.01),
            "poll_interval": 0.01, "poll_deadline": 5.0,
        })
        yield api


@pytest.fixture
def instance(pipeline: Pipeline) -> Iterator[dg.DagsterInstance]:
    with open_instance(pipeline.settings.dagster_home) as inst:
        yield inst


def outbox_uploads(home: Path) -> list[Path]:
    outbox = home / "outbox"
    return sorted(p for p in outbox.iterdir() if not p.name.startswith(".")) if outbox.exists() else []


def read_upload(folder: Path) -> tuple[dict, list[str], list[dict[str, str]]]:
    """(schema, primary keys, CSV rows parsed by a real CSV parser)."""
    schema = json.loads((folder / "schema.json").read_text())
    keys = (folder / "primaryKeys.txt").read_text().strip().split(",")
    (part,) = folder.glob("*.csv")
    # Bytes, decoded: read_text() would translate a CR inside a quoted value into a line feed.
    rows = list(csv.DictReader(io.StringIO(part.read_bytes().decode("utf-8"), newline="")))
    return schema, keys, rows


def uploads_by_table(home: Path) -> dict[str, list[dict[str, str]]]:
    """Every outbox upload's rows, grouped by table (latest upload last)."""
    tables: dict[str, list[dict[str, str]]] = {}
    for folder in outbox_uploads(home):
        schema, _, rows = read_upload(folder)
        tables.setdefault(schema["name"], []).extend(rows)
    return tables


POSTGRES_FIXTURES = frozenset({"postgres_url", "private_postgres", "dagster_db"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`postgres` on every test that takes a database, or a store parametrised as PostgreSQL (`pytest -m postgres`
    reruns them alone)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())) or "postgres" in params.values():
            item.add_marker(pytest.mark.postgres)
