"""Reports two materializations with explicit asset keys and a check on the second."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as context:
    context.log.info(f"selected asset keys: {sorted(context.asset_keys)}")
    context.report_asset_materialization(asset_key="proto_multi_a", metadata={"which": "a"})
    context.report_asset_materialization(
        asset_key="proto_multi_b", metadata={"which": "b"}, data_version="b-1"
    )
    context.report_asset_check(
        asset_key="proto_multi_b",
        check_name="b_nonempty",
        passed=True,
        metadata={"count": 5},
    )
