"""Report a log line, then kill this process with SIGKILL."""

import os
import signal
import sys

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info("err_sigkill: about to SIGKILL myself")
    print("ERR-SIGKILL last words", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
