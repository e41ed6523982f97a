"""An example Dagster code location: an orders pipeline whose steps run on Dask via Pipes."""
