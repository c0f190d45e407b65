"""Agent governance (issue 31): each session checked against its agent's playbook at export time.

The verdicts are compared with `expected_verdicts`, a plain reading of the rules (docs/INTERFACE.md, "Playbooks")
over the event log the pipeline uploaded, one case at a time: what the set-based SQL found must be what a person
applying the playbook to each case by hand finds. Each rule the simulator's playbook uses is broken by some
sessions and kept by others (asserted), so no rule passes for want of data.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from telemetry_pipeline.defs.assets import process_overview
from telemetry_pipeline.instance.keys import SIGNAVIO_EXPORT_KEY as EXPORT
from telemetry_pipeline.policy.playbooks import RULES, Playbook, PlaybookError, load_playbooks
from telemetry_pipeline.settings import Secret
from telemetry_pipeline.simulate import SimulationConfig, Simulator
from telemetry_pipeline_tests.conftest import Pipeline, uploads_by_table
from telemetry_pipeline_tests.test_mining_log import TRACES

# For the simulator's agents (`simulate/vocabulary.py`): the support agent may not e-mail customers itself, the
# coding agent must read before it patches and must run the tests, research has a budget, finance may not fail a
# tool call. The sales agent has no playbook: its sessions stay `unchecked`.
SIMULATOR_PLAYBOOKS = """\
playbooks:
  - name: support-policy
    match: {agent: support_agent}
    allowed_tools: [search_knowledge_base, lookup_customer, create_ticket]
    allowed_models: [gpt-4o-mini]
  - name: coding-policy
    match: {agent: coding_agent, workflow: bug_fix}
    precedence: [["Call tool git_diff", "Call tool apply_patch"]]
    required_activities: ["Call tool run_tests"]
  - name: research-budget
    match: {agent: research_agent}
    max_cost_usd: 0.03
    max_duration_s: 40
    max_steps: 14
  - name: finance-policy
    match: {workflow: invoice_reconciliation}
    max_tool_errors: 0
    forbidden_activities: ["Call tool post_journal_entry"]
"""
SIMULATION = SimulationConfig(sessions=60, events_per_session=20, seed=31)


@dataclass
class Verdict:
    conformance: str = "unchecked"
    rules: set[tuple[str, str]] = field(default_factory=set)  # (playbook, rule)
    events: dict[str, set[str]] = field(default_factory=dict)  # event_id -> rules it broke


def expected_verdicts(playbooks: tuple[Playbook, ...], tables: dict[str, list[dict[str, str]]],
                      dataset: str = "agent_telemetry") -> dict[str, Verdict]:
    """Each case's verdict by the rules as documented, applied case by case to the uploaded tables."""
    runs = {r["agent_run_id"]: r for r in tables[f"{dataset}_runs"]}
    events: dict[str, list[dict[str, str]]] = {case: [] for case in runs}
    for e in tables[f"{dataset}_events"]:  # in the table's order: by time, then the source's order
        events[e["case_id"]].append(e)
    verdicts = {}
    for case, run in runs.items():
        matching = [p for p in playbooks if p.agent in (None, run["agent_name"])
                    and p.workflow in (None, run["workflow_name"])]
        breaches = [breach for p in matching for breach in _breaches(p, run, events[case])]
        verdict = Verdict("deviating" if breaches else "conforming" if matching else "unchecked")
        for playbook, rule, event_id in breaches:
            verdict.rules.add((playbook, rule))
            if event_id is not None:
                verdict.events.setdefault(event_id, set()).add(rule)
        verdicts[case] = verdict
    return verdicts


