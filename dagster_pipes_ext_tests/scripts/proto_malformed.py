"""Writes malformed lines into the Pipes messages file between messages and after `closed`."""

import os

from dagster_pipes import decode_param, open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info("proto before garbage")
    path = decode_param(os.environ["DAGSTER_PIPES_MESSAGES"])["path"]
    with open(path, "a", encoding="utf-8") as f:
        f.write("this is not json at all\n")
        f.write('{"__dagster_pipes_version": "0.1", "method": "log", "par\n')
        f.write("[1, 2, 3]\n")
    context.log.info("proto after garbage")
    context.report_asset_materialization(metadata={"after_garbage": True})

# after `closed`: an unterminated last line, left in the file when the process exits
with open(path, "a", encoding="utf-8") as f:
    f.write('{"__dagster_pipes_version": "0.1", "method": "lo')
