"""A Pipes command with a family: a child, a grandchild in a pool, a double-forked setsid daemon.

Writes the PIDs of the command and of every descendant it made, one per line, to PIDS_FILE, logs
"family started", then sleeps until stopped (it ignores SIGINT with IGNORE_SIGINT=1).
"""

import os
import signal
import subprocess
import time

from _family import double_fork_daemon  # (this script's directory is on sys.path)
from dagster_pipes import open_dagster_pipes

if os.environ.get("IGNORE_SIGINT") == "1":
    signal.signal(signal.SIGINT, signal.SIG_IGN)

with open_dagster_pipes() as context:
    daemon = double_fork_daemon()
    # `sh` → `sleep`: a child with a grandchild of its own.
    shell = subprocess.Popen(["sh", "-c", "sleep 600 & wait"])
    deadline = time.monotonic() + 10
    grandchildren: list[str] = []
    while not grandchildren and time.monotonic() < deadline:
        with open(f"/proc/{shell.pid}/task/{shell.pid}/children") as f:
            grandchildren = f.read().split()
        time.sleep(0.01)
    pids = [os.getpid(), daemon, shell.pid, *map(int, grandchildren)]
    with open(os.environ["PIDS_FILE"] + ".tmp", "w") as f:
        f.write("\n".join(map(str, pids)))
    os.replace(os.environ["PIDS_FILE"] + ".tmp", os.environ["PIDS_FILE"])
    context.log.info("family started")
    for _ in range(600):
        time.sleep(1)
    context.report_asset_materialization(metadata={"finished": True})
