"""``fault_family.py`` that also streams: a Pipes command with a child, a grandchild, a daemon.

Like ``dagster_pipes_ext_tests/scripts/fault_family.py`` it makes a child (``sh``) with a
grandchild (``sleep``) and a double-forked ``setsid`` daemon, writes the PIDs of all of them (the
command first) to ``PIDS_FILE`` and logs "family started". Then it logs ``tick 0``, ``tick 1``...
with ``context.log.info`` every 10 ms and, after each one, writes the number of ticks written so
far to ``COUNT_FILE``. With ``TICKS=N`` it stops after N ticks and reports a materialization;
otherwise it ticks until stopped (10 minutes at most).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from dagster_pipes import open_dagster_pipes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dagster_pipes_ext_tests" / "scripts"))
from _family import double_fork_daemon


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


ticks = int(os.environ.get("TICKS", "60000"))
with open_dagster_pipes() as context:
    daemon = double_fork_daemon()
    # `sh` -> `sleep`: a child with a grandchild of its own.
    shell = subprocess.Popen(["sh", "-c", "sleep 600 & wait"])
    deadline = time.monotonic() + 10
    grandchildren: list[str] = []
    while not grandchildren and time.monotonic() < deadline:
        with open(f"/proc/{shell.pid}/task/{shell.pid}/children") as f:
            grandchildren = f.read().split()
        time.sleep(0.01)
    pids = [os.getpid(), daemon, shell.pid, *map(int, grandchildren)]
    _write(os.environ["PIDS_FILE"], "\n".join(map(str, pids)))
    context.log.info("family started")
    start = time.monotonic()
    for i in range(ticks):
        context.log.info(f"tick {i}")
        _write(os.environ["COUNT_FILE"], str(i + 1))
        time.sleep(max(0.0, start + (i + 1) * 0.01 - time.monotonic()))
    context.report_asset_materialization(metadata={"ticks": ticks})
