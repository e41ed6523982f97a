"""Fan-out step body: sleep SECONDS, then report one materialization.

Usage: ``python sleep_report.py SECONDS``.
"""

import sys
import time

from dagster_pipes import open_dagster_pipes

seconds = float(sys.argv[1])
with open_dagster_pipes() as context:
    time.sleep(seconds)
    context.report_asset_materialization(metadata={"slept_seconds": seconds})
