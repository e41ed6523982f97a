"""The trivial Pipes asset: open the session and report one materialization."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.report_asset_materialization(metadata={"bench": "trivial"})
