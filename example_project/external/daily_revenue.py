"""A daily-partitioned asset: compute one day's revenue from that day's (synthetic) orders.

The partition being materialized arrives as `context.partition_key` (e.g. "2024-01-05"); the
day's orders are generated deterministically from it, so every partition can be (re)built alone.
"""

import hashlib
import json
import random

from _shared import data_dir
from dagster_pipes import open_dagster_pipes

PRODUCTS = {"widget": 9.99, "gadget": 24.50, "gizmo": 4.25, "doohickey": 99.00}


def main() -> None:
    with open_dagster_pipes() as context:
        day = context.partition_key
        window = context.partition_time_window
        context.log.info(f"Computing revenue for partition {day}")

        rng = random.Random(f"orders-{day}")
        orders = [
            (product, rng.randint(1, 5))
            for product in rng.choices(sorted(PRODUCTS), k=rng.randint(20, 40))
        ]
        by_product: dict[str, float] = {}
        for product, quantity in orders:
            by_product[product] = round(
                by_product.get(product, 0.0) + quantity * PRODUCTS[product], 2
            )
        revenue = round(sum(by_product.values()), 2)

        out_dir = data_dir(context.extras) / "daily_revenue"
        out_dir.mkdir(exist_ok=True)
        out_path = out_dir / f"{day}.json"
        payload = {
            "date": day,
            "order_count": len(orders),
            "revenue": revenue,
            "by_product": by_product,
        }
        out_path.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
        print(f"{day}: {len(orders)} orders, revenue {revenue:.2f} -> {out_path}")

        context.report_asset_materialization(
            metadata={
                "partition_key": day,
                "window_start": window["start"] if window else None,
                "window_end": window["end"] if window else None,
                "order_count": len(orders),
                "revenue": revenue,
                "revenue_by_product": {"raw_value": by_product, "type": "json"},
                "path": {"raw_value": str(out_path), "type": "path"},
            },
            data_version=hashlib.sha256(out_path.read_bytes()).hexdigest()[:16],
        )
        context.log.info(f"Partition {day} done: revenue {revenue:.2f}")


if __name__ == "__main__":
    main()
