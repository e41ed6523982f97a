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

pids_file, mode = sys.argv[1], sys.argv[2]
if mode == "ignore":
    signal.signal(signal.SIGINT, signal.SIG_IGN)

read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.setsid()
    if os.fork() == 0:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        os.write(write_end, str(os.getpid()).encode())
        os.close(write_end)
        time.sleep(300)
        os._exit(0)
    os._exit(0)
os.close(write_end)
os.waitpid(child, 0)
daemon = int(os.read(read_end, 32))

with open(pids_file + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {daemon}")
os.replace(pids_file + ".tmp", pids_file)

if mode != "exit":
    try:
        time.sleep(300)
    except KeyboardInterrupt:
        pass
