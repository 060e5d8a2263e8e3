"""The loop-lag meter: a blocking call shows as one long lag, awaiting keeps the lag small."""

from __future__ import annotations

import asyncio
import time

from pgcourse.looplag import LoopLag


def test_a_blocking_call_shows_as_a_long_lag():
    async def main() -> LoopLag:
        async with LoopLag(interval=0.01) as lag:
            await asyncio.sleep(0.05)
            time.sleep(0.3)  # blocks the loop
            await asyncio.sleep(0.05)
        return lag

    lag = asyncio.run(main())
    assert lag.worst >= 0.25
    assert lag.ticks >= 3


def test_awaiting_keeps_the_lag_small():
    async def main() -> LoopLag:
        async with LoopLag(interval=0.01) as lag:
            await asyncio.sleep(0.3)
        return lag

    lag = asyncio.run(main())
    assert lag.worst < 0.15  # generous: a busy two-core machine
    assert lag.ticks >= 5


def test_a_block_at_the_very_end_is_counted():
    async def main() -> LoopLag:
        async with LoopLag(interval=0.01) as lag:
            time.sleep(0.2)  # the ticker never wakes before the block ends
        return lag

    lag = asyncio.run(main())
    assert lag.worst >= 0.15


def test_no_task_is_left_running():
    async def main() -> set:
        async with LoopLag(interval=0.01):
            await asyncio.sleep(0.02)
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(main()) == set()
