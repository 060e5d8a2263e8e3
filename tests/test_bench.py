"""The measurement helpers: interleaved timings, rows/s, and peak memory that libpq's buffers count in."""

from __future__ import annotations

import asyncio
import sys
import time

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


def busy_then_quiet(busy_calls: int, busy_s: float = 0.03):
    """A contender whose first calls are slowed down, as other work on a busy machine slows them."""
    calls = []

    def run():
        calls.append(1)
        time.sleep(busy_s if len(calls) <= busy_calls else 0.001)
    return run, calls


def test_compare_until_measures_more_while_the_floor_is_hidden_by_a_busy_machine():
    run, calls = busy_then_quiet(busy_calls=5)
    frame = asyncio.run(bench.compare({"a": run}, repeat=5, progress=False, most=20,
                                      until=lambda f: f.loc["a", "min_s"] < 0.015))
    assert len(calls) == 10 and len(frame.loc["a", "samples"]) == 10  # one more round found the floor
    assert frame.loc["a", "min_s"] < 0.015 and frame.loc["a", "median_s"] >= 0.001


def test_compare_until_stops_at_most_when_the_claim_is_false():
    run, calls = busy_then_quiet(busy_calls=100)  # never quiet: the floor really is 30 ms
    frame = asyncio.run(bench.compare({"a": run}, repeat=5, progress=False, most=15,
                                      until=lambda f: f.loc["a", "min_s"] < 0.015))
    assert len(calls) == 15 and frame.loc["a", "min_s"] >= 0.03  # more samples did not make it true


def test_compare_continues_an_earlier_frame_and_keeps_its_other_contenders():
    run, calls = busy_then_quiet(busy_calls=0)
    earlier = asyncio.run(bench.compare({"a": run, "b": run}, repeat=3, progress=False))
    assert len(calls) == 6
    kept = asyncio.run(bench.compare({"a": run}, repeat=3, progress=False, after=earlier, most=9,
                                     until=lambda f: f.loc["a", "min_s"] < 0.015))
    assert len(calls) == 6 and kept.equals(earlier)  # the claim held on what was measured: nothing ran
    more = asyncio.run(bench.compare({"a": run}, repeat=3, progress=False, after=earlier, most=9,
                                     until=lambda f: len(f.loc["a", "samples"]) >= 9))
    assert len(calls) == 12 and len(more.loc["a", "samples"]) == 9 and len(more.loc["b", "samples"]) == 3
    assert list(more.index) == ["a", "b"]


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
