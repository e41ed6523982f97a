"""Sends extras["count"] custom messages carrying their sequence numbers, in order."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    count = context.get_extra("count")
    for i in range(count):
        context.report_custom_message({"seq": i, "pad": "x" * (i % 50)})
