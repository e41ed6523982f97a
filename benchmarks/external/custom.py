"""Send N ``context.report_custom_message`` messages, then report one materialization.

Usage: ``python custom.py N``.
"""

import sys

from dagster_pipes import open_dagster_pipes

count = int(sys.argv[1])
with open_dagster_pipes() as context:
    report = context.report_custom_message
    for i in range(count):
        report(i)
    context.report_asset_materialization(metadata={"sent_custom": count})
