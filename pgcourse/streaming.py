"""Helpers for lesson 06 (cursors and streaming): memory of fetch strategies by result size, EXPLAIN figures.

Each strategy runs in a fresh interpreter (bench.measure_in_subprocess), so that its peak resident
memory, libpq's buffers included, is its own. The lesson shows the strategies' code; this module only
runs them and collects the figures.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from .bench import duration, measure_in_subprocess


def measure_strategies(strategies: dict[str, str], sizes: Iterable[int], *, setup: str,
                       env: dict[str, str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Run each strategy's code once per size in its own subprocess; the size is in the ROWS environment variable.

    Returns one row per run: strategy, rows, growth_mb (peak resident memory above the baseline after
    setup), seconds, and any figures the code printed as one JSON object on its last line of output.
    """
    runs = [(name, rows) for rows in sizes for name in strategies]
    if progress:
        from .progress import progress as bar

        runs = bar(runs, desc="measuring")
    records = []
    for name, rows in runs:
        figures = measure_in_subprocess(strategies[name], setup=setup, env={**(env or {}), "ROWS": str(rows)})
        extra = {}
        lines = figures["stdout"].strip().splitlines()
        if lines and lines[-1].startswith("{"):
            extra = json.loads(lines[-1])
        records.append({"strategy": name, "rows": rows, "growth_mb": figures["growth_mb"],
                        "seconds": figures["seconds"], **extra})
    return pd.DataFrame(records)


def with_units(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame for display: sizes in MB, times as durations, row counts with separators."""
    shown = frame.copy()
    for column in [c for c in shown.columns if c.endswith("_mb")]:
        shown[column] = shown[column].map(lambda mb: f"{mb:,.1f} MB")
    if "seconds" in shown:
        shown["seconds"] = shown["seconds"].map(duration)
    if "rows" in shown:
        shown["rows"] = shown["rows"].map(lambda n: f"{n:,}")
    return shown


def explain(conn, query: str, params: tuple = ()) -> dict:
    """Run EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) on a query: execution time, most rows any plan node read, buffers."""
    from psycopg import sql

    statement = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}").format(sql.SQL(query))  # the caller's own text
    plan = conn.execute(statement, params).fetchone()[0][0]

    def nodes(node: dict):
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    top = plan["Plan"]
    return {"execution_s": plan["Execution Time"] / 1000,
            "rows_read": round(max(n["Actual Rows"] for n in nodes(top))),
            "buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)}
