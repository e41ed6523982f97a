"""Report one materialization carrying BYTES of text metadata in a single Pipes message.

Usage: ``python flood_big.py BYTES``. The message line is a little over BYTES long (the JSON of
one ``report_asset_materialization``), so it must stay under the client's ``max_message_bytes``.
"""

import sys

from dagster_pipes import open_dagster_pipes

size = int(sys.argv[1])
with open_dagster_pipes() as context:
    context.report_asset_materialization(
        metadata={
            "flood/blob": {"raw_value": "x" * size, "type": "text"},
            "flood/blob_bytes": size,
        }
    )
