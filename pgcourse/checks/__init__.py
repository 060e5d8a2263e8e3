"""Exercise checks, one module per lesson. A check runs the learner's code against the real
database and judges what it did: results, rows, sessions left open, what hostile input does.
It never reads the learner's source. Success prints one line; failure raises CheckFailed
(what was observed, and a hint); an exercise not yet written raises NotDone.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable
from typing import Any

import psycopg


class _Message(Exception):
    """Renders in a notebook as its message only: the learner's problem, not our traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {line}" if i == 0 else line for i, line in enumerate(str(self).splitlines())]


class NotDone(_Message):
    """The exercise still raises NotImplementedError: there is nothing to check yet."""


class CheckFailed(_Message, AssertionError):
    """The learner's code ran, and did something other than what the exercise asks."""

    def __init__(self, observed: str, hint: str):
        super().__init__(f"{observed}\nHint: {hint}")


def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise NotDone("DATABASE_URL is not set: start JupyterLab with `make lab`.")
    return url


def call(exercise: int, fn: Callable, *args, **kwargs) -> Any:
    """Call the learner's function (awaiting it if async); NotImplementedError becomes NotDone."""
    try:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            raise TypeError("use `await acall(...)` for coroutines")
        return result
    except NotImplementedError:
        raise NotDone(f"Exercise {exercise} is not done yet: replace the `raise NotImplementedError` line"
                      " with your code, run that cell, then run this check again.") from None


async def acall(exercise: int, fn: Callable, *args, **kwargs) -> Any:
    """Like call(), for an async function."""
    try:
        result = fn(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result
    except NotImplementedError:
        raise NotDone(f"Exercise {exercise} is not done yet: replace the `raise NotImplementedError` line"
                      " with your code, run that cell, then run this check again.") from None


def passed(exercise: int, what: str) -> None:
    print(f"Exercise {exercise} passed: {what}")


def last_query_of(conn: psycopg.Connection | int, observer: psycopg.Connection) -> str:
    """The text of the last statement a session sent, as the server saw it (from pg_stat_activity)."""
    pid = conn if isinstance(conn, int) else conn.info.backend_pid
    row = observer.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row[0] if row else ""


def run_async(coro):
    """Run a coroutine from sync code, also inside a notebook whose event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
