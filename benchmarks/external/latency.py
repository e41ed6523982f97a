"""Send N log messages paced ``interval`` seconds apart, each carrying its own send time.

Usage: ``python latency.py N INTERVAL``. Each message is ``"bench-latency <i> <time.time()!r>"``,
the wall-clock time taken just before the message is written. Pacing follows a fixed schedule
(start + i * interval), so a slow write does not shift later messages.
"""

import sys
import time

from dagster_pipes import open_dagster_pipes

count = int(sys.argv[1])
interval = float(sys.argv[2])
with open_dagster_pipes() as context:
    log = context.log
    start = time.monotonic()
    for i in range(count):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        log.info(f"bench-latency {i} {time.time()!r}")
    context.report_asset_materialization(metadata={"sent_latency": count})
