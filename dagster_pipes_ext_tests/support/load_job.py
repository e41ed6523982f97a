"""A job of N one-step Pipes assets for the multiprocess load test (step processes import it).

Each step runs ``scripts/log_flood.py`` through ``PipesDaskClient``; the client's scheduler
address and the flood size come from run config, so every step uses the same separate cluster.
No ``from __future__ import annotations``: Dagster reads the asset functions' annotations.
"""

import os
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    Config,
    Definitions,
    JobDefinition,
    asset,
    define_asset_job,
    multiprocess_executor,
)

from dagster_pipes_ext import PipesDaskClient

# The test runs 8; the load benchmark (benchmarks/load.py) sets more, for step processes too.
STEPS = int(os.environ.get("PIPES_LOAD_STEPS", "8"))
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "log_flood.py"
PRELOAD = [__name__, "dagster._core.storage.event_log.sqlite"]


class FloodConfig(Config):
    """How many log lines each step's external process writes."""

    count: int = 1000


def _flood_asset(index: int):
    @asset(name=f"flood_{index:02d}", required_resource_keys={"pipes"})
    def _asset(context: AssetExecutionContext, config: FloodConfig):
        return context.resources.pipes.run(
            context=context,
            command=["python", str(SCRIPT)],
            env={"COUNT": str(config.count)},
        ).get_materialize_result()

    return _asset


ASSETS = [_flood_asset(i) for i in range(STEPS)]


def load_job() -> JobDefinition:
    """Every flood step at once, each in its own process, sharing one Dask cluster."""
    defs = Definitions(
        assets=ASSETS,
        resources={"pipes": PipesDaskClient.configure_at_launch()},
        jobs=[
            define_asset_job(
                "load",
                selection=[a.key for a in ASSETS],
                executor_def=multiprocess_executor.configured(
                    {
                        "max_concurrent": STEPS,
                        "start_method": {"forkserver": {"preload_modules": PRELOAD}},
                    }
                ),
            )
        ],
    )
    return defs.resolve_job_def("load")


def run_config(count: int, scheduler_address: str, drain_timeout: float) -> dict:
    """Run config: the flood size of every step and the shared cluster's address."""
    return {
        "ops": {a.op.name: {"config": {"count": count}} for a in ASSETS},
        "resources": {
            "pipes": {
                "config": {
                    "scheduler_address": scheduler_address,
                    "message_drain_timeout_seconds": drain_timeout,
                }
            }
        },
    }
