"""The orders pipeline: each asset runs a script from ``external/`` on Dask through Pipes."""

import os
import tempfile
from pathlib import Path

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    Config,
    DailyPartitionsDefinition,
    MaterializeResult,
    asset,
    multi_asset,
)

from dagster_pipes_ext import PipesDaskClient

EXTERNAL_DIR = Path(__file__).resolve().parent / "external"
DATA_DIR_ENV = "EXAMPLE_PROJECT_DATA_DIR"
ORDERS_GROUP = "orders"
LONG_RUNNING_GROUP = "demo_long_running"

daily_partitions = DailyPartitionsDefinition(start_date="2024-01-01")


def data_dir() -> str:
    """The folder the scripts read and write: ``$EXAMPLE_PROJECT_DATA_DIR`` or a temp folder.

    On a multi-host Dask cluster it must be a path every worker shares (and so must the code).
    """
    return os.environ.get(DATA_DIR_ENV) or os.path.join(
        tempfile.gettempdir(), "dagster_pipes_ext_example"
    )


def script_command(name: str) -> list[str]:
    """The command running ``external/<name>`` with the ``python`` found on PATH.

    Args:
        name: File name of the script under ``example_project/external``.
    """
    return ["python", str(EXTERNAL_DIR / name)]


@asset(group_name=ORDERS_GROUP, kinds={"python", "dask", "csv"})
def raw_orders(context: AssetExecutionContext, dask_pipes: PipesDaskClient) -> MaterializeResult:
    """Synthetic raw order export: logs, stdout/stderr and rich materialization metadata."""
    return dask_pipes.run(
        context=context,
        command=script_command("raw_orders.py"),
        extras={"data_dir": data_dir()},
    ).get_materialize_result()


@asset(
    group_name=ORDERS_GROUP,
    kinds={"python", "dask", "csv"},
    deps=[raw_orders],
    check_specs=[
        AssetCheckSpec(
            "unique_order_ids",
            asset="cleaned_orders",
            description="Cleaning leaves every order id unique.",
        ),
        AssetCheckSpec(
            "customer_email_present",
            asset="cleaned_orders",
            description="Every order has a customer email (fails at WARN on the sample data).",
        ),
    ],
)
def cleaned_orders(
    context: AssetExecutionContext, dask_pipes: PipesDaskClient
) -> MaterializeResult:
    """Deduplicated orders without cancellations; the script reports both asset checks."""
    return dask_pipes.run(
        context=context,
        command=script_command("cleaned_orders.py"),
        extras={"data_dir": data_dir()},
    ).get_materialize_result()


@multi_asset(
    specs=[
        AssetSpec(
            "customer_summary",
            deps=[cleaned_orders],
            group_name=ORDERS_GROUP,
            kinds={"python", "dask", "csv"},
            description="Orders and revenue per customer.",
        ),
        AssetSpec(
            "product_summary",
            deps=[cleaned_orders],
            group_name=ORDERS_GROUP,
            kinds={"python", "dask", "csv"},
            description="Units and revenue per product.",
        ),
    ],
)
def order_summaries(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
    """Two assets from one external process, each reported with an explicit ``asset_key``."""
    invocation = dask_pipes.run(
        context=context,
        command=script_command("order_summaries.py"),
        extras={"data_dir": data_dir()},
    )
    # One MaterializeResult per reported asset key (a return annotation would make Dagster
    # expect a tuple of outputs, so there is none).
    return invocation.get_results()


@asset(
    group_name="revenue",
    kinds={"python", "dask"},
    partitions_def=daily_partitions,
)
def daily_revenue(context: AssetExecutionContext, dask_pipes: PipesDaskClient) -> MaterializeResult:
    """One day's revenue; the script reads the partition key from its Pipes context."""
    return dask_pipes.run(
        context=context,
        command=script_command("daily_revenue.py"),
        extras={"data_dir": data_dir()},
    ).get_materialize_result()


class SlowReportConfig(Config):
    """Run configuration of ``slow_report``."""

    duration_seconds: int = 120


@asset(group_name=LONG_RUNNING_GROUP, kinds={"python", "dask"})
def slow_report(
    context: AssetExecutionContext, dask_pipes: PipesDaskClient, config: SlowReportConfig
) -> MaterializeResult:
    """Runs for ~2 minutes with progress every second: try "Terminate" on its run in the UI."""
    return dask_pipes.run(
        context=context,
        command=script_command("slow_report.py"),
        extras={"data_dir": data_dir(), "duration_seconds": config.duration_seconds},
    ).get_materialize_result()


all_assets = [raw_orders, cleaned_orders, order_summaries, daily_revenue, slow_report]
