"""A source is one folder: a fifth one (`example_source/`, never shipped) is added to a copy of the package by
copying its folder to `sources/example/` and adding its name, one line, to the registry; nothing else changes, and
the copy's settings, Dagster resource, `check`, `discover` and `export` all know it."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import telemetry_pipeline
from telemetry_pipeline_tests.source_double import SourceDouble

EXAMPLE = Path(__file__).parent / "example_source"
SOURCE_PREFIXES = ("EXTRACT_", "AGENT_METRICS_", "AGORA_", "OTLP_", "SIGNAVIO_", "WAREHOUSE_", "DAGSTER_HOME")


def add_example_source(root: Path) -> tuple[list[str], list[str]]:
    """The package copied under `root` with the example source added; (its registry's added lines, removed lines)."""
    package = root / "telemetry_pipeline"
    shutil.copytree(Path(telemetry_pipeline.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(EXAMPLE, package / "sources" / "example", ignore=shutil.ignore_patterns("__pycache__"))
    registry = package / "sources" / "registry.py"
    before = registry.read_text().splitlines()
    after = [*before]
    after.insert(after.index('    "otlp",') + 1, '    "example",')
    registry.write_text("\n".join(after) + "\n")
    diff = [line for line in difflib.unified_diff(before, after, lineterm="", n=0) if line[:3] not in ("---", "+++")]
    return [d[1:] for d in diff if d.startswith("+")], [d[1:] for d in diff if d.startswith("-")]


def run(root: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=240)
    return proc.returncode, proc.stdout


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    added, removed = add_example_source(root)
    assert (added, removed) == (['    "example",'], []), "a new source is its folder and one registry line"
    return root


@pytest.mark.processes
def test_a_fifth_source_is_its_folder_and_one_registry_line(example_copy: Path, tmp_path: Path):
    with SourceDouble() as double:
        key = double.add_good("agent_telemetry", "s1")  # the example source serves agent_telemetry's routes
        session_id = key.partition(":")[2]
        env = {k: v for k, v in os.environ.items() if not k.startswith(SOURCE_PREFIXES)}
        env |= {"PYTHONPATH": str(example_copy), "TELEMETRY_PIPELINE_HOME": str(tmp_path / "home"),
                "EXAMPLE_SERVICE_URL": double.url, "AGENT_NAME": "test-agent"}

        # Its variable is a setting, a typed field of the sources resource, and only the copy has it.
        code, out = run(example_copy, env, "-c", (
            "import json, telemetry_pipeline as p; from telemetry_pipeline.settings import from_environment;"
            "from telemetry_pipeline.definitions import build_definitions; s = from_environment();"
            "r = build_definitions(s).resources['sources'];"
            "print(json.dumps([p.__file__, s.sources.values['example_url'], r.example_url,"
            " type(r).model_fields['example_url'].description]))"))
        assert code == 0, out
        package_file, setting, field, description = json.loads(out)
        assert package_file.startswith(str(example_copy)), "the subprocess runs the copy, not the installed package"
        assert setting == field == double.url and "enables source example" in description

        code, out = run(example_copy, env, "-m", "telemetry_pipeline", "check")
        checks = {c["name"]: c["ok"] for c in json.loads(out)["checks"]}
        assert checks["source:example"] is True and "source:extract" not in checks

        code, out = run(example_copy, env, "-m", "telemetry_pipeline", "discover")
        assert code == 0 and json.loads(out)["new_keys"] == [f"example:{session_id}"], out

        code, out = run(example_copy, env, "-m", "telemetry_pipeline", "export", f"example:{session_id}")
        result = json.loads(out)
        assert code == 0 and result["exported_count"] == 1, out
        assert double.hits[key] >= 1, "fetched from the example source's service"


def test_the_docs_show_the_example_source_as_it_is():
    docs = (Path(__file__).parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    shown = docs.split("# telemetry_pipeline/sources/example/__init__.py\n", 1)[1].split("```", 1)[0]
    code = (EXAMPLE / "__init__.py").read_text().split('"""', 2)[2]  # past the docstring
    code = code.replace("from __future__ import annotations\n", "")
    assert shown.strip() == code.strip()
