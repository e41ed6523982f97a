"""Logs, then raises inside the open_dagster_pipes block."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info("proto logged before the failure")
    context.report_custom_message({"stage": "before-raise"})
    raise ValueError("proto boom inside pipes")
