"""Extract: write a synthetic raw orders CSV, as if exported from a shop's database.

The data is deterministic and deliberately a little dirty, so the downstream cleaning step and
its asset checks have something to find: a few duplicated rows, cancelled orders with quantity 0
and orders without a customer email.
"""

import csv
import datetime as dt
import hashlib
import io
import random
import sys

from _shared import COLUMNS, data_dir
from dagster_pipes import open_dagster_pipes

NUM_ORDERS = 200
NUM_DAYS = 14
FIRST_DAY = dt.date(2024, 1, 1)
PRODUCTS = {"widget": 9.99, "gadget": 24.50, "gizmo": 4.25, "doohickey": 99.00}
MISSING_EMAIL = {17, 58, 103, 150}  # order indexes without a customer email
CANCELLED = {9, 77, 188}  # order indexes with quantity 0
DUPLICATED = [3, 40, 41, 99, 120, 170]  # order indexes exported twice
COLUMN_TYPES = {"quantity": "int", "unit_price": "float"}


def generate_orders() -> list[dict]:
    """Return the synthetic raw orders, duplicates included."""
    rng = random.Random(42)
    orders = []
    for i in range(NUM_ORDERS):
        customer = rng.randint(1, 25)
        product = rng.choice(sorted(PRODUCTS))
        orders.append(
            {
                "order_id": f"ORD-{i + 1:05d}",
                "order_date": (FIRST_DAY + dt.timedelta(days=i % NUM_DAYS)).isoformat(),
                "customer_id": f"C{customer:03d}",
                "customer_email": "" if i in MISSING_EMAIL else f"customer{customer}@example.com",
                "product": product,
                "quantity": 0 if i in CANCELLED else rng.randint(1, 5),
                "unit_price": PRODUCTS[product],
            }
        )
    return orders + [dict(orders[i]) for i in DUPLICATED]


def markdown_table(rows: list[dict]) -> str:
    """Render rows as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    with open_dagster_pipes() as context:
        out_path = data_dir(context.extras) / "raw_orders.csv"
        context.log.info(f"Generating {NUM_ORDERS} synthetic orders over {NUM_DAYS} days")
        orders = generate_orders()

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(orders)
        content = buffer.getvalue()
        out_path.write_text(content, encoding="utf-8")

        print(f"wrote {len(orders)} rows to {out_path}")
        missing = sum(1 for o in orders if not o["customer_email"])
        print(
            f"warning: raw export has {len(DUPLICATED)} duplicated rows and {missing} orders "
            "without a customer email",
            file=sys.stderr,
        )
        context.log.info(f"Wrote {out_path}")

        preview = orders[:5]
        context.report_asset_materialization(
            metadata={
                "row_count": len(orders),
                "num_customers": len({o["customer_id"] for o in orders}),
                "path": {"raw_value": str(out_path), "type": "path"},
                "preview": {"raw_value": markdown_table(preview), "type": "md"},
                "preview_table": {
                    "raw_value": {
                        "records": preview,
                        "schema": [
                            {"name": c, "type": COLUMN_TYPES.get(c, "string")} for c in COLUMNS
                        ],
                    },
                    "type": "table",
                },
            },
            data_version=hashlib.sha256(content.encode("utf-8")).hexdigest()[:16],
        )


if __name__ == "__main__":
    main()
