"""Print, log and report a secret token (given reversed, so the task's arguments never hold it)."""

import os
import sys

from dagster_pipes import open_dagster_pipes

token = os.environ["TOKEN_REVERSED"][::-1]
with open_dagster_pipes() as context:
    print(f"stdout {token}", flush=True)
    print(f"stderr {token}", file=sys.stderr, flush=True)
    context.log.info(f"log {token}")
    context.report_custom_message({"token": token})
    context.report_asset_materialization(metadata={"token": token})
