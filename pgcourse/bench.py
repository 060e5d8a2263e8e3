"""Timing helpers for the lessons' measurements: interleaved samples, medians, formatted figures.

Every figure a lesson prints carries its unit (µs, ms, s, ×, rows/s), so the sanitize file can
recognise it; the lesson asserts on the returned numbers, never on printed text.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable

import pandas as pd


async def compare(contenders: dict[str, Callable], *, repeat: int = 5, progress: bool = True) -> pd.DataFrame:
    """Time each contender `repeat` times, interleaved so drift hits all alike; contenders may be async.

    Returns one row per contender: median and min seconds per call, and the samples.
    """
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    rounds = range(repeat)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="measuring", total=repeat)
    for _ in rounds:
        for name, fn in contenders.items():
            started = time.perf_counter()
            result = fn()
            if inspect.isawaitable(result):
                await result
            samples[name].append(time.perf_counter() - started)
    return pd.DataFrame({
        "median_s": {n: statistics.median(s) for n, s in samples.items()},
        "min_s": {n: min(s) for n, s in samples.items()},
        "samples": samples,
    })


def duration(seconds: float) -> str:
    """12.3 µs / 4.56 ms / 1.23 s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def ratio(x: float) -> str:
    """1.45×."""
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def rate(per_second: float, unit: str = "rows") -> str:
    """123,456 rows/s."""
    return f"{per_second:,.0f} {unit}/s"
