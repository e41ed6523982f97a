"""A Pipes writer without dagster-pipes: it speaks the file protocol by hand, in pieces.

Stands for non-Python external code. It writes each message line in two halves with a pause in
between, so the launcher sees partial lines and must wait for their newline.
"""

import base64
import json
import os
import time
import zlib


def decode(value: str) -> dict:
    return json.loads(zlib.decompress(base64.b64decode(value)))


messages_path = decode(os.environ["DAGSTER_PIPES_MESSAGES"])["path"]
context = json.load(open(decode(os.environ["DAGSTER_PIPES_CONTEXT"])["path"]))
asset_key = context["asset_keys"][0]


def send(method: str, params: dict | None) -> None:
    line = json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})
    with open(messages_path, "a") as f:
        half = len(line) // 2
        f.write(line[:half])
        f.flush()
        time.sleep(0.03)
        f.write(line[half:] + "\n")


send("opened", {})
for i in range(20):
    send("report_custom_message", {"payload": {"i": i}})
send("log", {"message": "raw writer says hello", "level": "INFO"})
send(
    "report_asset_materialization",
    {
        "asset_key": asset_key,
        "metadata": {"pieces": {"raw_value": 20, "type": "int"}},
        "data_version": None,
    },
)
send("closed", {})
