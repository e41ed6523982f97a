"""The code location: ``dagster dev -m example_project.definitions``.

``PipesDaskClient()`` with no arguments starts an embedded Dask cluster in the Dagster process
that runs the step; set ``DASK_SCHEDULER_ADDRESS`` (e.g. ``tcp://127.0.0.1:8786``) to send the
external scripts to a running ``dask scheduler`` and its workers instead.

``embedded_dashboard=True`` serves the embedded cluster's Dask dashboard while a step runs (each
materialization links to it); it adds about a second and a half to each step's start.
"""

from dagster import Definitions

from dagster_pipes_ext import PipesDaskClient
from example_project.assets import all_assets

defs = Definitions(
    assets=all_assets,
    resources={"dask_pipes": PipesDaskClient(embedded_dashboard=True)},
)
