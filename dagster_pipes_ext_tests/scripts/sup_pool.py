"""A program with a ``multiprocessing.Pool(2)`` (supervisor tests).

Usage: ``sup_pool.py PIDS_FILE``: writes "<pid> <worker pid> <worker pid>" there, then sleeps.
"""

import multiprocessing
import os
import sys
import time

if __name__ == "__main__":
    pool = multiprocessing.get_context("fork").Pool(2)
    pids = [os.getpid(), *(p.pid for p in multiprocessing.active_children())]
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(" ".join(map(str, pids)))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(300)
