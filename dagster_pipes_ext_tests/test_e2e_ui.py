"""End to end in the Dagster UI: real ``dagster dev`` on example_project, headless Chromium.

One ``dagster dev`` (webserver + daemon, fresh DAGSTER_HOME, free 127.0.0.1 port) serves all
scenarios. Every launch and the termination are real clicks in the UI; what the UI shows is
checked there, and the details are cross-checked through the webserver's GraphQL API.

Screenshots go to ``$DAGSTER_PIPES_EXT_E2E_ARTIFACTS`` (default ``<repo>/e2e-artifacts/``);
``DAGSTER_PIPES_EXT_E2E_UPDATE_DOCS_IMAGE=1`` also rewrites ``docs/images/ui-materialization.png``.
Without Chromium or Playwright the tests skip, unless ``DAGSTER_PIPES_EXT_E2E_REQUIRED=1``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dagster_pipes_ext_tests.support.browser import (
    artifacts_dir,
    launch_chromium,
    require_browser,
    save_compact_png,
)
from dagster_pipes_ext_tests.support.dagster_dev import REPO_ROOT, DagsterDev, start_dagster_dev
from dagster_pipes_ext_tests.support.processes import wait_for

try:
    from playwright.sync_api import Browser, Page, expect
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # require_browser() then skips (or fails, when the browser is required)
    pass

# Module fixtures (dagster dev start-up, ~30-60 s; shut-down) count towards a test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DOCS_IMAGE = REPO_ROOT / "docs" / "images" / "ui-materialization.png"
UPDATE_DOCS_IMAGE_ENV = "DAGSTER_PIPES_EXT_E2E_UPDATE_DOCS_IMAGE"

ORDERS_ASSETS = ["raw_orders", "cleaned_orders", "customer_summary", "product_summary"]
CLIENT_METADATA = ("dask/task_key", "dask/worker", "dask/dashboard_url", "dask/exit_code")
PARTITION = "2024-01-05"
RUN_TIMEOUT_MS = 240_000
RUN_END = re.compile(r"^(Success|Failure|Canceled)$")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _browser_available() -> None:
    require_browser()


@pytest.fixture(scope="module")
def artifacts(_browser_available: None) -> Path:
    """The screenshot folder, without failure screenshots of earlier sessions."""
    path = artifacts_dir(REPO_ROOT)
    for stale in path.glob("FAILED-*.png"):
        stale.unlink()
    return path


@pytest.fixture(scope="module")
def dagster_dev(
    _browser_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterDev]:
    """``dagster dev -m example_project.definitions`` with its code location loaded."""
    dev = start_dagster_dev(tmp_path_factory.mktemp("e2e_ui"))
    try:
        dev.wait_until_loaded(timeout=180)
        dev.mark_community_dialog_seen()
        yield dev
    finally:
        killed = dev.stop()
        if killed:
            print("dagster dev: SIGKILLed after SIGINT and a grace period:\n" + "\n".join(killed))
    left = [f"{p.pid}: {' '.join(p.cmdline())[:200]}" for p in dev.processes_with_home()]
    assert not left, "processes of dagster dev still running:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def browser(_browser_available: None) -> Iterator[Browser]:
    # The UI polls for run updates; give each expect() more than its default 5 s on a busy box.
    expect.set_options(timeout=30_000)
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def page(
    browser: Browser, dagster_dev: DagsterDev, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A fresh 1280x800 page on the webserver; a screenshot is saved if the test fails."""
    context = browser.new_context(base_url=dagster_dev.url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(60_000)
    context.set_default_navigation_timeout(60_000)
    tab = context.new_page()
    failed_before = request.session.testsfailed
    try:
        yield tab
        if request.session.testsfailed > failed_before:
            try:
                tab.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"))
            except PlaywrightError as e:
                print(f"no failure screenshot: {e}")
    finally:
        context.close()


# -- UI helpers -------------------------------------------------------------------------------


def _settle(page: Page) -> None:
    """Give icons (CSS masks loaded on demand) a moment to arrive before a screenshot."""
    try:
        page.wait_for_load_state("networkidle", timeout=5_000)
    except PlaywrightError:  # the UI polls; a busy page is still worth a picture
        pass


def _shot(page: Page, artifacts: Path, name: str) -> None:
    _settle(page)
    # Fast-forward CSS transitions (dialogs fade in) so the picture shows their end state.
    page.screenshot(path=str(artifacts / f"{name}.png"), animations="disabled")


def _open_launched_run(page: Page) -> str:
    """Wait for the "Launched run" toast, follow its View link; return the run id."""
    toast = page.locator("[data-sonner-toast]").filter(has_text="Launched run")
    toast.wait_for(timeout=60_000)
    view = toast.get_by_role("link", name="View")
    href = view.get_attribute("href") or ""
    match = re.fullmatch(r"/runs/([0-9a-f-]{36})", href)
    assert match, f"unexpected run link {href!r}"
    try:
        view.click(timeout=5_000)
    except PlaywrightError:  # the toast lives ~4 s: a slow machine may miss it
        page.goto(href)
    page.wait_for_url(f"**{href}*")
    page.mouse.move(640, 250)  # off the toast, which stays while hovered
    return match[1]


def _wait_for_run_end(page: Page, timeout_ms: int = RUN_TIMEOUT_MS) -> str:
    """On a run's page, wait until its status tag shows an end state; return it."""
    status = page.get_by_text(RUN_END).first
    status.wait_for(timeout=timeout_ms)
    return status.inner_text().strip()


def _metadata_rows(page: Page) -> dict[str, str]:
    """The metadata table shown for the selected event on an asset's Events tab."""
    rows = {}
    for row in page.get_by_role("row").all():
        cells = [c.strip() for c in row.get_by_role("cell").all_inner_texts()]
        if len(cells) >= 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def _assert_client_metadata(values: dict, run_id: str, step: str) -> None:
    """PipesDaskClient's own launch facts, as reported for one step of ``run_id``."""
    missing = [k for k in CLIENT_METADATA if k not in values]
    assert not missing, f"client metadata missing: {missing} in {sorted(values)}"
    assert str(values["dask/task_key"]).startswith(f"dagster-pipes-{step}-{run_id[:8]}-")
    assert re.match(r"^(inproc|tcp|tls|ucx)://\S+$", str(values["dask/worker"]))
    assert re.match(r"^http://127\.0\.0\.1:\d+/", str(values["dask/dashboard_url"]))
    assert str(values["dask/exit_code"]) == "0"


def _log_messages(dev: DagsterDev, run_id: str) -> set[tuple[str | None, str, str]]:
    return {
        (e.get("stepKey"), e.get("level"), e.get("message"))
        for e in dev.run_events(run_id)
        if e["__typename"] == "LogMessageEvent"
    }


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _gone(proc: psutil.Process) -> bool:
    """Whether the process has exited: its PID is free (``os.kill(pid, 0)`` fails), or still
    in the table only as a zombie or as a different process that reused the PID."""
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return True
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- scenarios --------------------------------------------------------------------------------


def test_orders_from_the_asset_graph(page: Page, dagster_dev: DagsterDev, artifacts: Path) -> None:
    """Select the orders assets in the graph, Materialize: logs, stdout, metadata and checks."""
    dev = dagster_dev
    data = dev.data_dir

    # The orders group's asset graph; shift-click adds each asset to the selection.
    page.goto(f"/locations/{dev.location_name}/asset-groups/orders/lineage")
    for i, name in enumerate(ORDERS_ASSETS):
        page.locator(f'div[data-tooltip="{name}"]').click(modifiers=["Shift"] if i else [])
    materialize = page.get_by_role("button", name=f"Materialize selected ({len(ORDERS_ASSETS)})")
    expect(materialize).to_be_enabled()
    _shot(page, artifacts, "01-orders-asset-graph-selected")
    materialize.click()
    run_id = _open_launched_run(page)

    status = _wait_for_run_end(page)
    _shot(page, artifacts, "02-orders-run")
    assert status == "Success", dev.log_tail()
    assert dev.run(run_id)["status"] == "SUCCESS"

    # The event log shows what the external scripts logged through context.log.
    logged = [
        ("raw_orders", "INFO", "Generating 200 synthetic orders over 14 days"),
        ("raw_orders", "INFO", f"Wrote {data / 'raw_orders.csv'}"),
        ("cleaned_orders", "INFO", f"Read 206 raw rows from {data / 'raw_orders.csv'}"),
        ("cleaned_orders", "WARNING", "4 cleaned orders have no customer email"),
        ("order_summaries", "INFO", "Summarizing 197 cleaned orders"),
    ]
    log_filter = page.get_by_placeholder("Filter…")
    for step, _, message in logged:
        log_filter.fill(message)
        line = page.get_by_text(message, exact=True)
        expect(line).to_be_visible()
        if step == "cleaned_orders":
            _shot(page, artifacts, "03-orders-event-log-external-warning")
    messages = _log_messages(dev, run_id)
    missing = [m for m in logged if m not in messages]
    assert not missing, f"not in the run's event log: {missing}"

    # The step's stdout (compute logs) shows what the external process printed.
    page.get_by_role("button", name="stdout").click()
    page.get_by_placeholder("Select a step…").click()
    page.get_by_role("menuitem", name="raw_orders", exact=True).click()
    expect(page.get_by_text(f"wrote 206 rows to {data / 'raw_orders.csv'}")).to_be_visible()
    _shot(page, artifacts, "04-raw_orders-stdout")
    stdout, stderr = dev.captured_logs(run_id, "raw_orders")
    assert f"wrote 206 rows to {data / 'raw_orders.csv'}" in stdout
    assert "warning: raw export has 6 duplicated rows and 4 orders without" in stderr
    stdout, _ = dev.captured_logs(run_id, "cleaned_orders")
    assert f"wrote 197 cleaned orders (revenue 18378.59) to {data / 'cleaned_orders.csv'}" in stdout
    stdout, _ = dev.captured_logs(run_id, "order_summaries")
    assert f"wrote customer_summary.csv and product_summary.csv to {data}" in stdout

    # The latest materialization: the script's metadata and the client's own.
    page.goto("/assets/cleaned_orders?view=events")
    expect(page.get_by_role("row").filter(has_text="dask/dashboard_url")).to_be_visible()
    expect(page.get_by_text("Materialized in run")).to_be_visible()
    expect(page.get_by_role("link", name=run_id[:8], exact=True)).to_be_visible()
    shown = _metadata_rows(page)
    _shot(page, artifacts, "05-cleaned_orders-materialization")
    if os.environ.get(UPDATE_DOCS_IMAGE_ENV) == "1":
        _settle(page)
        size = save_compact_png(page, DOCS_IMAGE)
        assert size < 150_000, f"{DOCS_IMAGE} is {size} bytes"
    assert {
        k: shown.get(k)
        for k in ("row_count", "dropped_duplicates", "dropped_cancelled", "total_revenue", "path")
    } == {
        "row_count": "197",
        "dropped_duplicates": "6",
        "dropped_cancelled": "3",
        "total_revenue": "18378.59",
        "path": str(data / "cleaned_orders.csv"),
    }, shown
    _assert_client_metadata(shown, run_id, "cleaned_orders")

    expected_metadata = {
        "raw_orders": {"row_count": 206, "num_customers": 25},
        "cleaned_orders": {"row_count": 197, "dropped_duplicates": 6, "total_revenue": 18378.59},
        "customer_summary": {"num_customers": 25},
        "product_summary": {"num_products": 4},
    }
    steps = {"customer_summary": "order_summaries", "product_summary": "order_summaries"}
    for asset, expected in expected_metadata.items():
        latest, values = dev.latest_materialization(asset)
        assert latest["runId"] == run_id, asset
        assert {k: values.get(k) for k in expected} == expected, (asset, values)
        _assert_client_metadata(values, run_id, steps.get(asset, asset))
    _, raw = dev.latest_materialization("raw_orders")
    assert raw["preview"].startswith("| order_id | order_date |")
    assert raw["path"] == str(data / "raw_orders.csv")

    # The asset checks the script reported: one passed, one failed at WARN severity.
    page.get_by_role("tab", name="Checks").click()
    check_rows = page.locator('[class*="checkRow"]')
    email_row = check_rows.filter(has_text="customer_email_present")
    expect(email_row).to_contain_text("Failed")
    expect(email_row.get_by_role("img", name="warning_outline")).to_be_visible()
    expect(check_rows.filter(has_text="unique_order_ids")).to_contain_text("Succeeded")
    email_row.click()
    expect(page.get_by_text("Evaluation result")).to_be_visible()
    email_count = page.get_by_role("cell", name="missing_email_count", exact=True)
    expect(page.get_by_role("row").filter(has=email_count)).to_contain_text("4")
    _shot(page, artifacts, "06-cleaned_orders-checks")

    unique = dev.latest_check_execution("cleaned_orders", "unique_order_ids")
    assert (unique["runId"], unique["status"]) == (run_id, "SUCCEEDED")
    assert unique["evaluation"]["success"] is True
    assert unique["metadata"]["duplicate_order_ids"] == 0
    email = dev.latest_check_execution("cleaned_orders", "customer_email_present")
    assert (email["runId"], email["status"]) == (run_id, "FAILED")
    assert (email["evaluation"]["success"], email["evaluation"]["severity"]) == (False, "WARN")
    assert email["metadata"]["missing_email_count"] == 4
    assert email["metadata"]["missing_order_ids"] == [
        "ORD-00018",
        "ORD-00059",
        "ORD-00104",
        "ORD-00151",
    ]


def test_daily_partition_from_the_launch_dialog(
    page: Page, dagster_dev: DagsterDev, artifacts: Path
) -> None:
    """Materialize one daily partition from the UI: the script sees its partition key."""
    dev = dagster_dev
    page.goto("/assets/daily_revenue")
    page.get_by_role("button", name=re.compile(r"Materialize…$")).click()
    dialog = page.get_by_role("dialog")
    partitions = dialog.get_by_role("textbox")
    expect(partitions).to_be_visible()
    # The dialog starts on the last 90 days; 2024-01-05 is older.
    show_all = dialog.get_by_role("button", name="Show all partitions")
    if show_all.count():
        show_all.click()
    partitions.fill(PARTITION)
    partitions.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    _shot(page, artifacts, "07-daily_revenue-launch-dialog")
    dialog.get_by_role("button", name="Launch 1 run").click()
    run_id = _open_launched_run(page)

    expect(page.get_by_text(f"partition: {PARTITION}")).to_be_visible()
    status = _wait_for_run_end(page)
    _shot(page, artifacts, "08-daily_revenue-run")
    assert status == "Success", dev.log_tail()
    run = dev.run(run_id)
    assert run["status"] == "SUCCESS"
    assert run["tags"].get("dagster/partition") == PARTITION

    page.goto("/assets/daily_revenue?view=events")
    materialized = re.compile(rf"Partition\s*{PARTITION}\s*materialized in run")
    expect(page.get_by_text(materialized)).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="dask/task_key")).to_be_visible()
    shown = _metadata_rows(page)
    _shot(page, artifacts, "09-daily_revenue-materialization")
    assert shown.get("partition_key") == PARTITION, shown
    assert shown.get("window_start") == f"{PARTITION}T00:00:00+00:00", shown
    assert shown.get("window_end") == "2024-01-06T00:00:00+00:00", shown
    _assert_client_metadata(shown, run_id, "daily_revenue")

    latest, values = dev.latest_materialization("daily_revenue", partition=PARTITION)
    assert (latest["runId"], latest["partition"]) == (run_id, PARTITION)
    assert values["partition_key"] == PARTITION
    _assert_client_metadata(values, run_id, "daily_revenue")
    written = json.loads((dev.data_dir / "daily_revenue" / f"{PARTITION}.json").read_text())
    assert written["date"] == PARTITION
    assert written["revenue"] == values["revenue"]
    assert (
        "daily_revenue",
        "INFO",
        f"Computing revenue for partition {PARTITION}",
    ) in _log_messages(dev, run_id)


