"""PostgreSQL for the tests: every machine (developers' and CI's) runs PostgreSQL 15 on 127.0.0.1:5432 with
trust auth. Each test gets a database of its own, created and dropped here. Where PostgreSQL is missing the
tests that need it fail in CI (CI=true) and skip elsewhere, saying why."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg2
import pytest

SERVER = os.environ.get("TEST_POSTGRES_SERVER", "postgresql://postgres@127.0.0.1:5432")


def _admin() -> psycopg2.extensions.connection:
    con = psycopg2.connect(f"{SERVER}/postgres", connect_timeout=5)
    con.autocommit = True
    return con


def create_database(prefix: str = "tp") -> str:
    """A new empty database; returns its `postgresql://` URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    con = _admin()  # not `with con`: psycopg2 2.9 opens a transaction there, and CREATE DATABASE refuses one
    try:
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        con.close()
    return f"{SERVER}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    con = _admin()
    try:
        with con.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        con.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    try:
        url = create_database()
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and is not reachable at {SERVER}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {SERVER}: {exc}")
    try:
        yield url
    finally:
        drop_database(url)
