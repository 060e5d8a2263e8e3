"""Event loops for lesson 07: a coroutine run in a brand-new loop on a worker thread (as `asyncio.run` per
call does in sync frameworks, task queues and per-test loops) with the notebook's own loop left alone;
the quiet release of connections stranded on loops that have closed; psycopg's message for the
ProactorEventLoop, read from the installed source; and log records counted instead of printed.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import inspect
import logging
import re
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

_REPR = re.compile(r"<(Task|Future)\b[^<>]*(?:<[^<>]*(?:<[^<>]*>[^<>]*)*>[^<>]*)*>")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def outcome(value: object) -> str:
    """A call's result (a string as it is, anything else as its repr), or its exception as
    `Class: first line of message`, without object reprs."""
    if not isinstance(value, BaseException):
        return value if isinstance(value, str) else repr(value)
    text = str(value)
    message = _REPR.sub(lambda m: f"<{m.group(1)} ...>", text.splitlines()[0]) if text else ""
    return f"{type(value).__name__}: {message}" if message else type(value).__name__


def run_in_new_loop(make_coro: Callable[[], Awaitable], *, timeout: float = 10.0) -> str:
    """`asyncio.run(make_coro())` in a worker thread, under `timeout`: its `outcome`, never raised.

    Warnings raised meanwhile (a coroutine that a closed loop never ran) are dropped, so they cannot
    surface in a later cell; the `warnings` state is process-wide, and the caller waits here.
    """

    async def bounded():
        return await asyncio.wait_for(make_coro(), timeout)

    def call() -> str:
        try:
            return outcome(asyncio.run(bounded()))
        except BaseException as error:  # noqa: BLE001 - the outcome is what the lesson shows
            return outcome(error)

    with warnings.catch_warnings(record=True), ThreadPoolExecutor(1, thread_name_prefix="new-loop") as worker:
        warnings.simplefilter("always")
        result = worker.submit(call).result()
        gc.collect()  # what the closed loop left unfinished goes now, quietly
    return result


def collect_stranded() -> int:
    """Collect garbage with warnings and asyncio's log silenced, and say how many warnings were dropped.

    A connection whose event loop has closed cannot be closed through its driver any more (closing
    needs the loop); collecting the last reference to it closes its socket, with a ResourceWarning.
    """
    log = logging.getLogger("asyncio")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            gc.collect()
            gc.collect()
    finally:
        log.setLevel(level)
    return len(seen)


@contextmanager
def counted_logs(name: str) -> Iterator[Counter]:
    """Records of logger `name` (and its children) counted by message, addresses removed, instead of printed."""
    counts: Counter = Counter()

    class Tally(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            counts[f"{record.levelname}: {_ADDRESS.sub('', record.getMessage())}"] += 1

    log = logging.getLogger(name)
    handler, propagate = Tally(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield counts
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def psycopg_proactor_messages() -> dict[str, str]:
    """The error the installed psycopg raises when an async connection meets a ProactorEventLoop (Windows'
    default loop), read from its source: one message per branch of its version-dependent hint, keyed by
    the branch's condition."""
    import psycopg._compat
    import psycopg.connection_async

    raising = next(
        node
        for node in ast.walk(ast.parse(inspect.getsource(psycopg.connection_async)))
        if isinstance(node, ast.Raise) and "ProactorEventLoop" in ast.unparse(node)
    )
    template = ast.Expression(raising.exc.args[0])
    messages = {}
    for node in ast.walk(ast.parse(inspect.getsource(psycopg._compat))):
        if isinstance(node, ast.If) and "_asyncio_run_snippet" in ast.unparse(node):
            condition = ast.unparse(node.test)
            for key, branch in ((condition, node.body), (f"not {condition}", node.orelse)):
                snippet = next(ast.literal_eval(s.value) for s in branch if isinstance(s, ast.Assign))
                messages[key] = eval(compile(template, "psycopg", "eval"), {"_asyncio_run_snippet": snippet})  # noqa: S307 - literals only
            break
    return messages
