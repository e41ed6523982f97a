"""One process, two assets: per-customer and per-product summaries of the cleaned orders.

With several assets in scope, each `report_asset_materialization` call names its `asset_key`.
"""

import csv
from collections import defaultdict
from pathlib import Path

from _shared import data_dir
from dagster_pipes import open_dagster_pipes


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    """Write rows (tuples) under a header row."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def main() -> None:
    with open_dagster_pipes() as context:
        folder = data_dir(context.extras)
        cleaned_path = folder / "cleaned_orders.csv"
        if not cleaned_path.exists():
            raise FileNotFoundError(
                f"{cleaned_path} does not exist: materialize cleaned_orders first"
            )
        with cleaned_path.open(newline="", encoding="utf-8") as f:
            orders = list(csv.DictReader(f))
        context.log.info(f"Summarizing {len(orders)} cleaned orders")

        per_customer: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        per_product: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for order in orders:
            amount = float(order["amount"])
            per_customer[order["customer_id"]][0] += 1
            per_customer[order["customer_id"]][1] += amount
            per_product[order["product"]][0] += int(order["quantity"])
            per_product[order["product"]][1] += amount

        customers = sorted(per_customer.items(), key=lambda kv: (-kv[1][1], kv[0]))
        customer_path = folder / "customer_summary.csv"
        write_csv(
            customer_path,
            ["customer_id", "orders", "revenue"],
            [(c, int(n), f"{r:.2f}") for c, (n, r) in customers],
        )
        context.report_asset_materialization(
            asset_key="customer_summary",
            metadata={
                "num_customers": len(customers),
                "top_customer": customers[0][0],
                "top_customer_revenue": round(customers[0][1][1], 2),
                "path": {"raw_value": str(customer_path), "type": "path"},
            },
        )

        products = sorted(per_product.items(), key=lambda kv: (-kv[1][1], kv[0]))
        product_path = folder / "product_summary.csv"
        write_csv(
            product_path,
            ["product", "units", "revenue"],
            [(p, int(n), f"{r:.2f}") for p, (n, r) in products],
        )
        context.report_asset_materialization(
            asset_key="product_summary",
            metadata={
                "num_products": len(products),
                "best_selling_product": products[0][0],
                "units_sold": int(sum(n for n, _ in per_product.values())),
                "path": {"raw_value": str(product_path), "type": "path"},
            },
        )
        print(f"wrote {customer_path.name} and {product_path.name} to {folder}")


if __name__ == "__main__":
    main()
