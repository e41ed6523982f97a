"""A stand-in for the launcher: starts the supervisor, sends heartbeats, waits to be killed.

Usage: ``sup_parent.py SUPERVISOR_PY STATUS_FD CONFIG_JSON HB_INTERVAL [LEAK_PIDS_FILE]``.
Loads supervisor.py by its path (it needs only the standard library), makes the control pipe,
starts ``supervisor_argv(config)`` with the control and status fds (config completed with them
and with this process's pid) and writes ``hb`` every HB_INTERVAL seconds. With LEAK_PIDS_FILE,
a forked child (its pid written there) also holds the control pipe's write end, so that the
supervisor sees no EOF when this process dies: only PDEATHSIG tells it.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

path, status_fd, config_json, interval = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("supervisor", path)
assert spec is not None and spec.loader is not None
supervisor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(supervisor)

control_r, control_w = os.pipe()
if len(sys.argv) > 5:
    holder = os.fork()
    if holder == 0:
        os.close(control_r)
        os.close(int(status_fd))
        time.sleep(60)
        os._exit(0)
    with open(sys.argv[5], "w") as f:
        f.write(str(holder))

config = json.loads(config_json)
config.update(control_fd=control_r, status_fd=int(status_fd), parent_pid=os.getpid())
proc = subprocess.Popen(
    supervisor.supervisor_argv(config), pass_fds=(control_r, int(status_fd)), close_fds=True
)
os.close(control_r)
os.close(int(status_fd))
try:
    while proc.poll() is None:
        os.write(control_w, b"hb\n")
        time.sleep(float(interval))
except BrokenPipeError:
    pass
