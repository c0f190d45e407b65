"""Against a running `dagster dev` on the simulator (one server for the module):

- another service launches exports through Dagster's GraphQL API (README, "On demand from another
  service"): one session with the documents the README's curl sends, a batch with the `dagster-graphql`
  Python client; then, through GraphQL, the asked-for sessions are exported, a session that could not be
  fetched is under *Failed* with its reason, and an exported session stays up to date after a later run
  recorded the shared stage assets;
- a real browser (Playwright driving Debian's Chromium) shows what a person needs: a session's summary
  and timeline on its partition page, the process map of `process_overview`, the checks' results, and
  a manual launch of `signavio_export` that asks for nothing else. Screenshots go to `ui-screenshots/`.
"""

from __future__ import annotations

import os
import re
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

# The README's documents, verbatim.
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


def test_another_service_exports_a_session_and_a_batch(dagster_dev: DagsterDev):  # noqa: F811
    ids = dagster_dev.simulator.session_ids("extract")
    single, batch = f"extract:{ids[0]}", [f"extract:{i}" for i in ids[1:3]]
    missing = "extract:no-such-session"  # the source answers 404: that session fails, the others export

    # One session, as the README's curl does it.
    added = dagster_dev.graphql(ADD_SESSION, {"key": single})["addDynamicPartition"]
    assert added["__typename"] == "AddDynamicPartitionSuccess", added
    launched = dagster_dev.graphql(EXPORT_SESSION, {"key": single})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert wait_for_run(dagster_dev, launched["run"]["runId"]) == "SUCCESS"

    # A batch, with the Python client: register the keys (appended in order, so they form one range),
    # then one run over the range.
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev.port)
    for key in [*batch, missing]:
        dagster_dev.graphql(ADD_SESSION, {"key": key})
    run_id = client.submit_job_execution(
        "export_sessions", repository_location_name=LOCATION, repository_name=REPOSITORY,
        tags={"dagster/asset_partition_range_start": batch[0], "dagster/asset_partition_range_end": missing},
    )
    assert wait_for_run(dagster_dev, run_id) == "FAILURE", "one session of the batch failed, so the run says so"

    node = dagster_dev.graphql(EXPORT_STATUS, {"key": single})["assetNodes"][0]
    statuses = node["assetPartitionStatuses"]
    assert set(statuses["materializedPartitions"]) == {single, *batch}
    assert statuses["failedPartitions"] == [missing], "the failed session is under the Failed filter"
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


def dismiss_welcome(page: Page) -> None:
    """A first visit opens a "Join the Dagster community" dialog over the page; skip it (remembered by
    the browser for the rest of the test)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_role("button", name="Skip").click(timeout=20_000)
    except PlaywrightTimeout:
        pass  # not shown this time


def test_the_ui_shows_sessions_process_map_and_checks(dagster_dev: DagsterDev):  # noqa: F811
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

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
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1100})
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
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
            picture = page.locator('img[src^="data:image/png;base64,"]').first
            expect(picture).to_be_visible()
            assert picture.evaluate("img => img.naturalWidth") > 300, "the PNG decoded in the browser"
            page.screenshot(path=SCREENSHOTS / "process_overview_map.png", full_page=True)
            page.keyboard.press("Escape")

            # The Checks tab: every check with its result.
            page.goto(f"{dagster_dev.url}/assets/signavio_export?view=checks")
            for name in ("event_id_unique", "events_have_case", "event_times_valid", "activity_alphabet"):
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
        finally:
            browser.close()
