"""``fault_family.py`` that also streams: a Pipes command with a child, a grandchild, a daemon.

Like ``dagster_pipes_ext_tests/scripts/fault_family.py`` it makes a child (``sh``) with a
grandchild (``sleep``) and a double-forked ``setsid`` daemon, writes the PIDs of all of them (the
command first) to ``PIDS_FILE`` and logs "family started". Then it logs ``tick 0``, ``tick 1``...
with ``context.log.info`` every 10 ms and, after each one, writes the number of ticks written so
far to ``COUNT_FILE``. With ``TICKS=N`` it stops after N ticks and reports a materialization;
otherwise it ticks until stopped (10 minutes at most).
"""

import os
import signal
import subprocess
import time

from dagster_pipes import open_dagster_pipes


def _daemon() -> int:
    """Double fork + setsid: the daemon is nobody's child once its parent exits."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.setsid()
        if os.fork() == 0:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            time.sleep(600)
            os._exit(0)
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    return int(os.read(read_end, 32))


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


ticks = int(os.environ.get("TICKS", "60000"))
with open_dagster_pipes() as context:
    daemon = _daemon()
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
