"""Shared fixtures: a temporary pipeline home, the source double, and a clean environment."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from telemetry_pipeline import cli
from telemetry_pipeline_tests.signavio_double import SignavioDouble
from telemetry_pipeline_tests.source_double import SourceDouble
from telemetry_pipeline_tests.postgres import postgres_url  # noqa: F401  (fixture)

# Distinctive, so that finding it anywhere is proof of a leak and not a coincidence.
TOKEN = "sgv-TOKEN-4f1c9e27b3d84a6e-do-not-leak"

CONFIG_VARS = (
    "SIGNAVIO_API_URL", "SIGNAVIO_API_KEY", "SIGNAVIO_STATUS_URL", "SIGNAVIO_DATASET", "SIGNAVIO_TIMEOUT",
    "SIGNAVIO_MAX_RETRIES", "SIGNAVIO_TENANT_ID", "SIGNAVIO_POLL_INTERVAL", "SIGNAVIO_POLL_DEADLINE",
    "SIGNAVIO_MAX_BODY_MB", "EXTRACT_SERVICE_URL", "AGENT_METRICS_BASE_URL",
    "AGORA_PLATFORM_URL", "AGORA_API_TOKEN", "OTLP_INBOX_DIR", "AGENT_NAME", "SERVICE_NAME", "DAGSTER_HOME",
    "TELEMETRY_PIPELINE_HOME", "EXPORT_BATCH_SIZE", "SESSION_SETTLE_SECONDS",
)


@pytest.fixture
def source_double() -> Iterator[SourceDouble]:
    with SourceDouble() as double:
        yield double


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source_double: SourceDouble) -> Path:
    """A fresh pipeline home wired to the source double, with the outbox as destination."""
    for name in CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("TELEMETRY_PIPELINE_HOME", str(home))
    monkeypatch.setenv("EXTRACT_SERVICE_URL", source_double.url)
    monkeypatch.setenv("AGENT_METRICS_BASE_URL", source_double.url)
    monkeypatch.setenv("AGENT_NAME", "test-agent")
    monkeypatch.setenv("SOURCE_MAX_RETRIES", "2")
    monkeypatch.setenv("HTTP_RETRY_WAIT_INITIAL", "0.01")
    return home


@pytest.fixture
def signavio(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SignavioDouble]:
    """The Signavio double as the destination, configured the way an operator would: environment only."""
    with SignavioDouble(token=TOKEN) as api:
        monkeypatch.setenv("SIGNAVIO_API_URL", api.url)
        monkeypatch.setenv("SIGNAVIO_API_KEY", api.token)
        monkeypatch.setenv("SIGNAVIO_MAX_RETRIES", "3")
        monkeypatch.setenv("SIGNAVIO_TIMEOUT", "5s")
        monkeypatch.setenv("SIGNAVIO_POLL_INTERVAL", "0.01")
        monkeypatch.setenv("SIGNAVIO_POLL_DEADLINE", "5s")
        yield api


@pytest.fixture
def instance(home: Path) -> Iterator[dg.DagsterInstance]:
    with cli.open_instance() as inst:
        yield inst


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)


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
