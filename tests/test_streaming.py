"""Lesson 06's helpers: strategies measured per size in subprocesses, figures with units, EXPLAIN figures."""

from __future__ import annotations

import pandas as pd
import psycopg
import pytest

from pgcourse import streaming


def test_measure_strategies_runs_each_size_in_its_own_process_and_keeps_printed_figures():
    strategies = {
        "list": "data = list(range(int(os.environ['ROWS'])))\nprint(json.dumps({'length': len(data)}))",
        "nothing": "pass",
    }
    frame = streaming.measure_strategies(strategies, [10, 2_000_000], setup="import json, os", progress=False)
    assert list(zip(frame["strategy"], frame["rows"], strict=True)) == [("list", 10), ("nothing", 10), ("list", 2_000_000),
                                                          ("nothing", 2_000_000)]
    growth = frame.set_index(["strategy", "rows"])["growth_mb"]
    assert growth["list", 2_000_000] > 40 > growth["nothing", 2_000_000]  # 2M ints in a list: about 70 MB
    assert frame.loc[frame["strategy"] == "list", "length"].tolist() == [10, 2_000_000]
    assert frame["length"].isna().sum() == 2


def test_with_units_formats_sizes_times_and_rows():
    shown = streaming.with_units(pd.DataFrame({"rows": [1_000_000], "growth_mb": [952.14], "seconds": [0.0123]}))
    assert shown.iloc[0].tolist() == ["1,000,000", "952.1 MB", "12.3 ms"]


@pytest.mark.usefixtures("checks_database")
def test_explain_reports_time_rows_read_and_buffers():
    import os

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        deep = streaming.explain(conn, "SELECT * FROM events ORDER BY id LIMIT 10 OFFSET %s", (5000,))
        keyset = streaming.explain(conn, "SELECT * FROM events WHERE id > %s ORDER BY id LIMIT 10", (5000,))
    assert deep["rows_read"] == 5010 and keyset["rows_read"] == 10
    assert deep["buffers"] > 5 * keyset["buffers"] > 0 and deep["execution_s"] > 0
