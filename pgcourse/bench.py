"""Measurement helpers for the lessons: interleaved timings, rows/s, peak memory of a subprocess.

Every figure a lesson prints carries its unit (µs, ms, s, ×, rows/s), so the sanitize file can
recognise it; the lesson asserts on the returned numbers, never on printed text.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable

import pandas as pd


async def compare(contenders: dict[str, Callable], *, repeat: int = 5, progress: bool = True,
                  rows: int | None = None, before: Callable | None = None,
                  until: Callable[[pd.DataFrame], bool] | None = None, most: int | None = None,
                  after: pd.DataFrame | None = None) -> pd.DataFrame:
    """Time each contender `repeat` times, interleaved so drift hits all alike; contenders may be async.

    `before` (untimed) runs before every sample, e.g. to empty the table a load fills. Returns one row
    per contender: median and min seconds per call, the samples, and with `rows` (rows handled per
    call) the median rows per second.

    With `until`, a test of the returned frame: while it fails, `repeat` more rounds, up to `most`
    samples per contender in all. On a busy machine other work only ever adds time to a sample, so
    more samples bring the fastest ones down to the floor the lesson's claim is about; a claim about
    floors that is false stays false however many are taken. `after`, a frame this function returned,
    is continued: its samples count, its other contenders are kept as they were, and no round runs
    while `until` holds on it.
    """
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    if after is not None:
        samples = {name: list(taken) for name, taken in after["samples"].items()} | {
            name: list(after["samples"].get(name, [])) for name in contenders}

    def frame() -> pd.DataFrame:
        result = pd.DataFrame({
            "median_s": {n: statistics.median(s) for n, s in samples.items()},
            "min_s": {n: min(s) for n, s in samples.items()},
            "samples": samples,
        })
        if rows is not None:
            result["rows_per_s"] = rows / result["median_s"]
        return result

    most = max(most or repeat, repeat)
    first = after is None or until is None or not until(frame())
    while first or (until is not None and min(len(samples[n]) for n in contenders) + repeat <= most
                    and not until(frame())):
        first = False
        rounds = range(repeat)
        if progress:
            from .progress import progress as bar

            rounds = bar(rounds, desc="measuring", total=repeat)
        for _ in rounds:
            for name, fn in contenders.items():
                if before is not None:
                    prepared = before()
                    if inspect.isawaitable(prepared):
                        await prepared
                started = time.perf_counter()
                result = fn()
                if inspect.isawaitable(result):
                    await result
                samples[name].append(time.perf_counter() - started)
    return frame()


MEASURE_MARK = "__pgcourse_measure__"
CHILD = """
import json, os, resource, sys, time

def _peak_mb():
    try:  # Linux: the high-water mark of this process's resident set
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024
    except OSError:  # macOS reports bytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024

{setup}
_baseline = _peak_mb()
try:  # Linux: reset the high-water mark, so that setup (imports, connecting) does not count
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    _baseline = _peak_mb()
except OSError:
    pass
_started = time.perf_counter()
{body}
_seconds = time.perf_counter() - _started
print({mark!r}, json.dumps({{"baseline_mb": _baseline, "peak_mb": _peak_mb(), "seconds": _seconds}}))
"""


def measure_in_subprocess(body: str, *, setup: str = "", env: dict[str, str] | None = None,
                          timeout: float = 300) -> dict:
    """Run Python code in a fresh interpreter of this environment and measure its memory and time.

    `setup` runs first (imports, connecting) and is not measured; `body` is. Returns peak_mb (peak
    resident set of the process), baseline_mb (after setup), growth_mb, seconds (of body) and stdout.
    tracemalloc cannot see memory that C libraries such as libpq allocate; the resident set can.
    """
    import json
    import os
    import subprocess
    import sys
    import textwrap

    script = CHILD.format(setup=textwrap.dedent(setup), body=textwrap.dedent(body), mark=MEASURE_MARK)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"the measured code failed:\n{result.stderr.strip()[-2000:]}")
    lines = result.stdout.splitlines()
    figures = json.loads(next(line for line in reversed(lines) if line.startswith(MEASURE_MARK)).split(" ", 1)[1])
    figures["growth_mb"] = figures["peak_mb"] - figures["baseline_mb"]
    figures["stdout"] = "\n".join(line for line in lines if not line.startswith(MEASURE_MARK))
    return figures


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
