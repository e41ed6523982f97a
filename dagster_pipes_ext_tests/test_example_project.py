"""The example code location (``example_project``) loads and its assets materialize on Dask."""

import json
from pathlib import Path

import pytest
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    MetadataValue,
    materialize,
)

from dagster_pipes_ext import PipesDaskClient
from example_project.assets import (
    DATA_DIR_ENV,
    EXTERNAL_DIR,
    cleaned_orders,
    daily_revenue,
    order_summaries,
    raw_orders,
    slow_report,
)
from example_project.definitions import defs

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the example's scripts at a per-test data folder."""
    path = tmp_path / "data"
    monkeypatch.setenv(DATA_DIR_ENV, str(path))
    return path


def _materialize(assets, instance: DagsterInstance, **kwargs) -> ExecuteInProcessResult:
    return materialize(
        assets, resources={"dask_pipes": PipesDaskClient()}, instance=instance, **kwargs
    )


def _metadata(result: ExecuteInProcessResult, key: str) -> dict:
    [materialization] = [
        m for m in result.get_asset_materialization_events() if m.asset_key == AssetKey(key)
    ]
    return {k: getattr(v, "value", v) for k, v in materialization.materialization.metadata.items()}


def _captured_logs(result: ExecuteInProcessResult, instance: DagsterInstance) -> tuple[str, str]:
    stdout, stderr = [], []
    for event in result.all_events:
        if event.event_type == DagsterEventType.LOGS_CAPTURED:
            manager = instance.compute_log_manager
            file_key = event.logs_captured_data.file_key
            data = manager.get_log_data(manager.build_log_key_for_run(result.run_id, file_key))
            stdout.append((data.stdout or b"").decode())
            stderr.append((data.stderr or b"").decode())
    return "".join(stdout), "".join(stderr)


def test_definitions_load_and_validate() -> None:
    """The code location validates and defines every asset, check and the Dask resource."""
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert set(repo.assets_defs_by_key) == {
        AssetKey(k)
        for k in (
            "raw_orders",
            "cleaned_orders",
            "customer_summary",
            "product_summary",
            "daily_revenue",
            "slow_report",
        )
    }
    client = (defs.resources or {})["dask_pipes"]
    assert isinstance(client, PipesDaskClient)
    assert client.scheduler_address is None
    check_names = {k.name for k in cleaned_orders.check_keys}
    assert check_names == {"unique_order_ids", "customer_email_present"}
    assert daily_revenue.partitions_def is not None
    assert slow_report.group_names_by_key[AssetKey("slow_report")] == "demo_long_running"
    for name in ("raw_orders", "cleaned_orders", "order_summaries", "daily_revenue", "slow_report"):
        assert (EXTERNAL_DIR / f"{name}.py").is_file()


def test_orders_pipeline_materializes(instance: DagsterInstance, data_dir: Path) -> None:
    """raw_orders, cleaned_orders and the summaries materialize with metadata, checks and stdio."""
    result = _materialize([raw_orders, cleaned_orders, order_summaries], instance)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    assert run.is_success

    raw = _metadata(result, "raw_orders")
    assert raw["row_count"] == 206
    assert raw["num_customers"] == 25
    assert raw["path"] == str(data_dir / "raw_orders.csv")
    assert raw["preview"].startswith("| order_id | order_date |")
    assert raw["preview"].count("\n") == 6  # header, separator and five rows
    table = raw["preview_table"]
    assert len(table.records) == 5
    assert table.records[0].data["order_id"] == "ORD-00001"
    assert [c.name for c in table.schema.columns][:2] == ["order_id", "order_date"]
    assert raw["dask/exit_code"] == 0
    assert (data_dir / "raw_orders.csv").read_text().count("\n") == 207

    cleaned = _metadata(result, "cleaned_orders")
    assert cleaned["row_count"] == 197
    assert cleaned["dropped_duplicates"] == 6
    assert cleaned["dropped_cancelled"] == 3
    assert cleaned["total_revenue"] > 0
    assert cleaned["path"] == str(data_dir / "cleaned_orders.csv")

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"unique_order_ids", "customer_email_present"}
    assert checks["unique_order_ids"].passed
    assert checks["unique_order_ids"].metadata["checked_rows"] == MetadataValue.int(197)
    email = checks["customer_email_present"]
    assert not email.passed
    assert email.severity == AssetCheckSeverity.WARN
    assert email.metadata["missing_email_count"] == MetadataValue.int(4)
    assert email.metadata["missing_order_ids"].value == [
        "ORD-00018",
        "ORD-00059",
        "ORD-00104",
        "ORD-00151",
    ]

    logs = [e.message for e in instance.all_logs(result.run_id) if e.step_key == "raw_orders"]
    assert any("Generating 200 synthetic orders" in m for m in logs)
    stdout, stderr = _captured_logs(result, instance)
    assert f"wrote 206 rows to {data_dir / 'raw_orders.csv'}" in stdout
    assert "raw export has 6 duplicated rows" in stderr


def test_daily_partition_materializes(instance: DagsterInstance, data_dir: Path) -> None:
    """One daily partition materializes and its key reaches the external script."""
    result = _materialize([daily_revenue], instance, partition_key="2024-01-05")
    assert result.success

    [event] = result.get_asset_materialization_events()
    assert event.materialization.partition == "2024-01-05"
    meta = _metadata(result, "daily_revenue")
    assert meta["partition_key"] == "2024-01-05"
    assert meta["window_start"].startswith("2024-01-05T00:00:00")
    assert meta["window_end"].startswith("2024-01-06T00:00:00")
    assert 20 <= meta["order_count"] <= 40
    written = json.loads((data_dir / "daily_revenue" / "2024-01-05.json").read_text())
    assert written["date"] == "2024-01-05"
    assert written["revenue"] == meta["revenue"]
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any("Computing revenue for partition 2024-01-05" in m for m in logs)


def test_multi_asset_materializes_both_keys(instance: DagsterInstance, data_dir: Path) -> None:
    """The multi-asset's single script materializes customer_summary and product_summary."""
    setup = _materialize([raw_orders, cleaned_orders], instance)
    assert setup.success

    result = _materialize(
        [raw_orders, cleaned_orders, order_summaries],
        instance,
        selection=[AssetKey("customer_summary"), AssetKey("product_summary")],
    )
    assert result.success
    keys = {e.asset_key for e in result.get_asset_materialization_events()}
    assert keys == {AssetKey("customer_summary"), AssetKey("product_summary")}

    customers = _metadata(result, "customer_summary")
    products = _metadata(result, "product_summary")
    assert customers["num_customers"] == 25
    assert customers["top_customer"].startswith("C")
    assert products["num_products"] == 4
    assert products["best_selling_product"] in {"widget", "gadget", "gizmo", "doohickey"}
    assert customers["dask/exit_code"] == products["dask/exit_code"] == 0
    assert (data_dir / "customer_summary.csv").read_text().startswith("customer_id,orders")
    assert (data_dir / "product_summary.csv").read_text().startswith("product,units")
