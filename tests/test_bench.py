"""The measurement helpers: interleaved timings, rows/s, and peak memory that libpq's buffers count in."""

from __future__ import annotations

import asyncio
import sys

import pytest

from pgcourse import bench, target
from pgcourse.notebooks import fresh_database


def test_compare_interleaves_contenders_and_reports_rows_per_second():
    calls: list[str] = []

    async def async_one():
        calls.append("b")

    frame = asyncio.run(bench.compare({"a": lambda: calls.append("a"), "b": async_one}, repeat=3, progress=False,
                                      rows=1000))
    assert calls == ["a", "b"] * 3  # drift hits both alike
    assert list(frame.index) == ["a", "b"] and (frame["rows_per_s"] == 1000 / frame["median_s"]).all()
    assert all(len(samples) == 3 for samples in frame["samples"])


def test_compare_runs_before_untimed_ahead_of_every_sample():
    calls: list[str] = []

    async def slow_reset():
        calls.append("reset")
        await asyncio.sleep(0.2)

    frame = asyncio.run(bench.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=2,
                                      progress=False, before=slow_reset))
    assert calls == ["reset", "a", "reset", "b"] * 2
    assert (frame["median_s"] < 0.1).all()  # the reset's sleep is not timed


def test_figures_carry_units_the_sanitizer_knows():
    assert bench.duration(0.0000123) == "12.3 µs" and bench.duration(0.0456) == "45.6 ms"
    assert bench.duration(2.5) == "2.50 s" and bench.ratio(1.456) == "1.46×" and bench.ratio(854.2) == "854×"
    assert bench.rate(123456.7) == "123,457 rows/s"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resetting the peak needs Linux /proc")
def test_peak_memory_counts_the_body_not_the_setup():
    quiet = bench.measure_in_subprocess("x = 1", setup="big = bytearray(150 * 2**20); del big")
    heavy = bench.measure_in_subprocess("big = bytearray(150 * 2**20)\nbig[::4096] = b'x' * len(big[::4096])")
    assert quiet["growth_mb"] < 20, quiet
    assert heavy["growth_mb"] > 120, heavy
    assert heavy["seconds"] >= 0 and quiet["stdout"] == ""


def test_a_failing_body_reports_its_error():
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        bench.measure_in_subprocess("1 / 0")


def test_peak_memory_sees_libpq_buffers_that_tracemalloc_misses():
    """A client-side fetch holds the whole result in libpq's C memory; a server-side cursor does not."""
    tgt = target.load(say=lambda *_: None)
    setup = "import os, psycopg\nconn = psycopg.connect(os.environ['DATABASE_URL'])"
    query = "SELECT id, occurred_at, customer_id, kind, payload FROM events WHERE id <= 200000"
    with fresh_database(tgt, "bench") as dbname:
        env = tgt.environment(dbname)
        client_side = bench.measure_in_subprocess(
            f"cur = conn.execute({query!r})\nfor row in cur:\n    pass", setup=setup, env=env)
        server_side = bench.measure_in_subprocess(
            f"with conn.cursor(name='stream') as cur:\n    cur.itersize = 1000\n    cur.execute({query!r})\n"
            "    for row in cur:\n        pass", setup=setup, env=env)
    assert client_side["growth_mb"] > 3 * max(server_side["growth_mb"], 5), (client_side, server_side)
