"""Log N lines with context.log (N from the COUNT env var), then report a materialization."""

import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    count = int(os.environ["COUNT"])
    for i in range(count):
        context.log.info(f"flood line {i}")
    context.report_asset_materialization(metadata={"sent": count})
