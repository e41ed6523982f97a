"""Reports, as one custom message, everything the Pipes context shows the external process."""

from dagster_pipes import open_dagster_pipes


def _get(fn):
    try:
        return {"ok": fn()}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


with open_dagster_pipes() as context:
    context.report_custom_message(
        {
            "run_id": _get(lambda: context.run_id),
            "job_name": _get(lambda: context.job_name),
            "retry_number": _get(lambda: context.retry_number),
            "is_asset_step": _get(lambda: context.is_asset_step),
            "asset_key": _get(lambda: context.asset_key),
            "asset_keys": _get(lambda: context.asset_keys),
            "code_version": _get(lambda: context.code_version),
            "is_partition_step": _get(lambda: context.is_partition_step),
            "partition_key": _get(lambda: context.partition_key),
            "partition_key_range": _get(lambda: context.partition_key_range),
            "partition_time_window": _get(lambda: context.partition_time_window),
            "extras": _get(lambda: dict(context.extras)),
        }
    )
