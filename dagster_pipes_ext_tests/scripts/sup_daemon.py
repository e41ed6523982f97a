"""A command that leaves a double-forked ``setsid`` daemon behind (supervisor tests).

Usage: ``sup_daemon.py PIDS_FILE MODE``. The daemon ignores SIGINT, SIGTERM and SIGHUP and
sleeps, holding the command's stdout and stderr. Once it runs, PIDS_FILE holds
"<command pid> <daemon pid>". MODE ``exit``: the command then exits 0; ``wait``: it sleeps until
SIGINT, then exits 0; ``ignore``: it ignores SIGINT too and sleeps.
"""

import os
import signal
import sys
import time

from _family import double_fork_daemon  # (this script's directory is on sys.path)

pids_file, mode = sys.argv[1], sys.argv[2]
if mode == "ignore":
    signal.signal(signal.SIGINT, signal.SIG_IGN)

daemon = double_fork_daemon()

with open(pids_file + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {daemon}")
os.replace(pids_file + ".tmp", pids_file)

if mode != "exit":
    try:
        time.sleep(300)
    except KeyboardInterrupt:
        pass
