"""Reports a custom message that is not JSON serializable."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info("proto sending a bad payload")
    context.report_custom_message(object())
