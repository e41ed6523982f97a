"""Report one materialization whose metadata holds SIZE_MB megabytes of text, then log."""

import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    size = int(float(os.environ["SIZE_MB"]) * 1024 * 1024)
    context.report_asset_materialization(metadata={"blob": "x" * size, "size": size})
    context.log.info("after the huge message")