def _breaches(p: Playbook, run: dict[str, str], events: list[dict[str, str]]) -> Iterator[tuple[str, str, str | None]]:
    """(playbook, rule, the event that broke it or None) for each rule of `p` the case breaks."""
    seen: set[str] = set()
    for e in events:
        if p.allowed_tools is not None and e["tool_name"] and e["tool_name"] not in p.allowed_tools:
            yield p.name, "allowed_tools", e["event_id"]
        if p.allowed_models is not None and e["model"] and e["model"] not in p.allowed_models:
            yield p.name, "allowed_models", e["event_id"]
        if e["activity"] in p.forbidden_activities:
            yield p.name, "forbidden_activities", e["event_id"]
        if any(second == e["activity"] and first not in seen for first, second in p.precedence):
            yield p.name, "precedence", e["event_id"]
        seen.add(e["activity"])
    if any(a not in seen for a in p.required_activities):
        yield p.name, "required_activities", None
    figures = {
        "max_steps": len(events),
        "max_cost_usd": sum(float(e["cost_usd"] or 0) for e in events),
        "max_duration_s": int(run["latency_ms"] or 0) / 1000,
        "max_tool_errors": sum(1 for e in events if e["tool_name"] and e["status"] == "failed"),
    }
    for rule, value in figures.items():
        bound = getattr(p, rule)
        if bound is not None and value > bound + 1e-9:
            yield p.name, rule, None


def found_verdicts(tables: dict[str, list[dict[str, str]]], dataset: str = "agent_telemetry") -> dict[str, Verdict]:
    """What the pipeline uploaded: each case's `conformance` and `deviations`, each event's `deviation`."""
    verdicts = {}
    for run in tables[f"{dataset}_runs"]:
        listed = json.loads(run["deviations"]) if run["deviations"] else []
        assert all(set(d) == {"playbook", "rule", "detail"} for d in listed), "nothing was cut from these cells"
        assert int(run["deviation_count"]) >= len(listed)
        verdicts[run["agent_run_id"]] = Verdict(run["conformance"], {(d["playbook"], d["rule"]) for d in listed})
    for e in tables[f"{dataset}_events"]:
        if e["deviation"]:
            verdicts[e["case_id"]].events[e["event_id"]] = set(e["deviation"].split(", "))
    return verdicts


def latest_rows(tables: dict[str, list[dict[str, str]]]) -> dict[str, list[dict[str, str]]]:
    """Each table as Signavio holds it after every upload: the last row of each primary key."""
    keys = {"agent_telemetry_runs": "agent_run_id", "agent_telemetry_events": "event_id"}
    return {name: list({row[keys[name]]: row for row in rows}.values()) for name, rows in tables.items()}


def markdown_rows(table: str) -> list[list[str]]:
    """The cells of a markdown table's rows (after its header and rule)."""
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in table.splitlines()[2:]]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def simulated(pipeline: Pipeline, tmp_path: Path) -> Iterator[tuple[Pipeline, Path]]:
    playbooks = write(tmp_path / "playbooks.yaml", SIMULATOR_PLAYBOOKS)
    with Simulator(SIMULATION) as sim:
        pipeline.configure(playbooks_file=playbooks, sources={"extract_url": sim.url, "agent_telemetry_url": sim.url,
                                                              "agent_name": None})
        yield pipeline, playbooks


