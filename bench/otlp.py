"""Real-size traces: `python bench/otlp.py --sessions 1000 --files 10` (README, Benchmark: the OTLP source).

The inbox is made of the real multi-agent traces the frameworks emitted (`telemetry_pipeline_tests/traces/`,
PROVENANCE.md), each session replicated with new trace, span and conversation ids and shifted times: by default the
LangGraph supervisor under OpenLLMetry, about 610 KB of OTLP JSON a session, because every nested span repeats the
conversation. They are written as Collector-style JSON Lines files (one `ExportTraceServiceRequest` a line), then
`discover` and `export --pending` run on the embedded default with the outbox as destination, each in a fresh
process. Prints one JSON document: seconds, MB/s and sessions/s of each command and of both, and the peak RSS of
each command's processes together (sampled every 20 ms): their RSS summed, and their PSS summed, which counts the
pages they share (the libraries' code) once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the traces' replicator, in the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, _TreeRss  # the same sampler as the main benchmark

from telemetry_pipeline_tests.real_size import LANGGRAPH, replicate


def _cli(env: dict[str, str], *argv: str) -> tuple[dict, float, _TreeRss]:
    import subprocess

    start = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "telemetry-pipeline"), *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    with _TreeRss(proc.pid, pss=True) as rss:
        stdout, stderr = proc.communicate()
    elapsed = time.perf_counter() - start
    try:
        answer = json.loads(stdout)  # stdout is the JSON alone (issue 33)
    except ValueError:
        sys.stderr.write(stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"telemetry-pipeline {argv[0]}: stdout is not JSON: {stdout[:200]!r}") from None
    if proc.returncode != 0:
        sys.stderr.write(stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"telemetry-pipeline {argv[0]} exited {proc.returncode}")
    return answer, elapsed, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--template", default=LANGGRAPH, help="a file of telemetry_pipeline_tests/traces/")
    parser.add_argument("--keep", action="store_true", help="leave the temporary home behind")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-otlp-"))
    home = root / "home"
    size = replicate(args.sessions, args.files, home / "inbox", args.template)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIGNAVIO_", "DAGSTER_", "AGORA_", "OTLP_", "EXTRACT_", "AGENT_", "TELEMETRY_"))}
    env["TELEMETRY_PIPELINE_HOME"] = str(home)
    mb = size / 1e6
    discovered, t_discover, rss_discover = _cli(env, "discover")
    exported, t_export, rss_export = _cli(env, "export", "--pending")
    assert exported["exported_count"] == args.sessions, exported
    total = t_discover + t_export
    json.dump({
        "template": args.template, "sessions": args.sessions, "files": args.files, "mb": round(mb, 1),
        "discover": {"seconds": round(t_discover, 1), "peak_rss_mb": round(rss_discover.peak_mb),
                     "peak_pss_mb": round(rss_discover.peak_pss_mb), "found": discovered["new_count"]},
        "export": {"seconds": round(t_export, 1), "peak_rss_mb": round(rss_export.peak_mb),
                   "peak_pss_mb": round(rss_export.peak_pss_mb), "mb_per_s": round(mb / t_export, 1)},
        "both": {"seconds": round(total, 1), "mb_per_s": round(mb / total, 1),
                 "sessions_per_s": round(args.sessions / total, 1)},
    }, sys.stdout, indent=2)
    print()
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
