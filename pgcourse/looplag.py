"""How late an asyncio event loop runs a task that asks to wake every few milliseconds.

A ticker sleeps `interval` seconds again and again; each time it wakes, the lag is how much later
than asked it woke. A coroutine that blocks the loop (a sync driver call, CPU work) shows up as one
long lag, however short the awaits around it. Use as an async context manager:

    async with LoopLag(interval=0.01) as lag:
        await work()
    lag.worst, lag.ticks
"""

from __future__ import annotations

import asyncio
import time


class LoopLag:
    """A ticker task beside the code under test; `worst` is the largest lag it saw, in seconds."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None
        self._asked = 0.0  # when the pending tick started sleeping

    def _lag_now(self) -> float:
        return max(0.0, time.perf_counter() - self._asked - self.interval)

    async def _tick(self) -> None:
        while True:
            self._asked = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(self._lag_now())

    async def __aenter__(self) -> LoopLag:
        self.lags = []
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)  # let the ticker start before the measured code runs
        return self

    async def __aexit__(self, *exc) -> None:
        task, self._task = self._task, None
        if task is not None:
            if self._lag_now() > 0:  # the pending tick is overdue: the code under test kept it waiting
                self.lags.append(self._lag_now())
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def worst(self) -> float:
        """The longest the loop kept the ticker waiting beyond its interval (0 if it never woke)."""
        return max(self.lags, default=0.0)

    @property
    def ticks(self) -> int:
        """How many times the ticker woke."""
        return len(self.lags)
