"""Real-size traces (issue 33): LangGraph sessions of ~610 KB replicated from the framework's own trace, exported in
chunks bounded by bytes, the CLI's stdout the JSON alone, and the inbox's index kept between runs. Memory and speed
are the benchmark's (`bench/otlp.py`), not a timed test's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from telemetry_pipeline.settings import MB
from telemetry_pipeline.sources.otlp.source import INDEX_DIR, OtlpSource
from telemetry_pipeline_tests.conftest import Pipeline, outbox_uploads, read_upload
from telemetry_pipeline_tests.real_size import replicate
from telemetry_pipeline_tests.test_agora_otlp import raw_rows
from telemetry_pipeline_tests.test_faults import start_export


def test_a_long_export_goes_in_chunks_of_bounded_bytes_and_prints_its_json_alone(
    pipeline: Pipeline, home: Path, tmp_path: Path
):
    written = replicate(24, 3, tmp_path / "traces")  # ~15 MB
    pipeline.configure(sources={"extract_url": None, "agent_telemetry_url": None, "otlp_dir": tmp_path / "traces",
                                "chunk_max_bytes": 4 * MB, "fetch_concurrency": 2})
    assert pipeline.cli("discover")[1]["new_count"] == 24

    export = start_export(pipeline, tmp_path, "--pending")
    out = export.result(timeout=300)  # the whole of stdout parses as one JSON document
    assert export.proc.returncode == 0 and (out["exported_count"], out["failed_count"]) == (24, 0), out
    assert "session/s" in export.out.with_suffix(".err").read_text(), "the progress went to stderr"

    runs = [read_upload(f)[2] for f in outbox_uploads(home)
            if json.loads((f / "schema.json").read_text())["name"].endswith("_runs")]
    # A chunk ends once it holds 4 MB; the fetches under way then (2 at most) finish in it.
    assert len(runs) >= written // (4 * MB + 2 * 650_000), "an upload per chunk of about 4 MB, not one per run"
    cases = [row["agent_run_id"] for rows in runs for row in rows]
    assert len(cases) == len(set(cases)) == 24, "each session in exactly one chunk"

    stored = raw_rows(home, "SELECT body, byte_size, sha256 FROM raw_telemetry")
    assert len(stored) == 24
    assert all(len(body) == size and hashlib.sha256(body).hexdigest() == digest for body, size, digest in stored)


def test_the_inbox_index_is_kept_and_a_file_that_changed_is_scanned_again(tmp_path: Path):
    inbox = tmp_path / "inbox"
    replicate(4, 2, inbox)
    first = {ref.session_id for ref in OtlpSource(inbox).list_sessions(None)}
    assert len(first) == 4
    kept = {p.name: p.stat().st_mtime_ns for p in (inbox / INDEX_DIR).iterdir()}
    assert len(kept) == 2, "one scan kept per file"

    replicate(5, 1, tmp_path / "more", seed=7)  # a fifth session, appended to the second file
    new_line = (tmp_path / "more" / "traces-000.jsonl").read_bytes().splitlines(keepends=True)[-1]
    with (inbox / "traces-001.jsonl").open("ab") as trace_file:
        trace_file.write(new_line)

    source = OtlpSource(inbox)  # a new run
    listed = {ref.session_id for ref in source.list_sessions(None)}
    (added,) = listed - first
    assert listed >= first and source.unreadable_files() == {}, "the index's own files are never read as traces"
    after = {p.name: p.stat().st_mtime_ns for p in (inbox / INDEX_DIR).iterdir()}
    assert sum(after[name] != stamp for name, stamp in kept.items()) == 1, "only the changed file was scanned again"
    assert json.loads(source.fetch(added).body)["resourceSpans"], "the new session's spans are fetched"


def test_an_inbox_where_the_index_cannot_be_kept_is_read_all_the_same(tmp_path: Path):
    inbox = tmp_path / "inbox"
    replicate(3, 1, inbox)
    (inbox / INDEX_DIR).write_text("a file where the index's directory would be")
    source = OtlpSource(inbox)
    assert len(list(source.list_sessions(None))) == 3 and source.unreadable_files() == {}
