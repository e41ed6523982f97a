"""Materialize the fault matrix's asset in this process, for ``benchmarks/faults.py``.

Usage: ``fault_driver.py CONFIG_JSON`` with ``{"address", "home", "runs": [run dir, ...]}``.
Every run uses the one ``PipesDaskClient`` made here and the on-disk instance at ``home``
(``DagsterInstance.local_temp``); a run's command gets ``PIDS_FILE``, ``COUNT_FILE`` (and
``TICKS``, from ``<run dir>/ticks`` if present) in its run dir. Between two runs it creates
``<run dir>/done`` and waits (5 minutes at most) for ``<next run dir>/go``.
"""

import json
import sys
import time
from pathlib import Path

from dagster import AssetExecutionContext, DagsterInstance, asset, materialize

from dagster_pipes_ext import PipesDaskClient

SCRIPT = str(Path(__file__).parent / "fault_stream.py")
RUN: dict[str, str] = {}


@asset
def stream(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
    """Run ``fault_stream.py`` on the cluster."""
    return dask_pipes.run(
        context=context, command=["python", SCRIPT], env=RUN
    ).get_materialize_result()


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody created {path}")
        time.sleep(0.05)


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    client = PipesDaskClient(
        scheduler_address=config["address"],
        heartbeat_timeout_seconds=5,
        termination_timeout_seconds=2,
    )
    with DagsterInstance.local_temp(config["home"]) as instance:
        for i, run_dir in enumerate(map(Path, config["runs"])):
            if i:
                _wait_for(run_dir / "go", 300)
            RUN.clear()
            RUN.update(PIDS_FILE=str(run_dir / "pids"), COUNT_FILE=str(run_dir / "count"))
            if (run_dir / "ticks").exists():
                RUN["TICKS"] = (run_dir / "ticks").read_text().strip()
            result = materialize(
                [stream], resources={"dask_pipes": client}, instance=instance, raise_on_error=False
            )
            (run_dir / "run_id").write_text(result.run_id)
            print(f"RUN {i} {result.run_id} success={result.success}", flush=True)
            (run_dir / "done").touch()
