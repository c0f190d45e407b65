"""What the older Go service did, for a side-by-side row: list every session, fetch each (as many at once as the
pipeline fetches), parse it and write one case row per session to a CSV file, with no event log, no warehouse, no
checks and no confirmation from the destination. Deliberately none of the pipeline's code: the distance between
this and our own work is the price of what we add. Run by bench/run.py with the pipeline's environment
(EXTRACT_SERVICE_URL, AGENT_METRICS_BASE_URL, FETCH_CONCURRENCY, AGENT_NAME, TELEMETRY_PIPELINE_HOME); prints
{"listed", "exported"} as JSON.
"""

import csv
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

# (base URL variable, listing path, fetch path): the two session APIs the simulator serves (docs/SOURCES.md).
ROUTES = (
    ("EXTRACT_SERVICE_URL", "/signavio/agent-metrics", "/signavio/agent-metrics/{}"),
    ("AGENT_METRICS_BASE_URL", "/agent_metrics/sessions", "/agent_metrics/{}/events"),
)
COLUMNS = ["case_id", "agent_name", "start_time", "end_time", "event_count", "failed_events"]


def main() -> None:
    concurrency = int(os.environ.get("FETCH_CONCURRENCY", "16"))
    out = Path(os.environ["TELEMETRY_PIPELINE_HOME"]) / "minimal_cases.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        urls = [base + fetch.format(sid) for var, listing, fetch in ROUTES if (base := os.environ.get(var))
                for sid in _listing(client, base + listing)]
        with ThreadPoolExecutor(concurrency) as pool, out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in pool.map(lambda url: _case_row(client, url), urls):
                writer.writerow(row)
    json.dump({"listed": len(urls), "exported": len(urls)}, sys.stdout)


def _listing(client: httpx.Client, url: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = client.get(url, params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).raise_for_status()
        body = page.json()
        ids += [item["session_id"] for item in body.get("sessions") or []]
        if not body.get("next_cursor") or body["next_cursor"] == cursor:
            return ids
        cursor = body["next_cursor"]


def _case_row(client: httpx.Client, url: str) -> list[Any]:
    session = client.get(url).raise_for_status().json()
    events = session.get("events") or []
    payloads = [e.get("payload") or {} for e in events]
    agent = next((p["agent_name"] for p in payloads if p.get("agent_name")),
                 session.get("agent_name") or os.environ.get("AGENT_NAME"))
    times = [e.get("timestamp") for e in events if e.get("timestamp") is not None]
    failed = sum(1 for p in payloads if p.get("success") is False)
    return [session.get("session_id"), agent, times[0] if times else None, times[-1] if times else None,
            len(events), failed]


if __name__ == "__main__":
    main()
