"""Fails on the first attempt (retry_number 0) and materializes on a retry."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    attempt = context.retry_number
    context.log.info(f"proto attempt with retry_number={attempt}")
    if attempt == 0:
        raise RuntimeError("proto first attempt fails on purpose")
    context.report_asset_materialization(metadata={"retry_number": attempt})
