"""Send N custom messages (N from the COUNT env var), each with its sequence number."""

import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    for i in range(int(os.environ["COUNT"])):
        context.report_custom_message({"i": i})
    context.report_asset_materialization(metadata={"sent": int(os.environ["COUNT"])})
