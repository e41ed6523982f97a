"""Reports one asset check (name and asset key from extras), as an @asset_check body would."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info("checking from an @asset_check")
    context.report_asset_check(
        asset_key=context.get_extra("asset_key"),
        check_name=context.get_extra("check_name"),
        passed=True,
        severity="WARN",
        metadata={"retry_number": context.retry_number, "job": context.job_name or ""},
    )