def test_the_simulators_sessions_are_checked_against_their_agents_playbooks(
    simulated: tuple[Pipeline, Path], instance: dg.DagsterInstance, home: Path,
):
    pipeline, path = simulated
    assert pipeline.cli("discover")[0] == 0
    code, out = pipeline.cli("export", "--pending")
    assert code == 0 and out["exported_count"] == SIMULATION.sessions, "a deviation never blocks an upload"
    tables = uploads_by_table(home)
    playbooks = load_playbooks(path)
    expected, found = expected_verdicts(playbooks, tables), found_verdicts(tables)
    assert found == expected

    # Every rule is broken by some of the sessions it checks and kept by others; the sales agent has no playbook.
    runs = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
    for p in playbooks:
        checked = [v for c, v in expected.items() if p.agent in (None, runs[c]["agent_name"])
                   and p.workflow in (None, runs[c]["workflow_name"])]
        rules = [r for r in RULES if getattr(p, r) not in (None, ())]
        for rule in rules:
            broke = sum(1 for v in checked if (p.name, rule) in v.rules)
            assert 0 < broke < len(checked), (p.name, rule, broke, len(checked))
    assert {rule for v in expected.values() for _, rule in v.rules} == set(RULES), "every rule is exercised"
    assert {v.conformance for v in expected.values()} == {"conforming", "deviating", "unchecked"}
    assert {runs[c]["agent_name"] for c, v in expected.items() if v.conformance == "unchecked"} == {"sales_agent"}

    # The details name what broke the rule, and the figure against its limit.
    details = [d for r in runs.values() for d in json.loads(r["deviations"] or "[]")]
    assert any(d["detail"].startswith("tool send_email is not allowed") for d in details)
    assert any(d["detail"] == "Call tool run_tests never happened" for d in details)
    assert any(d["rule"] == "max_cost_usd" and d["detail"].endswith("over the limit of 0.03") for d in details)
    assert all(runs[c]["deviations"] == "[]" for c, v in expected.items() if v.conformance == "conforming")
    assert all(runs[c]["deviations"] == "" and runs[c]["deviation_count"] == "0"
               for c, v in expected.items() if v.conformance == "unchecked")

    # The console: the check warns, names the deviating sessions; the overview per agent and per rule.
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(EXPORT, "playbook_conformance"), limit=1)
    evaluation = history[0].event.dagster_event.event_specific_data
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.WARN)
    deviating = {f"{runs[c]['source']}:{c}" for c, v in expected.items() if v.conformance == "deviating"}
    assert set(evaluation.metadata["sessions_sample"].value) <= deviating
    overview = dg.materialize([process_overview], instance=instance, resources=pipeline.defs().resources) \
        .asset_materializations_for_node("process_overview")[0].metadata
    by_agent = {row[0]: row for row in markdown_rows(overview["deviations_by_agent"].value)}
    for agent in ("support_agent", "coding_agent", "research_agent", "finance_agent"):
        cases = [c for c in expected if runs[c]["agent_name"] == agent]
        deviating_cases = sorted(f"{runs[c]['source']}:{c}" for c in cases if expected[c].conformance == "deviating")
        assert by_agent[agent][1] == f"{len(deviating_cases)} of {len(cases)}"
        assert by_agent[agent][3].startswith(f"[{deviating_cases[0]}](/assets/signavio_export?view=partitions")
    assert "sales_agent" not in by_agent, "no playbook matches it: nothing to show"
    by_rule = {(row[0], row[1]): row for row in markdown_rows(overview["deviations_by_rule"].value)}
    assert set(by_rule) == {rule for v in expected.values() for rule in v.rules}
    for (playbook, rule), row in by_rule.items():
        assert int(row[2]) == sum(1 for v in expected.values() if (playbook, rule) in v.rules)
    total_checked = sum(1 for v in expected.values() if v.conformance != "unchecked")
    assert overview["conformance"].value.startswith(f"{len(deviating)} of {total_checked} sessions checked")

    # A session's own page: its verdict, what it broke, and the tag to filter by.
    key = sorted(deviating)[0]
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=EXPORT, asset_partitions=[key]), limit=1).records
    materialization = record.event_log_entry.asset_materialization
    assert materialization.metadata["conformance"].value == "deviating"
    assert "| playbook | rule | detail |" in materialization.metadata["deviations"].value
    assert materialization.tags["conformance"] == "deviating"


