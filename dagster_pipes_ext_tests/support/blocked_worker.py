"""Run ``dask worker`` in a process that cannot import dagster or dagster_pipes_ext.

Used by the tests to prove that the launcher reaches workers by value and needs nothing on the
worker but ``distributed``. Run it with ``--no-nanny`` so the blocked process is the worker.
"""

import sys

for name in ("dagster", "dagster_shared", "dagster_pipes_ext", "dagster_pipes_ext_tests"):
    # A None entry makes every later `import name` raise ImportError.
    sys.modules[name] = None  # type: ignore[assignment]

from distributed.cli.dask_worker import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
