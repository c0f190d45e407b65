"""What the UI shows: the Dagster events and metadata of an export batch and of the process overview
(wiring; the figures come from `export.BatchOutcome` and `overview.ProcessOverview`, the texts from
`console/render.py`).

Per export batch:
- one record per stage (`raw_telemetry`, `telemetry_events`, `signavio_csv`) for the run;
- one `signavio_export` materialisation per confirmed session, carrying the contract's fields
  (INTERFACE.md) after the session at a glance (`session_summary`): counts explained, every error, its
  first and last steps;
- one observation per failed session naming why, on that session's partition;
- one result per data-quality check of the upload (severity WARN: a failed check never blocks it).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from telemetry_pipeline.application.export import BatchOutcome
from telemetry_pipeline.console.overview import Outcome, ProcessOverview, SessionRef, Variant
from telemetry_pipeline.console.process_map import ProcessMap
from telemetry_pipeline.console.quality import CheckOutcome
from telemetry_pipeline.console.render import (
    cell,
    compact,
    conformance_text,
    deviations_markdown,
    errors_markdown,
    event_counts_text,
    links_text,
    markdown_table,
    outcome_text,
    outcome_words,
    partition_link,
    pct,
    session_tags,
    timeline_markdown,
    top_errors,
)
from telemetry_pipeline.console.session_summary import SessionSummary
from telemetry_pipeline.names import FAILED_SESSIONS_META
from telemetry_pipeline.names import RAW_TELEMETRY as RAW
from telemetry_pipeline.names import SIGNAVIO_CSV as CSV_ASSET
from telemetry_pipeline.names import SIGNAVIO_EXPORT as EXPORT
from telemetry_pipeline.names import TELEMETRY_EVENTS as EVENTS_ASSET
from telemetry_pipeline.signavio.models import COMPLETED
from telemetry_pipeline.signavio.schema import EVENTS, RUNS

MAX_LISTED_IN_METADATA = 20
MAX_ACTIVITIES_LISTED = 50



def stage_records(out: BatchOutcome, dataset: str) -> Iterator[dg.AssetMaterialization]:
    failed_at = {
        stage: sum(1 for e in out.failures.values() if e.startswith(stage)) for stage in ("fetch", "normalise")
    }
    runs_rows = sum(r for r, _ in out.rows.values())
    events_rows = sum(e for _, e in out.rows.values())
    if out.stored:
        yield dg.AssetMaterialization(asset_key=RAW, metadata={
            "sessions": len(out.stored), "bytes": out.bytes_fetched, "fetch_failures": failed_at["fetch"],
            "first_keys": dg.MetadataValue.json(out.stored[:MAX_LISTED_IN_METADATA]),
        })
    if out.normalized:
        yield dg.AssetMaterialization(asset_key=EVENTS_ASSET, metadata={
            "sessions": len(out.normalized), "events_rows": events_rows,
            "normalise_failures": failed_at["normalise"], **({"rechecked": True} if out.recheck else {}),
        })
    if out.rendered:
        yield dg.AssetMaterialization(asset_key=CSV_ASSET, metadata={
            "sessions": len(out.rendered), "dataset": dataset,
            "runs_table": RUNS.name(dataset), "events_table": EVENTS.name(dataset),
            "runs_rows": runs_rows, "events_rows": events_rows,
        })


def export_materializations(out: BatchOutcome, dataset: str, destination: str) -> Iterator[dg.AssetMaterialization]:
    if not out.exported:
        return
    runs_table, events_table = RUNS.name(dataset), EVENTS.name(dataset)
    execution_ids = {load.table: ",".join(load.execution_ids) for load in out.loads}
    statuses = {load.status for load in out.loads}
    shared: dict[str, Any] = {
        "execution_id": execution_ids.get(events_table, ""),
        "execution_ids": dg.MetadataValue.json(execution_ids),
        "ingestion_status": COMPLETED if statuses == {COMPLETED} else next(iter(statuses)),
        "runs_table": runs_table,
        "events_table": events_table,
        "destination": destination,
        "dataset": dataset,
    }
    if out.recheck:  # taken from the warehouse and checked against the playbooks afresh, not fetched again
        shared["rechecked"] = True
    for key in out.exported:
        session_runs, session_events = out.rows.get(key, (0, 0))
        summary = out.summaries.get(key)
        # What the session did first, then the plumbing (ids, tables, where it went): the UI lists
        # entries in this order.
        meaning = summary_metadata(summary) if summary else {}
        counts = {"events": summary.source_events} if summary else {}
        yield dg.AssetMaterialization(
            asset_key=EXPORT, partition=key,
            metadata={**meaning, **shared, **counts, "runs_rows": session_runs, "events_rows": session_events},
            tags=session_tags(summary) if summary else None,
        )


def summary_metadata(s: SessionSummary) -> dict[str, dg.RawMetadataValue]:
    """The session at a glance, in the order the UI lists it; only what is known."""
    meta: dict[str, dg.RawMetadataValue] = {
        "agent_outcome": outcome_words(s),  # first: "Materialized" above it says exported, this says how it went
        "agent": s.agent or "",
        "workflow": s.workflow or "",
        "run_status": s.status,
    }
    if s.start is not None:
        meta["start"] = dg.MetadataValue.timestamp(s.start)
    if s.end is not None:
        meta["end"] = dg.MetadataValue.timestamp(s.end)
    if s.duration_s is not None:
        meta["duration_s"] = s.duration_s
    meta |= {
        "event_counts": event_counts_text(s.source_events, s.event_log_rows),
        "tool_calls": f"{s.tool_calls} ({s.tool_calls_succeeded} succeeded, {s.tool_calls_failed} failed)",
        "models": ", ".join(s.models),
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
    }
    if s.cost_usd is not None:
        meta["cost_usd"] = _usd(s.cost_usd)
    if s.agents:
        meta["agents"] = ", ".join(s.agents)
    if s.conformance:
        meta["conformance"] = s.conformance
    if s.deviations:
        meta["deviations"] = dg.MetadataValue.md(deviations_markdown(s.deviations))
    if s.first_error:
        meta["first_error"] = s.first_error
    if s.errors:
        meta["errors"] = dg.MetadataValue.md(errors_markdown(s.errors, s.error_count))
    if s.timeline:
        meta["timeline"] = dg.MetadataValue.md(timeline_markdown(s.timeline, s.steps))
    return meta


def failure_observations(out: BatchOutcome) -> Iterator[dg.AssetObservation]:
    """The reason on the failed session's own partition page (the run's failure lists them all)."""
    for key, error in sorted(out.failures.items()):
        yield dg.AssetObservation(asset_key=EXPORT, partition=key, metadata={"export_failed": error})


def check_results(outcomes: list[CheckOutcome]) -> Iterator[dg.AssetCheckResult]:
    for outcome in outcomes:
        yield dg.AssetCheckResult(
            asset_key=EXPORT, check_name=outcome.name, passed=outcome.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={k: dg.MetadataValue.json(v) if isinstance(v, list) else v for k, v in outcome.metadata.items()},
        )


def batch_failure(out: BatchOutcome) -> dg.Failure | None:
    """The run's failure, naming each session that failed; None when the only ones left undone are sessions their
    source does not have (a key typed by hand, a session deleted since it was listed): nothing failed to export."""
    listed = sorted((k, e) for k, e in out.failures.items() if k not in out.not_found)
    if not listed:
        return None
    lines = "\n".join(f"- {error}" for _, error in listed[:MAX_LISTED_IN_METADATA])
    more = f"\n(and {len(listed) - MAX_LISTED_IN_METADATA} more)" if len(listed) > MAX_LISTED_IN_METADATA else ""
    return dg.Failure(
        description=f"{len(listed)} of {len(out.keys)} sessions failed "
        f"({len(out.exported)} exported):\n{lines}{more}",
        metadata={FAILED_SESSIONS_META: dg.MetadataValue.json(dict(listed))},
        allow_retries=False,
    )


def overview_metadata(
    ov: ProcessOverview, window_hours: float, process_map: ProcessMap, map_file: Path
) -> dict[str, dg.RawMetadataValue]:
    """What the agents did first (outcomes, failing activities, the sessions to open, by key), then the
    process map as an image (markdown with a data: URL; the same SVG is `map_file`) and the figures behind
    it as tables."""
    image = base64.b64encode(process_map.svg.encode()).decode("ascii")
    shown = f"{process_map.layout.activities_shown} of {process_map.layout.activities_total}"
    top_activities = ov.activities[:MAX_ACTIVITIES_LISTED]
    overall = ov.overall
    return {
        "outcomes": outcome_text(overall),
        "success_rate_pct": pct(overall.success_rate),
        "outcomes_by_agent": _outcome_table(ov.outcomes_by("agent"), "agent"),
        "outcomes_by_workflow": _outcome_table(ov.outcomes_by("workflow"), "workflow"),
        "cost_by_agent": _cost_table(ov.outcomes_by("agent"), "agent"),
        "cost_by_workflow": _cost_table(ov.outcomes_by("workflow"), "workflow"),
        "failing_activities": dg.MetadataValue.table(
            records=[dg.TableRecord({"activity": f.activity, "failed": f"{f.failures} ({pct(f.failures / f.count)} %)"
                                     if f.count else str(f.failures), "most_common_errors": top_errors(f.top_errors)})
                     for f in ov.failing],
            schema=dg.TableSchema(columns=[
                dg.TableColumn("activity", "string"), dg.TableColumn("failed", "string"),
                dg.TableColumn("most_common_errors", "string"),
            ]),
        ),
        # The sessions to open, each a link to its page: the failed ones, the slowest, the costliest.
        "failed_sessions": _session_links(ov.failed_sessions, "last error", lambda s: cell(s.error or "", 60)),
        "slowest_sessions": _session_links(
            ov.slowest, "s", lambda s: f"{s.duration_ms / 1000:.1f}" if s.duration_ms is not None else ""),
        "costliest_sessions": _session_links(
            ov.costliest, "USD", lambda s: f"{s.cost_usd:.4f}" if s.cost_usd is not None else ""),
        "conformance": conformance_text(ov.conformance),
        "deviations_by_agent": dg.MetadataValue.md(markdown_table(
            ("agent", "deviating", "rules broken", "sessions"),
            [(cell(a.agent, 30), f"{a.deviating} of {a.checked}", cell(", ".join(a.rules), 50), links_text(a.sessions))
             for a in ov.conformance if a.checked])),
        "deviations_by_rule": dg.MetadataValue.md(markdown_table(
            ("playbook", "rule", "sessions", "for example", "deviating"),
            [(cell(r.playbook, 30), r.rule, str(r.sessions), cell(r.example, 50), links_text(r.session_keys))
             for r in ov.deviations])),
        "process_map": dg.MetadataValue.md(
            f"**{shown} activities shown** (the busiest); the legend under the map explains its figures and ↻. "
            f"The same picture, to open at full size: `{map_file}`\n\n"
            f"![Directly-follows process map, {ov.cases} cases](data:image/svg+xml;base64,{image})"
        ),
        "process_map_file": dg.MetadataValue.path(str(map_file)),
        "activities_shown": shown,
        "window_hours": window_hours,
        "since": dg.MetadataValue.timestamp(ov.since),
        "cases": ov.cases,
        "events": ov.events,
        "activities_count": len(ov.activities),
        "distinct_paths": ov.distinct_paths,
        "variants": _variants_table(ov.variants),
        "activities": dg.MetadataValue.table(
            records=[dg.TableRecord({"activity": a.activity, "count": a.count, "cases": a.cases,
                                     "failure_rate": round(a.failure_rate, 4),
                                     "median_ms": round(a.median_ms) if a.median_ms is not None else None})
                     for a in top_activities],
            schema=dg.TableSchema(columns=[
                dg.TableColumn("activity", "string"), dg.TableColumn("count", "int"), dg.TableColumn("cases", "int"),
                dg.TableColumn("failure_rate", "float"), dg.TableColumn("median_ms", "int"),
            ]),
        ),
        "tokens_by_model": dg.MetadataValue.table(
            records=[dg.TableRecord({"model": m.model, "calls": m.calls,
                                     "tokens": f"{compact(m.input_tokens)}→{compact(m.output_tokens)}",
                                     "cost_usd": _usd(m.cost_usd), "unpriced_calls": m.unpriced_calls})
                     for m in ov.models],
            schema=dg.TableSchema(columns=[
                dg.TableColumn("model", "string"), dg.TableColumn("calls", "int"),
                dg.TableColumn("tokens", "string", description="input→output"),
                dg.TableColumn("cost_usd", "float"), dg.TableColumn("unpriced_calls", "int"),
            ]),
        ),
        "cost_usd": _usd(overall.cost_usd),
        "unpriced_models": dg.MetadataValue.json(sorted(m.model for m in ov.models if m.unpriced_calls)),
    }


def _outcome_table(outcomes: tuple[Outcome, ...], by: str) -> dg.TableMetadataValue:
    """How each agent's (or workflow's) sessions ended; narrow enough for the UI's metadata column (what they cost
    is `_cost_table`)."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord({by: o.name, "sessions": o.cases, "failed_pct": pct(o.failed / o.cases),
                                 "partial_pct": pct(o.partial / o.cases)}) for o in outcomes],
        schema=dg.TableSchema(columns=[
            dg.TableColumn(by, "string"), dg.TableColumn("sessions", "int"),
            dg.TableColumn("failed_pct", "float", description="its run ended on a failure"),
            dg.TableColumn("partial_pct", "float", description="recovered from failures"),
        ]),
    )