@pytest.mark.parametrize("store", ["duckdb", "postgres"])
def test_a_changed_playbook_applies_to_later_exports_and_recheck_reuploads_from_the_warehouse(
    simulated: tuple[Pipeline, Path], instance: dg.DagsterInstance, home: Path, store: str,
    request: pytest.FixtureRequest,
):
    """`recheck` takes the sessions as the warehouse holds them (the source is gone by then), checks them against
    the playbooks as they are now, and uploads both tables again: Signavio's rows, upserted by key, say the same
    as a first export with the new playbooks would."""
    pipeline, path = simulated
    if store == "postgres":
        pipeline.configure(warehouse={"url": Secret(request.getfixturevalue("postgres_url"))})
    assert pipeline.cli("discover")[0] == 0
    assert pipeline.cli("export", "--pending")[0] == 0
    before = latest_rows(uploads_by_table(home))
    assert any(r["conformance"] == "deviating" for r in before["agent_telemetry_runs"])

    relaxed = write(path, """\
        playbooks:
          - name: support-policy
            match: {agent: support_agent}
            allowed_tools: [search_knowledge_base, lookup_customer, create_ticket, send_email]
          - name: sales-policy
            match: {agent: sales_agent}
            allowed_models: [llama-3.1-70b]
        """)
    pipeline.configure(sources={"extract_url": "http://127.0.0.1:9/gone", "agent_telemetry_url": None})
    code, out = pipeline.cli("recheck", "--all")
    assert code == 0 and out["exported_count"] == SIMULATION.sessions, out

    after = latest_rows(uploads_by_table(home))
    assert len(after["agent_telemetry_runs"]) == SIMULATION.sessions, "upserts by key: no case twice"
    assert found_verdicts(after) == expected_verdicts(load_playbooks(relaxed), after)
    verdicts = {r["agent_name"]: set() for r in after["agent_telemetry_runs"]}
    for r in after["agent_telemetry_runs"]:
        verdicts[r["agent_name"]].add(r["conformance"])
    assert verdicts["support_agent"] == {"conforming"} and verdicts["coding_agent"] == {"unchecked"}
    assert "deviating" in verdicts["sales_agent"], "gpt-4o-mini is no longer allowed there"
    # Only the verdict columns changed: the event log is the one exported before.
    unchanged = ("activity", "event_time", "resource", "tool_name", "model", "cost_usd", "attributes")
    assert {e["event_id"]: [e[c] for c in unchanged] for e in after["agent_telemetry_events"]} == {
        e["event_id"]: [e[c] for c in unchanged] for e in before["agent_telemetry_events"]}

    [record] = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EXPORT), limit=1).records
    assert record.event_log_entry.asset_materialization.metadata["rechecked"].value is True


