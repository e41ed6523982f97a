"""A command for the supervisor's stop tests.

Usage: ``sup_sigint.py READY_FILE MODE``. MODE ``graceful``: on SIGINT, print "graceful" and
exit 7; ``ignore``: ignore SIGINT. READY_FILE appears once the disposition is set; then sleep.
"""

import signal
import sys
import time

ready_file, mode = sys.argv[1], sys.argv[2]


def _graceful(signum, frame):
    print("graceful", flush=True)
    sys.exit(7)


signal.signal(signal.SIGINT, _graceful if mode == "graceful" else signal.SIG_IGN)
open(ready_file, "w").close()
time.sleep(300)