def _cost_table(outcomes: tuple[Outcome, ...], by: str) -> dg.TableMetadataValue:
    """What each agent's (or workflow's) model calls used and cost."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord({by: o.name, "tokens": f"{compact(o.input_tokens)}→{compact(o.output_tokens)}",
                                 "cost_usd": _usd(o.cost_usd)}) for o in outcomes],
        schema=dg.TableSchema(columns=[
            dg.TableColumn(by, "string"), dg.TableColumn("tokens", "string", description="input→output"),
            dg.TableColumn("cost_usd", "float"),
        ]),
    )


def _usd(cost: float | None) -> float | None:
    return None if cost is None else round(cost, 6)


def _session_links(
    sessions: tuple[SessionRef, ...], detail: str, value: Callable[[SessionRef], str]
) -> dg.MarkdownMetadataValue:
    """Sessions as links to their pages (one click, no key to copy), with their agent and a `detail`."""
    return dg.MetadataValue.md(markdown_table(
        ("session", "agent", detail),
        [(partition_link(s.session_key), cell(s.agent or "", 24), value(s)) for s in sessions], "sessions"))


def _variants_table(variants: tuple[Variant, ...]) -> dg.TableMetadataValue:
    """Each variant's activities, and how it differs from the most common one (+ more, − missing)."""
    top = set(variants[0].activities) if variants else set()

    def differs(v: Variant) -> str:
        more = [a for a in v.activities if a not in top]
        missing = sorted(top - set(v.activities))
        return "; ".join([*(f"+ {a}" for a in more), *(f"− {a}" for a in missing)])

    return dg.MetadataValue.table(
        records=[dg.TableRecord({"cases": v.cases, "activities": len(v.activities),
                                 "variant": " → ".join(v.activities),
                                 "differs_from_first": differs(v) if i else "(the most common)",
                                 "example_session": v.example}) for i, v in enumerate(variants)],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("cases", "int"), dg.TableColumn("activities", "int"), dg.TableColumn("variant", "string"),
            dg.TableColumn("differs_from_first", "string"), dg.TableColumn("example_session", "string"),
        ]),
    )
