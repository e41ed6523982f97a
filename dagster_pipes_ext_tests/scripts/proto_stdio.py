"""Prints several lines to stdout and stderr while running, inside Pipes."""

import sys
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    for i in range(3):
        print(f"proto-stdout-line-{i}", flush=True)
        print(f"proto-stderr-line-{i}", file=sys.stderr, flush=True)
        time.sleep(0.05)
    context.report_asset_materialization(metadata={"printed": 3})
