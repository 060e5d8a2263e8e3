"""The sample shop database: schema and deterministic rows, generated on the server."""

from __future__ import annotations

import functools
from importlib.resources import files

import psycopg

# Rows per table at full size (scale=1.0); events is the table big enough for COPY and cursors.
SIZES = {"customers": 10_000, "products": 500, "orders": 50_000, "events": 1_000_000}
TABLES = ("customers", "products", "orders", "order_items", "accounts", "events")


def sizes(scale: float = 1.0) -> dict[str, int]:
    """Row counts for a scale; tests use a small scale to build clusters quickly."""
    return {table: max(10, int(n * scale)) for table, n in SIZES.items()}


@functools.cache
def scripts() -> tuple[str, ...]:
    """The SQL that builds the shop, in order: schema, data, constraints (read once per process)."""
    sql_dir = files("pgcourse") / "sql"
    return tuple(sql_dir.joinpath(f"{name}.sql").read_text() for name in ("schema", "data", "constraints"))


def load(conn: psycopg.Connection, scale: float = 1.0) -> None:
    """Create the schema and rows in the connected database, in one transaction."""
    with conn.transaction():
        for table, n in sizes(scale).items():
            conn.execute("SELECT set_config(%s, %s, true)", (f"course.n_{table}", str(n)))
        for script in scripts():
            conn.execute(script)
