"""Materializes its asset and reports passed and failed checks of both severities."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.report_asset_materialization(metadata={"rows": 10})
    context.report_asset_check(
        check_name="passes_warn",
        passed=True,
        severity="WARN",
        metadata={"checked_rows": 10, "note": {"raw_value": "all fine", "type": "text"}},
    )
    context.report_asset_check(
        check_name="fails_warn", passed=False, severity="WARN", metadata={"bad_rows": 1}
    )
    context.report_asset_check(
        check_name="fails_error",
        passed=False,
        severity="ERROR",
        metadata={"bad_rows": 3, "report": {"raw_value": "https://dagster.io/r", "type": "url"}},
    )
