"""Fails with exit code 3 before ever opening Pipes."""

import sys

print("proto: about to fail", flush=True)
print("proto fatal: configuration missing", file=sys.stderr, flush=True)
sys.exit(3)
