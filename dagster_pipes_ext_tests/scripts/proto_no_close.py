"""Reports a materialization, then exits abruptly inside the block without sending `closed`."""

import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info("proto before abrupt exit")
    context.report_asset_materialization(metadata={"reported_before_exit": True})
    os._exit(0)
