"""The fan-out jobs: 16 one-step Pipes assets executed by the multiprocess executor.

Dagster materializes one partition per run, and a single-run backfill of a partitioned asset is
one step; so "16 partitions in parallel steps of one run" is modelled as 16 assets made by one
factory (``fanout_p00`` .. ``fanout_p15``), each its own step and its own Pipes session, which
passes its partition number to the external process as an extra. The external script sleeps
(``seconds``, 0.5 by default) and reports a materialization.

The multiprocess executor uses the ``forkserver`` start method with ``PRELOAD`` preloaded:
each step process is forked from a server that has already imported Dagster, this module and
Dagster's storage modules (Dagster's documented way to cut step start-up; with the default
``spawn`` every step re-imports Dagster, 2-3 s of CPU per step, which on 2 cores buries what
is being compared). ``dagster_pipes_ext`` imports ``distributed`` with the package, so the
forkserver hands it to every step already loaded; each Dask step still opens its own scheduler
connection, as it would in a deployment. Step processes re-create the job through
``reconstructable``, so the jobs are built by module-level functions. The Dask job takes the
scheduler address from resource config at launch, so every step connects to the same shared
separate cluster.

No ``from __future__ import annotations``: Dagster reads the asset functions' annotations.
"""

import sys
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    Config,
    Definitions,
    JobDefinition,
    PipesSubprocessClient,
    asset,
    define_asset_job,
    multiprocess_executor,
)

from dagster_pipes_ext import PipesDaskClient

PARTITIONS = 16
MAX_CONCURRENT = 4
EXTERNAL = Path(__file__).resolve().parent / "external" / "sleep_report.py"
JOB_NAME = "fanout"
# Imported once by the forkserver, not by every step process: this module (Dagster, the client
# package) and what a step imports to open the on-disk instance and capture compute logs.
PRELOAD = [
    __name__,
    "dagster._core.instance.factory",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.schedules.sqlite",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.secrets.env_file",
    "alembic.runtime.migration",
    "upath",
]


class SleepConfig(Config):
    """How long each step's external process sleeps before reporting."""

    seconds: float = 0.5


def _fanout_asset(index: int):
    @asset(name=f"fanout_p{index:02d}", group_name="fanout", required_resource_keys={"pipes"})
    def _asset(context: AssetExecutionContext, config: SleepConfig):
        return context.resources.pipes.run(
            context=context,
            command=["python", str(EXTERNAL), str(config.seconds)],
            extras={"partition": index},
        ).get_materialize_result()

    return _asset


ASSETS = [_fanout_asset(i) for i in range(PARTITIONS)]


def _job(pipes_resource) -> JobDefinition:
    defs = Definitions(
        assets=ASSETS,
        resources={"pipes": pipes_resource},
        jobs=[
            define_asset_job(
                JOB_NAME,
                selection=[a.key for a in ASSETS],
                executor_def=multiprocess_executor.configured(
                    {
                        "max_concurrent": MAX_CONCURRENT,
                        "start_method": {"forkserver": {"preload_modules": PRELOAD}},
                    }
                ),
            )
        ],
    )
    return defs.resolve_job_def(JOB_NAME)


def subprocess_fanout_job() -> JobDefinition:
    """The fan-out job with ``PipesSubprocessClient`` as ``pipes``."""
    return _job(PipesSubprocessClient())


def dask_fanout_job() -> JobDefinition:
    """The fan-out job with ``PipesDaskClient`` as ``pipes``; its address comes from run config."""
    return _job(PipesDaskClient.configure_at_launch())


def run_config(
    seconds: float, scheduler_address: str | None = None, log_level: str = "WARNING"
) -> dict:
    """Run config: each step's sleep and, for the Dask job, the scheduler address."""
    config: dict = {
        "ops": {a.op.name: {"config": {"seconds": seconds}} for a in ASSETS},
        "loggers": {"console": {"config": {"log_level": log_level}}},
    }
    if scheduler_address is not None:
        config["resources"] = {"pipes": {"config": {"scheduler_address": scheduler_address}}}
    return config


if __name__ == "__main__":
    sys.exit("import this module; run the benchmark with benchmarks/run.py --only fanout")
