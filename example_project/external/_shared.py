"""Helpers shared by the example pipeline's scripts (stdlib only).

The scripts run as ``python /abs/path/external/<script>.py``, so this folder is ``sys.path[0]``
and they import from here with ``from _shared import ...`` (not as a package).
"""

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COLUMNS = [
    "order_id",
    "order_date",
    "customer_id",
    "customer_email",
    "product",
    "quantity",
    "unit_price",
]
"""Columns of ``raw_orders.csv``; ``cleaned_orders.csv`` adds ``amount`` after them."""


def data_dir(extras: Mapping[str, Any]) -> Path:
    """The folder shared by the pipeline's scripts (from the ``data_dir`` extra).

    Args:
        extras: The Pipes context extras; ``extras["data_dir"]`` names the folder, if set.

    Returns:
        The folder, created if missing: the ``data_dir`` extra, or
        ``<tempdir>/dagster_pipes_ext_example`` when it is absent or empty.
    """
    default = os.path.join(tempfile.gettempdir(), "dagster_pipes_ext_example")
    path = Path(extras.get("data_dir") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path
