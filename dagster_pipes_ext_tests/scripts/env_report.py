"""Report how the external process sees its world: cwd, argv, Pipes params and test env vars."""

import os
import sys
import tempfile

from dagster_pipes import decode_param, open_dagster_pipes


def _param_path(name: str) -> str | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    value = decode_param(raw)
    return value.get("path") if isinstance(value, dict) else None


def main() -> None:
    with open_dagster_pipes() as context:
        context_path = _param_path("DAGSTER_PIPES_CONTEXT")
        messages_path = _param_path("DAGSTER_PIPES_MESSAGES")
        facts = {
            "cwd": os.getcwd(),
            "argv": sys.argv[1:],
            "pid": os.getpid(),
            "tmpdir_env": os.environ.get("TMPDIR"),
            "gettempdir": tempfile.gettempdir(),
            "pipes_context": os.environ.get("DAGSTER_PIPES_CONTEXT"),
            "pipes_messages": os.environ.get("DAGSTER_PIPES_MESSAGES"),
            "context_file_existed": bool(context_path and os.path.isfile(context_path)),
            "messages_file_existed": bool(messages_path and os.path.isfile(messages_path)),
            "env": {k: v for k, v in os.environ.items() if k.startswith("PIPES_TEST_")},
        }
        context.log.info(f"env_report running in {facts['cwd']}")
        context.report_custom_message(facts)
        context.report_asset_materialization(
            metadata={
                "cwd": facts["cwd"],
                "pipes_test_value": os.environ.get("PIPES_TEST_VALUE", ""),
            }
        )


if __name__ == "__main__":
    main()
