"""A long-running Pipes process with a grandchild, for termination and worker-loss tests.

Writes "<pid> <grandchild pid>" to the file named by PIDS_FILE, appends a line to STARTS_FILE
each time it starts, logs, then sleeps. With IGNORE_SIGINT=1 it ignores SIGINT, so only
SIGKILL stops it.
"""

import os
import signal
import subprocess
import time

from dagster_pipes import open_dagster_pipes

if os.environ.get("IGNORE_SIGINT") == "1":
    signal.signal(signal.SIGINT, signal.SIG_IGN)

with open_dagster_pipes() as context:
    child = subprocess.Popen(["sleep", "600"])
    if os.environ.get("STARTS_FILE"):
        with open(os.environ["STARTS_FILE"], "a") as f:
            f.write(f"{os.getpid()}\n")
    tmp = os.environ["PIDS_FILE"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.replace(tmp, os.environ["PIDS_FILE"])
    context.log.info(f"sleeper started: pid {os.getpid()}, grandchild {child.pid}")
    for _ in range(600):
        time.sleep(1)
    context.report_asset_materialization(metadata={"finished": True})
