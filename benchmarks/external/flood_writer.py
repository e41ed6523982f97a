"""Write Pipes message lines to the session's message file directly, as fast as possible.

Usage: ``python flood_writer.py logs N`` or ``python flood_writer.py message BYTES``. Not a Pipes
program: it fills the file named by ``DAGSTER_PIPES_MESSAGES`` with the very lines that
``external/flood_logs.py`` (N ``context.log.info`` lines, in about 1 MB writes) or
``external/flood_big.py`` (one ``report_asset_materialization`` line with BYTES of text
metadata) write, for the flood scenario's reader-only measurements (no Dagster handler).
"""

import base64
import json
import os
import sys
import zlib

mode, amount = sys.argv[1], int(sys.argv[2])
params = json.loads(zlib.decompress(base64.b64decode(os.environ["DAGSTER_PIPES_MESSAGES"])))
with open(params["path"], "a", encoding="utf-8") as f:
    if mode == "logs":
        template = (
            '{"__dagster_pipes_version": "0.1", "method": "log", '
            '"params": {"message": "flood-log %d", "level": "INFO"}}\n'
        )
        block = 10_000
        for start in range(0, amount, block):
            f.write("".join(template % i for i in range(start, min(start + block, amount))))
            f.flush()
    elif mode == "message":
        message = {
            "__dagster_pipes_version": "0.1",
            "method": "report_asset_materialization",
            "params": {
                "asset_key": "flood_message",
                "data_version": None,
                "metadata": {
                    "flood/blob": {"raw_value": "x" * amount, "type": "text"},
                    "flood/blob_bytes": {"raw_value": amount, "type": "__infer__"},
                },
            },
        }
        f.write(json.dumps(message) + "\n")
    else:
        raise SystemExit(f"unknown mode {mode!r}: logs or message")
