"""The embedded destination: every upload written to `<home>/outbox/<upload-id>/` exactly as the
HTTP request would carry it (schema JSON, primary keys, delimiter, CSV part)."""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from telemetry_pipeline.signavio.models import OUTBOX, LoadResult, TableUpload


class Outbox:
    name = "outbox"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def describe(self) -> str:
        return str(self.directory)

    def probe(self) -> tuple[bool, str]:
        """Writable: a file can be created in the outbox (created when missing), and how much room is left."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".check-"):
                pass
        except OSError as exc:
            return False, f"{self.directory} is not writable: {exc.strerror}"
        stat = os.statvfs(self.directory)
        return True, f"writable: {self.directory} ({stat.f_bavail * stat.f_frsize / 1e9:.1f} GB free)"

    def load(self, uploads: Sequence[TableUpload]) -> list[LoadResult]:
        return [self._write(upload) for upload in uploads]

    def _write(self, upload: TableUpload) -> LoadResult:
        # Sortable by time; the random tail keeps two runs in the same millisecond apart. The folder
        # name never contains a session id, so no session id can steer a path outside the outbox.
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        upload_id = f"{stamp}-{upload.table}-{uuid.uuid4().hex[:8]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f".{upload_id}.partial"
        staging.mkdir()
        (staging / "schema.json").write_text(json.dumps(upload.schema, indent=2) + "\n", encoding="utf-8")
        (staging / "primaryKeys.txt").write_text(",".join(upload.primary_keys) + "\n", encoding="utf-8")
        (staging / "delimiter.txt").write_text(upload.delimiter + "\n", encoding="utf-8")
        (staging / f"{upload.table}.csv").write_bytes(upload.csv)
        for path in staging.iterdir():
            _fsync(path)
        # The rename is what makes an upload visible: a crash never leaves a half-written folder.
        os.replace(staging, self.directory / upload_id)
        return LoadResult(
            table=upload.table, status=OUTBOX, execution_ids=(upload_id,), destination=str(self.directory),
            extra={"rows": upload.rows},
        )


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