def test_the_real_multi_agent_traces_are_checked_per_agent(pipeline: Pipeline, home: Path, tmp_path: Path):
    """The five frameworks' traces (issue 30): the billing specialist's refund must follow an account lookup and
    only the triage agent may hand off. The first session of each file fails its refund; the playbook forbids
    nothing the second does."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for trace in TRACES.glob("*.jsonl"):
        (inbox / trace.name).write_bytes(trace.read_bytes())
    playbooks = write(tmp_path / "playbooks.yaml", """\
        playbooks:
          - name: refunds
            precedence: [["Call tool lookup_account", "Call tool refund_payment"]]
            required_activities: ["Call tool refund_payment"]
            max_tool_errors: 0
            allowed_models: [gpt-4o-2024-08-06, gpt-4o-mini-2024-07-18]
          - name: triage-agent
            match: {agent: Triage Agent}
            allowed_tools: [lookup_account, refund_payment, ask_billing_specialist]
            forbidden_activities: ["Call tool delete_account"]
        """)
    pipeline.configure(playbooks_file=playbooks, sources={"otlp_dir": inbox, "extract_url": None,
                                                          "agent_telemetry_url": None})
    assert pipeline.cli("discover")[0] == 0
    assert pipeline.cli("export", "--pending")[0] == 0
    tables = uploads_by_table(home)
    assert found_verdicts(tables) == expected_verdicts(load_playbooks(playbooks), tables)
    runs = {r["agent_run_id"]: r for r in tables["agent_telemetry_runs"]}
    failed = {c: r for c, r in runs.items() if "-0001-" in c}
    assert len(failed) == 5 and all(r["conformance"] == "deviating" for r in failed.values())
    assert all([d["rule"] for d in json.loads(r["deviations"])] == ["max_tool_errors"] for r in failed.values()), \
        "the failed refund is the only breach: each refund followed a lookup"
    assert all(r["conformance"] == "conforming" for c, r in runs.items() if "-0002-" in c)


BAD_FILES: dict[str, tuple[str, str]] = {  # name -> (file text, what the error must name)
    "not yaml": ("playbooks: [\n  - name: x\n    match: {agent: a", "not YAML"),
    "no list": ("rules: []\n", "expected one key, `playbooks:`"),
    "unknown rule": ("playbooks:\n  - name: p1\n    allowed_tool: [x]\n", "playbook 'p1': rule 'allowed_tool'"),
    "list of text": ("playbooks:\n  - name: p2\n    allowed_tools: search\n", "playbook 'p2': rule 'allowed_tools'"),
    "bad pair": ("playbooks:\n  - name: p3\n    precedence: [[a, b, c]]\n", "playbook 'p3': rule 'precedence'"),
    "negative": ("playbooks:\n  - name: p4\n    max_cost_usd: -1\n", "playbook 'p4': rule 'max_cost_usd'"),
    "fraction": ("playbooks:\n  - name: p5\n    max_steps: 2.5\n", "playbook 'p5': rule 'max_steps'"),
    "boolean": ("playbooks:\n  - name: p6\n    max_tool_errors: true\n", "playbook 'p6': rule 'max_tool_errors'"),
    "match": ("playbooks:\n  - name: p7\n    match: {team: a}\n", "playbook 'p7': rule 'match'"),
    "no name": ("playbooks:\n  - allowed_tools: [x]\n", "playbook #1: `name`"),
    "twice": ("playbooks:\n  - name: same\n  - name: same\n", "playbook 'same': the name is used more than once"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_playbooks_file_is_refused_where_definitions_load_and_by_check(
    pipeline: Pipeline, tmp_path: Path, case: str,
):
    text, named = BAD_FILES[case]
    path = write(tmp_path / "playbooks.yaml", text)
    with pytest.raises(PlaybookError) as refused:
        load_playbooks(path)
    assert str(path) in str(refused.value) and named in str(refused.value), str(refused.value)

    pipeline.configure(playbooks_file=path)
    with pytest.raises(PlaybookError, match=re.escape(named)):
        pipeline.defs()
    code, out = pipeline.cli("check")
    [check] = [c for c in out["checks"] if c["name"] == "playbooks"]
    assert code == 1 and not out["healthy"] and not check["ok"] and named in check["detail"]
    assert all(c["ok"] for c in out["checks"] if c["name"] != "playbooks"), "the other checks still ran"
    code, out = pipeline.cli("export", "extract:any")
    assert code == 2 and named in out["error"], "no export runs with a playbook it cannot read"


def test_a_missing_file_is_refused_and_unseen_names_are_warnings(
    pipeline: Pipeline, tmp_path: Path, source_double: Any, caplog: pytest.LogCaptureFixture,
):
    pipeline.configure(playbooks_file=tmp_path / "nowhere.yaml")
    code, out = pipeline.cli("check")
    [check] = [c for c in out["checks"] if c["name"] == "playbooks"]
    assert code == 1 and "nowhere.yaml: cannot be read" in check["detail"]

    key = source_double.add_good("extract", "seen", n_tools=2)
    assert pipeline.cli("export", key)[0] == 2, "nothing is exported with a playbooks file it cannot read"
    pipeline.configure(playbooks_file=None)
    assert pipeline.cli("export", key)[0] == 0
    path = write(tmp_path / "playbooks.yaml", """\
        playbooks:
          - name: typo
            allowed_tools: [tool_0, tool_1, tol_3]
            forbidden_activities: ["Call tool delete_everything"]
            allowed_models: [gpt-4o]
        """)
    pipeline.configure(playbooks_file=path)
    code, out = pipeline.cli("check")
    [check] = [c for c in out["checks"] if c["name"] == "playbooks"]
    assert code == 0 and check["ok"], "an unseen name is a warning, not an error"
    assert check["warnings"] == [
        "playbook 'typo': rule 'allowed_tools' names the tool 'tol_3', which no exported session has",
        "playbook 'typo': rule 'forbidden_activities' names the activity 'Call tool delete_everything', "
        "which no exported session has",
    ]
    assert "tol_3" in caplog.text
