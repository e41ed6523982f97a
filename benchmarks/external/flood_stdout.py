"""Write about BYTES of fixed-width lines to stdout, then report one materialization.

Usage: ``python flood_stdout.py BYTES LINE_BYTES``. The lines (``LINE_BYTES`` each, newline
included; the last one may be shorter) go to ``sys.stdout.buffer`` in 1 MiB writes; the
materialization's metadata says how many bytes and lines were written, so the benchmark can
check what reached the step's captured stdout.
"""

import sys

from dagster_pipes import open_dagster_pipes

total = int(sys.argv[1])
line_bytes = int(sys.argv[2])
line = b"flood-stdout " + b"x" * (line_bytes - len("flood-stdout ") - 1) + b"\n"
per_block = max(1, (1 << 20) // line_bytes)
block = line * per_block
with open_dagster_pipes() as context:
    out = sys.stdout.buffer
    written = lines = 0
    while total - written >= len(block):
        out.write(block)
        written += len(block)
        lines += per_block
    while total - written >= line_bytes:
        out.write(line)
        written += line_bytes
        lines += 1
    if total > written:  # a shorter last line
        out.write(line[: total - written - 1] + b"\n")
        lines += 1
        written = total
    out.flush()
    context.report_asset_materialization(
        metadata={"flood/stdout_bytes": written, "flood/stdout_lines": lines}
    )
