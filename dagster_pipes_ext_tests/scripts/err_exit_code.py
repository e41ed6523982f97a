"""Report a log line, write distinctive lines to stderr, then exit with code 7."""

import sys

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info("err_exit_code: about to fail")
    for i in range(300):
        print(f"err_exit_code filler line {i}", file=sys.stderr)
    print("ERR-EXIT-7 first distinctive stderr line", file=sys.stderr)
    print("ERR-EXIT-7 second distinctive stderr line", file=sys.stderr)
    sys.stderr.flush()

sys.exit(7)
