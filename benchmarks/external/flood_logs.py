"""Send N ``context.log.info`` messages, then report one materialization.

Usage: ``python flood_logs.py N``. Each message is ``flood-log <i>``, so the benchmark can count
them in the run's event log.
"""

import sys

from dagster_pipes import open_dagster_pipes

count = int(sys.argv[1])
with open_dagster_pipes() as context:
    log = context.log
    for i in range(count):
        log.info(f"flood-log {i}")
    context.report_asset_materialization(metadata={"flood/sent_logs": count})
