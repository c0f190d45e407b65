"""Against a running `dagster dev` on the simulator (one server for the module):

- another service launches exports through Dagster's GraphQL API (docs/OPERATING.md, "On demand from another
  service"): one session with the documents the curl there sends, a batch with the `dagster-graphql`
  Python client; then, through GraphQL, the asked-for sessions are exported, a session that could not be
  fetched is under *Failed* with its reason, and an exported session stays up to date after a later run
  recorded the shared stage assets;
- a real browser (Playwright driving Debian's Chromium) shows what a person needs: a session's summary
  and timeline on its partition page, the process map of `process_overview`, the checks' results, and
  a manual launch of `signavio_export` that asks for nothing else. Screenshots go to `ui-screenshots/`;
- the console answers "what are my agents doing?": the outcome view of `process_overview`, whose failed
  sessions are links to their pages, a failed session's page with its outcome in words, its failed steps and
  errors, and the process map, in the UI within 1,200 px (screenshots in `ui-screenshots/`, named in every
  assertion) and as the SVG file, whose drawn text Chromium measures against the layout.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from dagster_graphql import DagsterGraphQLClient

if TYPE_CHECKING:
    from playwright.sync_api import Page

from telemetry_pipeline_tests.dagster_dev import (  # noqa: F401  (dagster_dev: fixture)
    LOCATION,
    REPOSITORY,
    ROOT,
    DagsterDev,
    dagster_dev,
    wait_for_run,
)

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; .ci/run installs it. Playwright never downloads a browser.
SCREENSHOTS = ROOT / "ui-screenshots"
UI_TIMEOUT_MS = 90_000

# docs/OPERATING.md's documents, verbatim.
ADD_SESSION = """
mutation AddSession($key: String!) {
  addDynamicPartition(
    repositorySelector: {repositoryLocationName: "telemetry_pipeline", repositoryName: "__repository__"}
    partitionsDefName: "agent_sessions", partitionKey: $key) {
    __typename
    ... on PythonError { message }
  }
}"""
EXPORT_SESSION = """
mutation ExportSession($key: String!) {
  launchRun(executionParams: {
    selector: {repositoryLocationName: "telemetry_pipeline", repositoryName: "__repository__",
               jobName: "export_sessions"}
    executionMetadata: {tags: [{key: "dagster/partition", value: $key}]}}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""
EXPORT_STATUS = """
query ExportStatus($key: String!) {
  assetNodes(assetKeys: [{path: ["signavio_export"]}]) {
    staleStatus(partition: $key)
    staleCauses(partition: $key) { reason }
    assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
  }
}"""


@pytest.mark.processes
def test_another_service_exports_a_session_and_a_batch(dagster_dev: DagsterDev):  # noqa: F811
    ids = dagster_dev.simulator.session_ids("extract")
    single, batch = f"extract:{ids[0]}", [f"extract:{i}" for i in ids[1:3]]
    missing = "extract:no-such-session"  # the source answers 404: nothing to export there, the others export

    # One session, as the curl in docs/OPERATING.md does it.
    added = dagster_dev.graphql(ADD_SESSION, {"key": single})["addDynamicPartition"]
    assert added["__typename"] == "AddDynamicPartitionSuccess", added
    launched = dagster_dev.graphql(EXPORT_SESSION, {"key": single})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert wait_for_run(dagster_dev, launched["run"]["runId"]) == "SUCCESS"
    console = (dagster_dev.home / "dagster_dev.log").read_text()  # what `make run`'s terminal shows
    assert " - INFO - export_sessions - " in console, "the run said what it did"
    assert " - DEBUG - " not in console, "not a line per Dagster event (python_log_level INFO)"

    # A batch, with the Python client: register the keys (appended in order, so they form one range),
    # then one run over the range.
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev.port)
    for key in [*batch, missing]:
        dagster_dev.graphql(ADD_SESSION, {"key": key})
    run_id = client.submit_job_execution(
        "export_sessions", repository_location_name=LOCATION, repository_name=REPOSITORY,
        tags={"dagster/asset_partition_range_start": batch[0], "dagster/asset_partition_range_end": missing},
    )
    assert wait_for_run(dagster_dev, run_id) == "SUCCESS", "a session its source does not have fails no run"

    node = dagster_dev.graphql(EXPORT_STATUS, {"key": single})["assetNodes"][0]
    statuses = node["assetPartitionStatuses"]
    assert set(statuses["materializedPartitions"]) == {single, *batch}
    assert missing not in statuses["materializedPartitions"] + statuses["failedPartitions"]
    # The batch run recorded raw_telemetry, telemetry_events and signavio_csv after `single` was
    # exported; that must not make `single` look out of date.
    assert node["staleStatus"] == "FRESH", node["staleCauses"]
    reason = dagster_dev.graphql(
        """query($key: String!) { assetNodes(assetKeys: [{path: ["signavio_export"]}]) {
             assetObservations(partitions: [$key], limit: 1) {
               metadataEntries { label ... on TextMetadataEntry { text } } } } }""",
        {"key": missing},
    )["assetNodes"][0]["assetObservations"][0]["metadataEntries"]
    assert reason[0]["label"] == "export_failed" and "no-such-session" in reason[0]["text"], reason


def export_range(dev: DagsterDev, keys: list[str]) -> None:
    client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
    for key in keys:
        dev.graphql(ADD_SESSION, {"key": key})
    run_id = client.submit_job_execution(
        "export_sessions", repository_location_name=LOCATION, repository_name=REPOSITORY,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    assert wait_for_run(dev, run_id) == "SUCCESS"


def require_chromium() -> None:
    """Before the test's work: without Debian's Chromium the test fails in CI and skips elsewhere, saying why."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")


@contextlib.contextmanager
def browser_page() -> Iterator[Page]:
    """Debian's Chromium, through Playwright, at 1600x1100."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1100})
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield page
        finally:
            browser.close()


def dismiss_welcome(page: Page) -> None:
    """A first visit opens a "Join the Dagster community" dialog over the page; skip it (remembered by
    the browser for the rest of the test)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_role("button", name="Skip").click(timeout=20_000)
    except PlaywrightTimeout:
        pass  # not shown this time


@pytest.mark.browser
@pytest.mark.processes
def test_the_ui_shows_sessions_process_map_and_checks(dagster_dev: DagsterDev):  # noqa: F811
    require_chromium()
    from playwright.sync_api import expect

    ids = dagster_dev.simulator.session_ids("agent_telemetry")
    keys = [f"agent_telemetry:{i}" for i in ids[:3]]
    export_range(dagster_dev, keys)
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev.port)
    overview_run = client.submit_job_execution(
        "__ASSET_JOB", repository_location_name=LOCATION, repository_name=REPOSITORY,
        asset_selection=["process_overview"],
    )
    assert wait_for_run(dagster_dev, overview_run) == "SUCCESS"

    SCREENSHOTS.mkdir(exist_ok=True)
    with browser_page() as page:
        # A session's partition page: its summary and its first steps as a table.
        page.goto(f"{dagster_dev.url}/assets/signavio_export?view=partitions&partition={quote(keys[0])}")
        expect(page.get_by_text("run_status").first).to_be_visible()
        dismiss_welcome(page)
        for label in ("agent", "workflow", "tool_calls", "models", "input_tokens", "duration_s", "timeline"):
            expect(page.get_by_text(label, exact=True).first).to_be_visible()
        timeline = page.locator("table").filter(has_text="activity").filter(has_text="User prompt").first
        expect(timeline).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "session_partition.png", full_page=True)

        # process_overview: the process map behind "Show Markdown".
        page.goto(f"{dagster_dev.url}/assets/process_overview")
        page.get_by_text("[Show Markdown]").first.click()
        picture = page.locator('img[src^="data:image/svg+xml;base64,"]').first
        expect(picture).to_be_visible()
        assert 0 < picture.evaluate("img => img.naturalWidth") <= 1200, "the SVG decoded, and fits the dialog"
        page.screenshot(path=SCREENSHOTS / "process_overview_map.png", full_page=True)
        page.keyboard.press("Escape")

        # The Checks tab: every check with its result.
        page.goto(f"{dagster_dev.url}/assets/signavio_export?view=checks")
        for name in ("agent_outcome", "event_id_unique", "events_have_case", "event_times_valid", "activity_alphabet",
                     "model_prices_known", "playbook_conformance"):
            expect(page.get_by_text(name).first).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "checks.png", full_page=True)

        # Materialising one session by hand asks for nothing else.
        page.goto(f"{dagster_dev.url}/assets/signavio_export")
        page.locator("button", has_text="Materialize").first.click()
        dialog = page.get_by_role("dialog").first
        expect(dialog).to_be_visible()
        expect(dialog.get_by_text(re.compile("agent_sessions|partition", re.I)).first).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "materialize_dialog.png", full_page=True)
        text = page.inner_text("body")
        assert "additional asset" not in text.lower(), "a launch of one session drags in no other asset"
        assert "backfill polic" not in text.lower(), "no notice about varying backfill policies"


@contextlib.contextmanager
def screenshot(page: Page, path: Path) -> Iterator[Path]:
    """`path` holds what the page showed when the block ended, passed or failed (assertions name it)."""
    try:
        yield path
    finally:
        page.screenshot(path=path, full_page=True)


OVERVIEW_MARKDOWN = """
{ assetNodes(assetKeys: [{path: ["process_overview"]}]) {
  assetMaterializations(limit: 1) { metadataEntries { label ... on MarkdownMetadataEntry { mdStr } } } } }"""

SESSION_TAGS = """
query($key: String!) { assetNodes(assetKeys: [{path: ["signavio_export"]}]) {
  assetMaterializations(partitions: [$key], limit: 1) { tags { key value } } } }"""

# Every text of the SVG: the layout's box (data-box) and the box Chromium drew the glyphs in.
DRAWN_TEXT = """() => [...document.querySelectorAll('text[data-box]')].map(t => {
  const b = t.getBBox();
  return {text: t.textContent, box: t.dataset.box.split(' ').map(Number), drawn: [b.x, b.y, b.width, b.height]};
})"""


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.browser
@pytest.mark.processes
def test_the_console_answers_what_the_agents_are_doing(dagster_dev: DagsterDev, tmp_path: Path):  # noqa: F811
    require_chromium()
    from playwright.sync_api import expect

    # The other tests of the module exported a few sessions; this one adds the rest of agent_telemetry's,
    # then refreshes the overview with the job the sensor uses for the first one.
    ids = dagster_dev.simulator.session_ids("agent_telemetry")
    export_range(dagster_dev, [f"agent_telemetry:{i}" for i in ids[3:]])
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev.port)
    run_id = client.submit_job_execution(
        "refresh_process_overview", repository_location_name=LOCATION, repository_name=REPOSITORY,
    )
    assert wait_for_run(dagster_dev, run_id) == "SUCCESS"
    entries = dagster_dev.graphql(OVERVIEW_MARKDOWN)["assetNodes"][0]["assetMaterializations"][0]["metadataEntries"]
    markdown = {e["label"]: e["mdStr"] for e in entries if "mdStr" in e}
    link = r"\[([^\]]+)\]\(/assets/signavio_export\?view=partitions&partition=[^)]+\)"
    failed = re.findall(rf"\| {link} \| [^|]* \| ([^|]*) \|", markdown["failed_sessions"])
    assert failed, f"the simulator's sessions include failed ones: {markdown['failed_sessions']}"
    session = {"session_key": failed[0][0], "last_error": failed[0][1].strip()}
    map_file = dagster_dev.home / "overview" / "process_map.svg"
    tags = dagster_dev.graphql(SESSION_TAGS, {"key": session["session_key"]})["assetNodes"][0]
    tagged = {t["key"]: t["value"] for t in tags["assetMaterializations"][0]["tags"]}
    assert tagged.get("outcome") == "failed" and "agent" in tagged, f"the session's tags: {tagged}"

    with browser_page() as page:
        # The outcome view: how the agents did, overall, per agent and workflow, and what failed.
        page.goto(f"{dagster_dev.url}/assets/process_overview")
        dismiss_welcome(page)
        with screenshot(page, SCREENSHOTS / "outcome_view.png") as shot:
            for label in ("outcomes", "success_rate_pct", "outcomes_by_agent", "outcomes_by_workflow",
                          "failing_activities", "slowest_sessions", "failed_sessions"):
                expect(page.get_by_text(label, exact=True).first, f"{label}: see {shot}").to_be_visible()
            expect(page.get_by_text(re.compile(r"\d+ sessions: \d+ completed")).first,
                   f"the outcome counts: see {shot}").to_be_visible()
            # The failed session is a link, one click from here to its page.
            link = page.get_by_role("link", name=session["session_key"]).first
            expect(link, f"a failed session's link: see {shot}").to_be_visible()
        link.click()

        # That failed session's own page: how the agent's run went in words first, its failed steps in the timeline
        # (in bold, with what came before and after), its errors with their messages.
        with screenshot(page, SCREENSHOTS / "failed_session.png") as shot:
            expect(page, f"the link leads to the session's page: see {shot}").to_have_url(
                re.compile(rf"/assets/signavio_export\?.*partition={re.escape(session['session_key'])}$"))
            expect(page.get_by_text("run_status").first, f"see {shot}").to_be_visible()
            expect(page.get_by_text(re.compile("✗ the agent's run failed")).first, f"see {shot}").to_be_visible()
            for label in ("errors", "first_error", "event_counts", "timeline"):
                expect(page.get_by_text(label, exact=True).first, f"{label}: see {shot}").to_be_visible()
            errors = page.locator("table").filter(has_text="activity").filter(has_text="error").first
            expect(errors, f"the errors table: see {shot}").to_be_visible()
            message = session["last_error"].rstrip("…")[:40]
            expect(page.get_by_text(message).first, f"the error's message {message!r}: see {shot}") \
                .to_be_visible()
            timeline = page.locator("table").filter(has_text="activity").filter(has_text="ms").last
            failed_rows = timeline.locator("tr").filter(has=page.locator("strong", has_text="failed"))
            expect(failed_rows.first, f"the timeline shows the failed steps: see {shot}").to_be_visible()

        # The map, in the UI: behind "Show Markdown", a picture that fits the dialog.
        page.goto(f"{dagster_dev.url}/assets/process_overview")
        with screenshot(page, SCREENSHOTS / "process_map_ui.png") as shot:
            page.get_by_text("[Show Markdown]").first.click()
            picture = page.locator('img[src^="data:image/svg+xml;base64,"]').first
            expect(picture, f"see {shot}").to_be_visible()
            width = picture.evaluate("img => img.naturalWidth")
            assert width <= 1200, f"the map is {width} px wide: see {shot}"
            box = picture.bounding_box()
            dialog = page.get_by_role("dialog").first.bounding_box()
            assert box and dialog and box["x"] >= dialog["x"] and box["x"] + box["width"] <= dialog["x"] + \
                dialog["width"], f"the whole picture is inside the dialog: see {shot}"
            expect(page.get_by_text(re.compile(r"\d+ of \d+ activities shown")).first,
                   f"see {shot}").to_be_visible()
        page.keyboard.press("Escape")

        # The same picture as the file: the text Chromium drew stays inside the layout's boxes, and
        # neither the boxes nor the drawn text overlap.
        # (inline in a page: Chromium measures it the same, and screenshots a page, not a bare SVG document)
        page.set_content(f'<html><body style="margin:0">{map_file.read_text()}</body></html>')
        with screenshot(page, SCREENSHOTS / "process_map_file.png") as shot:
            texts = page.evaluate(DRAWN_TEXT)
            assert len(texts) > 5, f"boxes, arc labels, title and legend: see {shot}"
            for t in texts:
                (x, y, w, h), (dx, dy, dw, dh) = t["box"], t["drawn"]
                assert x - 1 <= dx and y - 1 <= dy and dx + dw <= x + w + 1 and dy + dh <= y + h + 1, \
                    f"{t['text']!r} drawn at {t['drawn']}, outside its box {t['box']}: see {shot}"
            for i, a in enumerate(texts):
                for b in texts[i + 1:]:
                    for key in ("box", "drawn"):
                        assert not overlaps(a[key], b[key]), \
                            f"{a['text']!r} and {b['text']!r} overlap ({key}): see {shot}"
