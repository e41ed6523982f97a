"""Shared by the scripts that leave a daemon behind (imported from their own directory)."""

import os
import signal
import time


def double_fork_daemon() -> int:
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
