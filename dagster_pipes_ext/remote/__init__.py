"""What runs off the orchestrator: on a Dask worker (the launcher) or on the scheduler.

Every module here imports only the standard library and ``distributed``, never ``dagster`` and
never a module of this package outside ``remote``: workers and schedulers do not have this
package installed. The whole package travels by value (cloudpickle), registered once in
:mod:`dagster_pipes_ext.task`.
"""
