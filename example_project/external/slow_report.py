"""A long-running job to try out termination: click "Terminate" in the UI while it runs.

It writes its own PID to `slow_report.pid` and the PID of a child `sleep` process to
`slow_report.child.pid` in the data folder, then prints and logs progress once a second. When
the run is terminated, PipesDaskClient sends SIGINT to the whole process group on the worker
(SIGKILL after `termination_timeout_seconds`), so both processes stop.
"""

import os
import subprocess
import sys
import time

from _shared import data_dir
from dagster_pipes import open_dagster_pipes


def main() -> None:
    with open_dagster_pipes() as context:
        duration = int(context.extras.get("duration_seconds", 120))
        folder = data_dir(context.extras)
        pid_path = folder / "slow_report.pid"
        child_pid_path = folder / "slow_report.child.pid"

        # The child stays in this process's group: stopping the group stops it too.
        child = subprocess.Popen(["sleep", str(duration + 60)])
        pid_path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        child_pid_path.write_text(f"{child.pid}\n", encoding="utf-8")
        context.log.info(
            f"slow_report started: pid {os.getpid()} (group {os.getpgid(0)}), child sleep "
            f"pid {child.pid}; running for {duration}s"
        )

        started = time.monotonic()
        try:
            for second in range(1, duration + 1):
                time.sleep(max(0.0, started + second - time.monotonic()))
                print(f"slow_report: {second}/{duration} s", flush=True)
                context.log.info(f"progress {second}/{duration}")
        except KeyboardInterrupt:
            print("slow_report: interrupted (SIGINT), stopping", file=sys.stderr, flush=True)
            raise
        finally:
            if child.poll() is None:
                child.terminate()
            child.wait(timeout=10)

        context.report_asset_materialization(
            metadata={
                "duration_seconds": duration,
                "pid": os.getpid(),
                "pid_file": {"raw_value": str(pid_path), "type": "path"},
            }
        )


if __name__ == "__main__":
    main()
