"""Logs at three levels, then reports a materialization carrying every Pipes metadata type."""

from dagster_pipes import open_dagster_pipes

TABLE = {
    "records": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}],
    "schema": [{"name": "a", "type": "int"}, {"name": "b", "type": "string"}],
}
TABLE_SCHEMA = {
    "columns": [
        {
            "name": "a",
            "type": "int",
            "description": "column a",
            "constraints": {"nullable": False, "unique": True},
        },
        {"name": "b", "type": "string"},
    ]
}
LINEAGE = {"deps_by_column": {"a": [{"asset_key": "upstream", "column_name": "x"}]}}

with open_dagster_pipes() as context:
    context.log.info("proto info line")
    context.log.warning("proto warning line")
    context.log.error("proto error line")
    context.report_asset_materialization(
        metadata={
            # raw values, typed by the orchestrator (a raw dict is not allowed by dagster-pipes)
            "raw_text": "hello",
            "raw_int": 42,
            "raw_float": 1.5,
            "raw_bool": True,
            "raw_none": None,
            "raw_list": [1, "two"],
            # explicitly typed values
            "t_text": {"raw_value": "some text", "type": "text"},
            "t_url": {"raw_value": "https://dagster.io/x", "type": "url"},
            "t_path": {"raw_value": "/data/out.parquet", "type": "path"},
            "t_notebook": {"raw_value": "/nb/report.ipynb", "type": "notebook"},
            "t_json": {"raw_value": {"nested": {"n": 1}}, "type": "json"},
            "t_md": {"raw_value": "# Title\n*bold*", "type": "md"},
            "t_float": {"raw_value": 3.25, "type": "float"},
            "t_int": {"raw_value": 7, "type": "int"},
            "t_bool": {"raw_value": False, "type": "bool"},
            "t_dagster_run": {"raw_value": context.run_id, "type": "dagster_run"},
            "t_asset": {"raw_value": "upstream/key", "type": "asset"},
            "t_null": {"raw_value": None, "type": "null"},
            "t_table": {"raw_value": TABLE, "type": "table"},
            "t_table_schema": {"raw_value": TABLE_SCHEMA, "type": "table_schema"},
            "t_lineage": {"raw_value": LINEAGE, "type": "table_column_lineage"},
            "t_timestamp": {"raw_value": 1700000000.5, "type": "timestamp"},
        },
        data_version="proto-v42",
    )
