"""Report where the launcher put this session's files (the directory of the context file)."""

import os

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, decode_param, open_dagster_pipes

context_path = decode_param(os.environ[DAGSTER_PIPES_CONTEXT_ENV_VAR])["path"]
with open_dagster_pipes() as context:
    context.log.info("reporting the session's directory")
    context.report_asset_materialization(metadata={"session_dir": os.path.dirname(context_path)})
