"""Write N Pipes message lines to the session's message file as fast as possible.

Usage: ``python transport_writer.py N``. This is not a Pipes program: it only fills the file named
by ``DAGSTER_PIPES_MESSAGES`` with ``report_custom_message`` lines (in 1 MB writes), so that the
raw transport benchmark measures the launcher, the scheduler and the reader rather than the writer.
"""

import base64
import json
import os
import sys
import zlib

count = int(sys.argv[1])
params = json.loads(zlib.decompress(base64.b64decode(os.environ["DAGSTER_PIPES_MESSAGES"])))
template = (
    '{"__dagster_pipes_version": "0.1", "method": "report_custom_message", '
    '"params": {"payload": %d}}\n'
)
block = 10_000
with open(params["path"], "a", encoding="utf-8") as f:
    for start in range(0, count, block):
        f.write("".join(template % i for i in range(start, min(start + block, count))))
        f.flush()
