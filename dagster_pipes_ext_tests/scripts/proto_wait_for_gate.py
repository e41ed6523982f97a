"""Logs and prints "first", then waits (bounded) for the gate file named in extras."""

import os
import sys
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    gate = context.get_extra("gate")
    timeout = float(context.get_extra("timeout"))
    context.log.info("proto-live first")
    print("proto-live-stdout-first", flush=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            print("proto-live: gate never opened", file=sys.stderr, flush=True)
            sys.exit(5)
        time.sleep(0.05)
    context.log.info("proto-live second")
    context.report_asset_materialization(metadata={"gate_opened": True})