def test_terminate_slow_report_from_the_ui(
    page: Page, dagster_dev: DagsterDev, artifacts: Path
) -> None:
    """Terminate a running slow_report in the UI: the run is CANCELED, its processes are gone."""
    dev = dagster_dev
    pid_file = dev.data_dir / "slow_report.pid"
    child_pid_file = dev.data_dir / "slow_report.child.pid"
    for path in (pid_file, child_pid_file):
        path.unlink(missing_ok=True)

    page.goto("/assets/slow_report")
    page.get_by_role("button", name=re.compile(r"Materialize$")).click()
    run_id = _open_launched_run(page)

    # The command runs on the step's Dask worker and writes its own and its child's PID.
    pid = wait_for(lambda: _read_pid(pid_file), timeout=180, what="slow_report.pid", interval=0.5)
    child_pid = wait_for(
        lambda: _read_pid(child_pid_file), timeout=30, what="slow_report.child.pid", interval=0.5
    )
    command, child = psutil.Process(pid), psutil.Process(child_pid)
    assert "slow_report.py" in " ".join(command.cmdline())
    assert Path(child.cmdline()[0]).name == "sleep"
    assert child.ppid() == pid
    assert not _gone(command) and not _gone(child)

    # Its live log in the UI, then Terminate (graceful: no "force").
    page.get_by_placeholder("Filter…").fill("slow_report started")
    expect(page.get_by_text(f"slow_report started: pid {pid}")).to_be_visible()
    # Its first progress report (after 1 s), so that stdout has something to show.
    page.get_by_placeholder("Filter…").fill("progress 1/")
    expect(page.get_by_text("progress 1/120")).to_be_visible(timeout=30_000)
    expect(page.get_by_text(re.compile(r"^(Started|Starting)$")).first).to_be_visible()
    page.get_by_role("button", name="Terminate").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("1 run will be terminated")
    _shot(page, artifacts, "10-slow_report-terminate-dialog")
    assert not _gone(command) and not _gone(child), "slow_report stopped before Terminate"
    dialog.get_by_role("button", name="Terminate 1 run").click()

    status = _wait_for_run_end(page, timeout_ms=120_000)
    page.get_by_placeholder("Filter…").fill("")
    page.keyboard.press("Escape")  # close the filter's suggestions
    _shot(page, artifacts, "11-slow_report-canceled")
    assert status == "Canceled"
    assert dev.run(run_id)["status"] == "CANCELED"

    # SIGINT, then SIGKILL after the client's 20 s grace period: both are gone well before.
    wait_for(
        lambda: _gone(command) and _gone(child),
        timeout=60,
        what=f"slow_report (pid {pid}) and its child sleep (pid {child_pid}) to exit",
        interval=0.5,
    )
    events = dev.run_events(run_id)
    assert not [e for e in events if e["__typename"] == "MaterializationEvent"]
    assert any("SIGINT" in (e.get("message") or "") for e in events), "no SIGINT in the log"
    stdout, _ = dev.captured_logs(run_id, "slow_report")
    assert "slow_report: 1/120 s" in stdout
    assert "slow_report: 120/120 s" not in stdout
