"""Dagster's Pipes tutorial code, plus a task on the cluster the command runs on.

With USE_CLUSTER=1 it also connects a plain ``distributed.Client()`` (DASK_SCHEDULER_ADDRESS and
Dask's TLS config come from the launcher) and sums on the cluster.
"""

import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info("computing orders")
    metadata = {"rows": 1234}
    if os.environ.get("USE_CLUSTER") == "1":
        from distributed import Client

        with Client(timeout=30) as client:
            metadata["cluster_sum"] = client.submit(sum, [1, 2, 3], pure=False).result(timeout=60)
    context.report_asset_materialization(metadata=metadata)
    context.report_asset_check(check_name="no_nulls", passed=True)
