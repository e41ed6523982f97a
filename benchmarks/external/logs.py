"""Send N ``context.log.info`` messages, then report one materialization.

Usage: ``python logs.py N``.
"""

import sys

from dagster_pipes import open_dagster_pipes

count = int(sys.argv[1])
with open_dagster_pipes() as context:
    log = context.log
    for i in range(count):
        log.info(f"bench-log {i}")
    context.report_asset_materialization(metadata={"sent_logs": count})
