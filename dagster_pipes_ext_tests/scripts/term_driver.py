"""Materialize a long-running asset in this process, to be interrupted by a test.

Usage: term_driver.py <scheduler address, "embedded", or a JSON object of PipesDaskClient
fields> <termination timeout seconds>
The environment carries PIDS_FILE (and optionally IGNORE_SIGINT) for the external script.
"""

import json
import os
import sys
from pathlib import Path

from dagster import AssetExecutionContext, DagsterInstance, asset, materialize

from dagster_pipes_ext import PipesDaskClient

SCRIPT = str(Path(__file__).parent / "term_sleeper.py")


@asset
def sleeper(context: AssetExecutionContext, dask_pipes: PipesDaskClient):
    return dask_pipes.run(context=context, command=["python", SCRIPT]).get_materialize_result()


if __name__ == "__main__":
    if sys.argv[1].startswith("{"):
        fields = json.loads(sys.argv[1])
    else:
        fields = {"scheduler_address": None if sys.argv[1] == "embedded" else sys.argv[1]}
    client = PipesDaskClient(
        **fields,
        termination_timeout_seconds=float(sys.argv[2]),
        # The worker's environment is its own: what the script needs travels with the call.
        env={
            k: os.environ[k]
            for k in ("PIDS_FILE", "IGNORE_SIGINT", "STARTS_FILE")
            if k in os.environ
        },
    )
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [sleeper], resources={"dask_pipes": client}, instance=instance, raise_on_error=False
        )
        print(f"RUN_STATUS {instance.get_run_by_id(result.run_id).status.value}", flush=True)
        for event in instance.all_logs(result.run_id):
            print(f"EVENT {event.message}", flush=True)
