"""Checks for lesson 07 (async patterns): bounded fan-out with a deadline, cleanup that survives
cancellation, blocking code kept off the event loop.

Every check opens its own pool (tagged: `learner_env`) and hands it to the learner's coroutine, which
runs in the notebook's own event loop. The checks judge behaviour, never the source:

- `lookup_all` gives the learner a lookup function of its own that counts how many lookups run at
  once, which connection each got (it must come from the pool, one lookup at a time) and how often each
  id is looked up; it times the whole fan-out against the rounds the limit allows, makes one lookup fail
  on the server (its error must reach the caller, nothing may run on), and makes the lookup that starts
  last hang, whatever its id, to see the deadline honoured for the whole call, the hung query gone from the
  server and every pool connection back and usable;
- `run_report` holds a lock on `orders` so that the learner's query waits on the server, cancels the
  learner's task there once, then again and again (as a client disconnect does through anyio cancel
  scopes), holds the lock 2 s without cancelling, then cancels at points swept through a normal run; at
  the moment the outcome reaches the caller no query of the pool may be running, and the pool's
  connections must be the same server processes, back, idle and usable; through a pool with a short
  statement_timeout the query fails, and that error must reach the caller;
- `legacy_totals` gives the learner a blocking (sync) function that counts its calls and the threads they
  ran in, and runs a ticker task beside the learner's coroutine: the loop's longest stall and the total
  time show a blocked loop or calls made one after another; one call is slow (its result still counts)
  and, in a last run, one raises (the error must reach the caller).

Every cancellation test runs under a `LoopWatchdog`: a coroutine that never yields again is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import asyncpg
import psycopg
from psycopg_pool import AsyncConnectionPool

from . import (
    CheckFailed,
    LoopWatchdog,
    NotDone,
    _echo,
    _guarded,
    _Raised,
    arun,
    captured,
    check_connect,
    database_url,
    describe_call,
    learner_env,
    mask,
    new_tag,
    not_done,
    passed,
    secrets_in,
    sessions_of,
    wait_for_sessions_to_end,
    with_params,
)

TIME_LIMIT = 20.0
"""Seconds one call of the learner's coroutine may take before the check cancels it."""

POOL_SIZE = 8
"""Connections in the asyncpg pool of exercise 1: more than any limit the check asks for."""

LOOKUP_SECONDS = 0.25
"""How long one lookup of exercise 1 takes on the server (pg_sleep)."""

HANG_SECONDS = 60.0
"""How long the hanging lookup would take, were it not cancelled."""

SLACK = (1.5, 0.5)
"""A fan-out may take 1.5 times the rounds its limit allows, plus half a second (a busy 2-core laptop)."""

DEADLINE_MARGIN = 0.6
"""Seconds after the deadline by which TimeoutError must have reached the caller."""

TASK_WATCHDOG = 5.0
"""Seconds into a cancellation test after which (plus a grace) a coroutine that holds the event loop is stopped."""

CANCEL_GRACE = 3.0
"""Seconds a cancelled task may take to finish its cleanup."""

LEGACY_SECONDS = 0.4
"""How long one call of exercise 3's blocking function takes (pg_sleep on its own connection)."""

SLOW_LEGACY_SECONDS = 1.5
"""How long the slow call of exercise 3 takes: slower than the others, not wrong."""

MAX_STALL = 0.2
"""Longest the event loop may stall while exercise 3's blocking calls run."""

LOCK_HOLD = 2.0
"""Seconds exercise 2's check holds its lock on orders while the learner's query waits, uncancelled."""

FAILING_TIMEOUT_MS = 200
"""statement_timeout of the pool with which exercise 2's check makes the learner's query fail on the server."""

REPORT_SQL = ("SELECT count(DISTINCT o.id)::int, coalesce(sum(i.quantity * i.unit_price), 0)"
              " FROM orders o LEFT JOIN order_items i ON i.order_id = o.id WHERE o.customer_id = %s")


def _describe(fn, args: tuple) -> str:
    """The call as the learner would write it; a pool is `pool`, whatever its driver."""
    return describe_call(fn, args).replace("(asyncconnectionpool,", "(pool,")


@contextlib.contextmanager
def _quiet_driver_logs() -> Iterator[None]:
    """psycopg warns when it cleans up after a cancelled query; the check reports what matters itself."""
    loggers = [logging.getLogger(name) for name in ("psycopg", "psycopg.pool", "asyncpg")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _end_sessions(tag: str) -> None:
    """End whatever sessions the learner's code left under this check's tag."""
    with contextlib.suppress(psycopg.Error), check_connect(autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
                      " AND pid <> pg_backend_pid()", (tag,))
        wait_for_sessions_to_end(admin, tag, 5)


def _running(observer: psycopg.Connection, tag: str) -> list[dict]:
    """The tagged sessions running a statement now."""
    return [r for r in sessions_of(observer, tag) if r["state"] == "active"]


async def _until(predicate, wait: float) -> bool:
    """Poll predicate() (sync) for up to `wait` seconds without blocking the loop; its last answer."""
    deadline = time.monotonic() + wait
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)


class _Task:
    """The learner's coroutine as a task the check can cancel, its output captured and scanned for secrets."""

    def __init__(self, exercise: int, fn, *args, tag: str | None = None):
        self.exercise, self.fn, self.args, self.tag = exercise, fn, args, tag
        self.secrets = secrets_in()
        self.call_text = mask(_describe(fn, args), self.secrets)

    async def __aenter__(self) -> _Task:
        self._cap = captured()
        self.cap = self._cap.__enter__()
        self.watchdog = LoopWatchdog(TASK_WATCHDOG).__enter__()  # a coroutine that never yields is stopped too
        self.task = asyncio.ensure_future(_guarded(self.fn(*self.args)))
        return self

    async def __aexit__(self, *exc) -> None:
        self.watchdog.__exit__(None, None, None)
        self._cap.__exit__(None, None, None)
        _echo(self.cap, self.secrets)
        if self.cap.leaked(self.secrets):
            raise CheckFailed(f"{self.call_text} printed or logged a secret.",
                              "never print or log a URL with its password in it")
        if self.watchdog.fired:
            with contextlib.suppress(BaseException):
                self.task.exception()  # retrieved: the verdict is this one
            raise CheckFailed(f"{self.call_text} held the event loop without ever yielding, over a second at a time,"
                              " once it was cancelled (a loop around an await that raises at once, such as `except"
                              " CancelledError: continue`); nothing else could run, and the check stopped it.",
                              "never swallow CancelledError: cancel your task once, wait for it to finish, then raise"
                              " the CancelledError again")

    async def end(self, wait: float) -> bool:
        """Wait up to `wait` seconds for the task to end; whether it did."""
        done, _ = await asyncio.wait({self.task}, timeout=wait)
        return bool(done)

    async def abandon(self) -> None:
        """Cancel the task until it ends, for a few seconds; then end its sessions (a task that ignores
        cancellation then gets its driver's error), and leave it."""
        deadline = time.monotonic() + 3
        while not self.task.done() and time.monotonic() < deadline:
            self.task.cancel()
            await asyncio.sleep(0.01)
        if not self.task.done() and self.tag:
            _end_sessions(self.tag)
            await self.end(3)

    def outcome(self) -> tuple[str, object]:
        """('cancelled', None), ('returned', value) or ('raised', exception)."""
        if self.task.cancelled():
            return "cancelled", None
        exc = self.task.exception()
        if exc is not None:
            return ("cancelled", None) if isinstance(exc, asyncio.CancelledError) else ("raised", exc)
        result = self.task.result()
        if isinstance(result, _Raised):
            return "raised", result.exc
        return "returned", result


def _not_done_or(exc: BaseException, call_text: str, hint: str) -> CheckFailed:
    if isinstance(exc, NotImplementedError):
        raise not_done(2) from None
    if isinstance(exc, SystemExit):
        return CheckFailed(f"{call_text} tried to end the program (SystemExit) instead of returning or raising.",
                           "never call sys.exit() or exit() in a function")
    first = mask(str(exc).strip().splitlines()[0], secrets_in()) if str(exc).strip() else ""
    return CheckFailed(f"{call_text} raised {type(exc).__name__}" + (f": {first}" if first else "."), hint)


def _carries(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `exc` is, groups or was raised from an exception of `kind`."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return True
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend([e.__cause__, e.__context__])
    return False


def _error_value(got) -> tuple[object, BaseException] | None:
    """The first (key, exception) of a dict whose values include an exception, else None."""
    if isinstance(got, dict):
        for key, value in got.items():
            if isinstance(value, BaseException):
                return key, value
    return None


# --- exercise 1 ----------------------------------------------------------------------------------

class _Lookup:
    """The check's lookup: a customer's order count, after LOOKUP_SECONDS on the server; counts how
    many run at once, how often each id is looked up, and that each gets a connection of the pool of
    its own. The `hang_nth` lookup to start hangs (whatever its id); a lookup of an id in `fail` fails
    on the server."""

    def __init__(self, pool_pids: set[int], hang_nth: int | None = None, fail: frozenset[int] = frozenset()):
        self.pool_pids, self.hang_nth, self.fail = pool_pids, hang_nth, fail
        self.active = self.peak = self.started = 0
        self.calls: Counter[int] = Counter()
        self.on_conn: Counter[int] = Counter()
        self.shared = False
        self.misuse: str | None = None

    def __call__(self, conn, customer_id: int):
        return self._lookup(conn, customer_id)

    def __repr__(self) -> str:
        return "lookup"

    async def _lookup(self, conn, customer_id):
        if not isinstance(conn, asyncpg.pool.PoolConnectionProxy) or conn.get_server_pid() not in self.pool_pids:
            self.misuse = self.misuse or (f"lookup was given {type(conn).__name__!r}, not a connection acquired from"
                                          " the pool it was handed")
            raise TypeError("lookup needs a connection acquired from the pool: async with pool.acquire() as conn")
        pid = conn.get_server_pid()
        self.calls[customer_id] += 1
        self.started += 1
        nth = self.started
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.on_conn[pid] += 1
        self.shared = self.shared or self.on_conn[pid] > 1
        try:
            if customer_id in self.fail:
                await conn.execute(f"DO $$ BEGIN PERFORM pg_sleep({LOOKUP_SECONDS / 2});"
                                   f" RAISE EXCEPTION 'lookup of customer {int(customer_id)} failed"
                                   f" (the check''s lookup, on purpose)'; END $$")
            seconds = HANG_SECONDS if nth == self.hang_nth else LOOKUP_SECONDS
            return await conn.fetchval("SELECT (SELECT count(*) FROM orders WHERE customer_id = $1)::int"
                                       " FROM pg_sleep($2)", customer_id, seconds)
        finally:
            self.active -= 1
            self.on_conn[pid] -= 1


LIMIT_HINT = ("acquire a connection per lookup inside `async with semaphore:` (asyncio.Semaphore(limit)), and"
              " start every lookup at once in a TaskGroup")
ERROR_HINT = ("let a lookup's error reach the caller: no return_exceptions=True, no `except` around the lookup"
              " that turns it into a value (a TaskGroup raises it in an ExceptionGroup and cancels the other lookups)")
DEADLINE_HINT = ("put one `async with asyncio.timeout(deadline):` around the whole fan-out (around the TaskGroup),"
                 " so that the deadline cancels every lookup still running and raises TimeoutError")


async def lookup_all(fn) -> None:
    """Exercise 1: fn(pool, lookup, ids, limit, deadline) -> {id: result}, at most `limit` lookups at once,
    within `deadline` seconds overall, else TimeoutError with nothing left running."""
    url = database_url()
    tag = new_tag(1)
    pool_pids: set[int] = set()

    async def note(conn) -> None:
        pool_pids.add(conn.get_server_pid())

    with _quiet_driver_logs(), check_connect(url, autocommit=True) as observer, learner_env(tag, url) as tagged:
        pool = await asyncpg.create_pool(tagged, min_size=POOL_SIZE, max_size=POOL_SIZE, init=note)
        try:
            await _lookup_all(fn, pool, pool_pids, observer, tag)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5)
            pool.terminate()
            _end_sessions(tag)
    passed(1, "right counts for every id set (empty and repeated ids included), never more lookups at once than"
              " the limit, as fast as the limit allows; a failing lookup's error reached the caller; the deadline"
              " raised TimeoutError in time, the hung query was cancelled on the server and every pool connection"
              " came back usable.")


def _ids(observer: psycopg.Connection, n: int, rng: random.Random) -> list[int]:
    """n customer ids: some with many orders, some with none, and ids of no customer."""
    busy = [r[0] for r in observer.execute("SELECT customer_id FROM orders GROUP BY customer_id"
                                           " ORDER BY count(*) DESC, customer_id LIMIT 20")]
    idle = [r[0] for r in observer.execute("SELECT id FROM customers c WHERE NOT EXISTS"
                                           " (SELECT FROM orders o WHERE o.customer_id = c.id) ORDER BY id LIMIT 5")]
    ids = rng.sample(busy, n - 2) + (idle[:1] or [-rng.randint(1, 10**6)]) + [-rng.randint(1, 10**6)]
    rng.shuffle(ids)
    return ids


def _truth(observer: psycopg.Connection, ids: list[int]) -> dict[int, int]:
    rows = observer.execute("SELECT customer_id, count(*)::int FROM orders WHERE customer_id = ANY(%s)"
                            " GROUP BY customer_id", (ids,)).fetchall()
    found = dict(rows)
    return {i: found.get(i, 0) for i in ids}


async def _pool_settled(pool: asyncpg.Pool, call_text: str, after: str) -> None:
    """Every connection of the pool idle in it, and usable: POOL_SIZE queries at once."""
    if not await _until(lambda: pool.get_idle_size() == POOL_SIZE, 2.0):
        raise CheckFailed(f"after {call_text} {after}, {POOL_SIZE - pool.get_idle_size()} of the pool's {POOL_SIZE}"
                          " connections were still out of the pool 2 s later.",
                          "acquire with `async with pool.acquire() as conn:`, and make sure no lookup is still"
                          " running when your function returns or raises")

    async def one():
        async with pool.acquire(timeout=5) as conn:
            return await conn.fetchval("SELECT 1")

    try:
        async with asyncio.timeout(10):
            ok = await asyncio.gather(*(one() for _ in range(POOL_SIZE)))
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CheckFailed(f"after {call_text} {after}, the pool no longer served every connection"
                          f" ({type(exc).__name__}).", DEADLINE_HINT) from None
    assert ok == [1] * POOL_SIZE


async def _fan_out(fn, pool, lookup, ids, limit, deadline, timeout=None, allowed=()):
    call_text = describe_call(fn, (pool, lookup, ids, limit, deadline))
    try:
        return await arun(1, fn, pool, lookup, ids, limit, deadline, timeout=timeout or TIME_LIMIT,
                          allowed=(*allowed, asyncpg.InterfaceError),
                          hint="run your function on its own in a cell with the same arguments, and read the error")
    except asyncpg.InterfaceError as exc:
        _judge_misuse(lookup, call_text)
        if lookup.shared:
            raise CheckFailed(f"{call_text} raised InterfaceError: {exc}: two lookups ran on one connection at once.",
                              "a connection runs one query at a time: give every lookup a connection of its own"
                              " (async with pool.acquire() as conn: inside the task)") from None
        if "another operation is in progress" in str(exc):
            raise CheckFailed(f"{call_text} raised InterfaceError: {exc}: a lookup's query was still running on its"
                              " connection when that connection went back to the pool (a lookup that a cancellation"
                              " did not stop: asyncio.shield?).",
                              "let the deadline cancel the lookup itself (no asyncio.shield around it), so that its"
                              " query has ended before `async with pool.acquire()` gives the connection back") from None
        raise CheckFailed(f"{call_text} raised InterfaceError: {exc}.",
                          "use each connection inside its `async with pool.acquire() as conn:` block, and only"
                          " there") from None
    except BaseException:
        _judge_misuse(lookup, call_text)
        raise


def _judge_misuse(lookup: _Lookup, call_text: str) -> None:
    if lookup.misuse:
        raise CheckFailed(f"{call_text}: {lookup.misuse}.",
                          "acquire one connection per lookup: async with pool.acquire() as conn:"
                          " then await lookup(conn, id)")


async def _lookup_all(fn, pool, pool_pids, observer, tag) -> None:
    rng = random.Random()
    cases = [(_ids(observer, 12, rng), 3), (None, 5), ([], 4)]
    first = cases[0][0]
    repeated = first[:6] + first[:3]  # 6 distinct ids, three of them twice
    rng.shuffle(repeated)
    cases[1] = (repeated, 5)
    for ids, limit in cases:
        lookup = _Lookup(pool_pids)
        call_text = describe_call(fn, (pool, lookup, ids, limit, 10.0))
        start = time.perf_counter()
        got = await _fan_out(fn, pool, lookup, ids, limit, 10.0)
        took = time.perf_counter() - start
        _judge_misuse(lookup, call_text)
        truth = _truth(observer, ids)
        if not isinstance(got, dict):
            raise CheckFailed(f"{call_text} returned {type(got).__name__}; expected a dict {{id: result}}.",
                              "collect each lookup's result under its id in a dict, and return the dict")
        if lookup.active:
            raise CheckFailed(f"{call_text} returned while {lookup.active} lookups were still running.",
                              "await every lookup (a TaskGroup does) before you return")
        if got != truth:
            wrong = sorted(set(got) ^ set(truth)) or sorted(i for i in truth if got.get(i) != truth[i])
            raise CheckFailed(f"{call_text} returned {len(got)} entries; expected {len(truth)}, one per distinct id,"
                              f" with lookup's result (first wrong id: {wrong[0]}).",
                              "return {id: await lookup(conn, id)} for every distinct id in ids, the empty list"
                              " included")
        twice = sorted(i for i, n in lookup.calls.items() if n > 1)
        if twice:
            raise CheckFailed(f"{call_text} looked up id {twice[0]} {lookup.calls[twice[0]]} times; each distinct"
                              " id must be looked up once.",
                              "look each distinct id up once: dict.fromkeys(ids) drops repeats and keeps the order")
        if lookup.peak > limit:
            raise CheckFailed(f"{call_text} ran {lookup.peak} lookups at once; the limit was {limit}.", LIMIT_HINT)
        rounds = math.ceil(len(truth) / limit)
        allowed = rounds * LOOKUP_SECONDS * SLACK[0] + SLACK[1]
        if ids and took > allowed:
            how = "they ran one after another" if lookup.peak <= 1 else f"at most {lookup.peak} ran at once"
            raise CheckFailed(f"{call_text} took {took:.2f} s for {len(truth)} lookups of {LOOKUP_SECONDS:g} s each:"
                              f" {how}; {limit} at a time they take {rounds * LOOKUP_SECONDS:.2f} s (allowed:"
                              f" {allowed:.2f} s).",
                              LIMIT_HINT if lookup.peak > 1 else "start the lookups together (TaskGroup or gather),"
                              " not one after another in a loop; the semaphore is what limits them")
        if len(truth) >= limit and lookup.peak < limit:
            raise CheckFailed(f"{call_text} ran at most {lookup.peak} lookups at once; the limit allows {limit}.",
                              LIMIT_HINT)
        await _pool_settled(pool, call_text, "returned")
    await _failing_lookup(fn, pool, pool_pids, observer, tag, first)
    await _deadline(fn, pool, pool_pids, observer, tag, first)


async def _failing_lookup(fn, pool, pool_pids, observer, tag, ids) -> None:
    """One lookup fails on the server: its error must reach the caller, and no lookup may run on after."""
    limit = 3
    ids = list(ids)
    failing = ids[len(ids) // 2]
    lookup = _Lookup(pool_pids, fail=frozenset({failing}))
    call_text = describe_call(fn, (pool, lookup, ids, limit, 10.0))
    what = f"when lookup(conn, {failing}) raised RaiseError"
    try:
        got = await _fan_out(fn, pool, lookup, ids, limit, 10.0, allowed=(Exception,))
    except (CheckFailed, NotDone):
        raise
    except Exception as exc:  # noqa: BLE001 - judged here
        _judge_misuse(lookup, call_text)
        if not _carries(exc, asyncpg.exceptions.RaiseError):
            raise CheckFailed(f"{call_text} raised {type(exc).__name__} ({str(exc)[:80]}) {what}; that error"
                              " itself must reach the caller.", ERROR_HINT) from None
    else:
        bad = _error_value(got)
        shown = (f"a dict in which id {bad[0]} maps to {type(bad[1]).__name__}" if bad else
                 f"{type(got).__name__} {mask(repr(got), secrets_in())[:80]}")
        raise CheckFailed(f"{call_text} returned {shown} {what}; the error must reach the caller.", ERROR_HINT)
    rounds = math.ceil(len(ids) / limit)
    if not await _until(lambda: not lookup.active and not _running(observer, tag), rounds * LOOKUP_SECONDS + 2):
        raise CheckFailed(f"{call_text} raised the error of lookup(conn, {failing}), but"
                          f" {max(lookup.active, len(_running(observer, tag)))} lookup(s) were still running long"
                          " after.", ERROR_HINT)
    await _pool_settled(pool, call_text, f"raised the error of lookup(conn, {failing})")


async def _deadline(fn, pool, pool_pids, observer, tag, ids) -> None:
    """The lookup that starts last hangs, whatever its id: only an overall deadline stops the fan-out in time
    (a deadline per lookup starts its clock rounds after the call began)."""
    limit, deadline = 3, 1.2
    ordered = list(ids)
    lookup = _Lookup(pool_pids, hang_nth=len(dict.fromkeys(ordered)))
    call_text = describe_call(fn, (pool, lookup, ordered, limit, deadline))
    start = time.perf_counter()
    try:
        got = await _fan_out(fn, pool, lookup, ordered, limit, deadline, timeout=deadline + 6, allowed=(Exception,))
    except CheckFailed as failed:
        if "did not finish within" not in failed.observed:
            raise
        raise CheckFailed(f"{call_text}, with one lookup that hangs ({HANG_SECONDS:g} s on the server), was still"
                          f" running {deadline + 6:g} s later, long past its deadline of {deadline:g} s; the check"
                          " cancelled it.",
                          "the deadline must end the whole call: one `async with asyncio.timeout(deadline):` around"
                          " the fan-out cancels every lookup still running. A check of the clock between lookups"
                          " never interrupts a running one, and an `except BaseException:` (or `except"
                          " CancelledError:`) around a lookup swallows that cancellation") from None
    except NotDone:
        raise
    except TimeoutError:
        took = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - judged here
        raise CheckFailed(f"{call_text}, with one lookup that hangs, raised {type(exc).__name__}"
                          f" ({str(exc)[:80]}); expected TimeoutError.", DEADLINE_HINT) from None
    else:
        raise CheckFailed(f"{call_text}, with one lookup that hangs, returned {type(got).__name__} after"
                          f" {time.perf_counter() - start:.1f} s; expected TimeoutError once the deadline passed.",
                          DEADLINE_HINT)
    _judge_misuse(lookup, call_text)
    if took > deadline + DEADLINE_MARGIN:
        raise CheckFailed(f"{call_text}, with one lookup that hangs, raised TimeoutError after {took:.2f} s;"
                          f" the deadline was {deadline:g} s for the whole call.", DEADLINE_HINT)
    if took < deadline - 0.1:
        raise CheckFailed(f"{call_text} raised TimeoutError after {took:.2f} s, before its deadline of {deadline:g} s.",
                          DEADLINE_HINT)
    if lookup.active or not await _until(lambda: not _running(observer, tag), 1.0):
        running = max(lookup.active, len(_running(observer, tag)))
        raise CheckFailed(f"{call_text} raised TimeoutError, but {running} lookup(s) went on running.", DEADLINE_HINT)
    if lookup.peak > limit:
        raise CheckFailed(f"{call_text} ran {lookup.peak} lookups at once; the limit was {limit}.", LIMIT_HINT)
    await _pool_settled(pool, call_text, "raised TimeoutError")


# --- exercise 2 ----------------------------------------------------------------------------------

CLEANUP_HINT = ("run the report in a task of its own and await it through asyncio.shield(); when you are cancelled,"
                " cancel that task once, wait until it has finished (cancellations of you meanwhile must not stop"
                " the wait), then raise the CancelledError again")


async def run_report(fn) -> None:
    """Exercise 2: fn(pool, customer_id) -> (orders, total); cancelled at any point, it lets the
    CancelledError through, leaves no query running and gives the connection back, usable."""
    url = database_url()
    tag = new_tag(2)
    with _quiet_driver_logs(), check_connect(url, autocommit=True) as observer, learner_env(tag, url) as tagged:
        pool_pids: set[int] = set()

        async def note(conn) -> None:
            pool_pids.add(conn.info.backend_pid)

        pool = AsyncConnectionPool(tagged, min_size=2, max_size=2, open=False, timeout=5, configure=note)
        pool.pids = pool_pids  # the server processes of every connection the pool opened
        try:
            await pool.open(wait=True, timeout=10)
            await _run_report(fn, pool, observer, tag, url)
        finally:
            with contextlib.suppress(Exception):
                await pool.close(timeout=2)
            _end_sessions(tag)
    passed(2, "right totals, also after waiting for a lock; cancelled mid-query, again and again, and at points"
              " through a run, it let CancelledError through only once its query had stopped on the server, and"
              " both pool connections came back, the same server processes, idle and usable; a query that failed"
              " on the server raised its error.")


def _report_truth(observer: psycopg.Connection, customer_id: int) -> tuple[int, Decimal]:
    return tuple(observer.execute(REPORT_SQL, (customer_id,)).fetchone())


async def _run_report(fn, pool, observer, tag, url) -> None:
    busy = observer.execute("SELECT customer_id FROM orders GROUP BY customer_id ORDER BY count(*) DESC,"
                            " customer_id LIMIT 10").fetchall()
    customers = [r[0] for r in random.sample(busy, 2)] + [-random.randint(1, 10**6)]
    for cid in customers:
        call_text = _describe(fn, (pool, cid))
        got = await _report_arun(fn, pool, cid, tag=tag, hint="run your function on its own in a cell, and read the error")
        expected = _report_truth(observer, cid)
        if not isinstance(got, (tuple, list)) or tuple(got) != expected:
            raise CheckFailed(f"{call_text} returned {got!r}; expected {expected!r}.",
                              "return (number of orders, total of their items as Decimal), with 0 and"
                              " Decimal('0') for a customer without orders")
        await _report_pool_settled(pool, observer, tag, call_text, "returned")
    cid = customers[0]
    await _cancelled_while_waiting(fn, pool, observer, tag, url, cid, again=False)
    await _cancelled_while_waiting(fn, pool, observer, tag, url, cid, again=True)
    await _lock_held(fn, pool, observer, tag, url, cid)
    await _cancel_sweep(fn, pool, observer, tag, cid, _report_truth(observer, cid))
    await _failing_query(fn, observer, url, cid)


async def _report_arun(fn, pool, cid, **kwargs):
    """arun, with the pool shown as `pool` in what it says."""
    try:
        return await arun(2, fn, pool, cid, timeout=TIME_LIMIT, **kwargs)
    except CheckFailed as failed:
        raise CheckFailed(failed.observed.replace("(asyncconnectionpool,", "(pool,"), failed.hint) from None


async def _lock_held(fn, pool, observer, tag, url, cid) -> None:
    """The query waits LOCK_HOLD seconds for the check's lock, uncancelled: it must wait, and return the result."""
    with _orders_locked(url) as locker:
        locked_at = time.monotonic()
        async with _Task(2, fn, pool, cid, tag=tag) as run:
            await _until(lambda: bool(_running(observer, tag)) or run.task.done(), 5.0)
            await asyncio.sleep(max(0.0, LOCK_HOLD - (time.monotonic() - locked_at)))
            locker.rollback()
            if not await run.end(5.0):
                await run.abandon()
                raise CheckFailed(f"{run.call_text} was still running 5 s after the check's lock on orders was"
                                  " released.", "run your function on its own in a cell, and read the error")
    kind, value = run.outcome()
    expected = _report_truth(observer, cid)
    if kind == "raised":
        if isinstance(value, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
            raise CheckFailed(f"{run.call_text} raised {type(value).__name__} ({str(value).strip()[:70]}) while its"
                              f" query waited {LOCK_HOLD:g} s for a lock the check held on orders: a timeout of your"
                              " own on the server gave up on a query that only had to wait.",
                              "set no statement_timeout or lock_timeout: a server-side timeout does not handle a"
                              " cancellation, it only ends the query later. " + CLEANUP_HINT)
        raise _not_done_or(value, run.call_text, "run your function on its own in a cell, and read the error")
    if kind != "returned" or not isinstance(value, (tuple, list)) or tuple(value) != expected:
        raise CheckFailed(f"{run.call_text} {'was cancelled' if kind == 'cancelled' else f'returned {value!r}'} after"
                          f" its query waited {LOCK_HOLD:g} s for a lock the check held on orders; expected"
                          f" {expected!r}.", "let the query wait for the lock: nothing cancelled it")
    await _report_pool_settled(pool, observer, tag, run.call_text, f"waited {LOCK_HOLD:g} s for a lock")


async def _failing_query(fn, observer, url, cid) -> None:
    """Through a pool whose statement_timeout is short, the query fails on the server: the error must reach
    the caller, not become a result."""
    tag = new_tag("2 failing")
    pool = AsyncConnectionPool(with_params(url, application_name=tag), min_size=1, max_size=1, open=False,
                               timeout=5, kwargs={"options": f"-c statement_timeout={FAILING_TIMEOUT_MS}"})
    try:
        await pool.open(wait=True, timeout=10)
        call_text = _describe(fn, (pool, cid))
        what = (f"when its query failed on the server (the check gave it a pool with statement_timeout ="
                f" {FAILING_TIMEOUT_MS} ms, and held a lock on orders: QueryCanceled)")
        with _orders_locked(url):
            try:
                got = await _report_arun(fn, pool, cid, tag=tag, allowed=(Exception,))
            except (CheckFailed, NotDone):
                raise
            except Exception as exc:  # noqa: BLE001 - judged here
                if not _carries(exc, psycopg.errors.QueryCanceled):
                    raise CheckFailed(f"{call_text} raised {type(exc).__name__} ({str(exc).strip()[:70]}) {what};"
                                      " that error itself must reach the caller.", REPORT_ERROR_HINT) from None
                return
        raise CheckFailed(f"{call_text} returned {got!r} {what}; the error must reach the caller.", REPORT_ERROR_HINT)
    finally:
        with contextlib.suppress(Exception):
            await pool.close(timeout=2)
        _end_sessions(tag)


REPORT_ERROR_HINT = ("let a database error reach the caller as it is: no `except Exception:` that returns a result"
                     " instead (only CancelledError needs handling, and it is raised again)")


async def _report_pool_settled(pool, observer, tag, call_text: str, after: str) -> None:
    """Both pool connections back in the pool, idle on the server (no transaction), and usable."""
    def full():
        stats = pool.get_stats()
        return stats["pool_size"] == 2 and stats["pool_available"] == 2
    if not await _until(full, 3.0):
        stats = pool.get_stats()
        raise CheckFailed(f"after {call_text} {after}, {stats['pool_size'] - stats['pool_available']} of the pool's"
                          " 2 connections never came back to it (the pool can no longer lend it).",
                          "give the connection back in a `finally:` or with `async with pool.connection()`, and"
                          " make that return survive a cancellation (see the task text)")
    stats = pool.get_stats()
    if len(pool.pids) > 2 or stats.get("returns_bad") or stats.get("connections_lost"):
        raise CheckFailed(f"after {call_text} {after}, the pool had to throw a connection away and open a new one"
                          " (psycopg closes a connection when a second cancellation interrupts its cancelling of"
                          " the query, or when it comes back broken): the pool's connections must be the same"
                          " server processes as before.", CLEANUP_HINT)
    left = [r for r in sessions_of(observer, tag) if r["state"] != "idle"]
    if left:
        raise CheckFailed(f"after {call_text} {after}, a session of the pool was '{left[0]['state']}' on the server.",
                          "end the transaction (async with conn.transaction(), or pool.connection()) before the"
                          " connection goes back")
    try:
        async with asyncio.timeout(5), pool.connection() as c1, pool.connection() as c2:
            for conn in (c1, c2):
                await conn.execute("SELECT 1")
    except (TimeoutError, psycopg.Error) as exc:
        raise CheckFailed(f"after {call_text} {after}, the pool could not serve two queries"
                          f" ({type(exc).__name__}).", CLEANUP_HINT) from None


@contextlib.contextmanager
def _orders_locked(url: str) -> Iterator[psycopg.Connection]:
    """Hold an exclusive lock on orders (the check's own session) until the block ends."""
    with check_connect(url) as locker:
        locker.execute("SET lock_timeout = '5s'")
        try:
            locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        except psycopg.errors.LockNotAvailable:
            raise CheckFailed("The check could not lock `orders` within 5 s: another session holds a lock on it.",
                              "end the open transaction that touches orders (another notebook?), then run the"
                              " check again") from None
        try:
            yield locker
        finally:
            locker.rollback()


async def _cancelled_while_waiting(fn, pool, observer, tag, url, cid, again: bool) -> None:
    how = "cancelled again and again while its query waited" if again else "cancelled while its query waited"
    with _orders_locked(url):
        async with _Task(2, fn, pool, cid, tag=tag) as run:
            call_text = run.call_text
            waiting = []

            def query_waits() -> bool:
                waiting[:] = [r["pid"] for r in _running(observer, tag) if r["wait_event_type"] == "Lock"]
                return bool(waiting)

            if not await _until(query_waits, 10.0):
                await run.abandon()
                outcome = run.outcome() if run.task.done() else ("running", None)
                if outcome[0] == "raised":
                    raise _not_done_or(outcome[1], call_text, "run your function on its own, and read the error")
                raise CheckFailed(f"{call_text} never queried orders through the pool it was given.",
                                  "query with a connection from the pool: async with pool.connection() as conn:")
            if not set(waiting) <= pool.pids:
                await run.abandon()
                raise CheckFailed(f"{call_text} queried orders on a connection of its own, not one from the pool.",
                                  "use the pool you are given: async with pool.connection() as conn:")
            cancels = 0
            start = time.monotonic()
            while not run.task.done() and (cancels == 0 or again) and time.monotonic() - start < CANCEL_GRACE:
                run.task.cancel()
                cancels += 1
                await asyncio.sleep(0)
            if not await run.end(CANCEL_GRACE):
                await run.abandon()
                raise CheckFailed(f"{call_text} was still running {CANCEL_GRACE:g} s after it was {how}.",
                                  "never swallow CancelledError, and do not shield the query itself: the server"
                                  " must cancel it")
            running_then = _running(observer, tag)  # at the moment the caller got the outcome, not a moment later
            ran_on = running_then and await _ran_on(observer, tag)
        kind, value = run.outcome()
        if running_then:
            raise CheckFailed(f"{call_text} ended when {how}, but its query was still running on the server at that"
                              f" moment{ran_on}: its cancellation had not been waited for, or never reached it.",
                              CLEANUP_HINT)
    if kind != "cancelled":
        what = f"returned {value!r}" if kind == "returned" else f"raised {type(value).__name__}"
        raise CheckFailed(f"{call_text} {what} when {how}; the CancelledError must reach the caller.",
                          "after your cleanup, raise the CancelledError again (a bare `raise`); never return from"
                          " an `except asyncio.CancelledError:` block")
    await _report_pool_settled(pool, observer, tag, call_text, f"was {how}")


async def _ran_on(observer, tag) -> str:
    """How much longer the tagged sessions' queries ran (up to 3 s), as a phrase."""
    start = time.monotonic()
    if await _until(lambda: not _running(observer, tag), 3.0):
        return f" (it ended {time.monotonic() - start:.2f} s later)"
    return " (and 3 s later still)"


async def _cancel_sweep(fn, pool, observer, tag, cid, expected) -> None:
    """Cancel once at points spread over a normal run: mid-query, right after it, while giving back."""
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        await _report_arun(fn, pool, cid, tag=tag)
        timings.append(time.perf_counter() - start)
    span = min(timings)
    for step in range(9):
        async with _Task(2, fn, pool, cid, tag=tag) as run:
            await asyncio.sleep(span * step / 8)
            run.task.cancel()
            if not await run.end(CANCEL_GRACE):
                await run.abandon()
                raise CheckFailed(f"{run.call_text} was still running {CANCEL_GRACE:g} s after it was cancelled.",
                                  "never swallow CancelledError")
        kind, value = run.outcome()
        when = f"cancelled {1000 * span * step / 8:.0f} ms into a run"
        if kind == "raised":
            raise _not_done_or(value, run.call_text, CLEANUP_HINT)
        if kind == "returned" and (not isinstance(value, (tuple, list)) or tuple(value) != expected):
            raise CheckFailed(f"{run.call_text} returned {value!r} when {when}; it must either finish with the right"
                              " result or let the CancelledError through.", CLEANUP_HINT)
        if _running(observer, tag):
            raise CheckFailed(f"{run.call_text} was {when}, and its query was still running on the server when the"
                              f" caller got the outcome{await _ran_on(observer, tag)}.", CLEANUP_HINT)
        await _report_pool_settled(pool, observer, tag, run.call_text, f"was {when}")


# --- exercise 3 ----------------------------------------------------------------------------------

class LegacyError(Exception):
    """What the check's legacy_total raises for the customer it fails on purpose."""


class _Legacy:
    """The check's blocking function: a customer's total spent, on a sync psycopg connection of its own,
    after LEGACY_SECONDS on the server (`slow` ones longer); an id in `fail` raises LegacyError. Counts
    calls per id, how many run at once, and whether any ran in the event loop's own thread."""

    def __init__(self, url: str, slow: frozenset[int] = frozenset(), fail: frozenset[int] = frozenset()):
        self.url, self.slow, self.fail = url, slow, fail
        self.lock = threading.Lock()
        self.calls: Counter[int] = Counter()
        self.active = self.peak = 0
        self.loop_thread = threading.get_ident()
        self.in_loop_thread = 0

    def __repr__(self) -> str:
        return "legacy_total"

    def __call__(self, customer_id: int) -> Decimal:
        with self.lock:
            self.calls[customer_id] += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.in_loop_thread += threading.get_ident() == self.loop_thread
        try:
            seconds = SLOW_LEGACY_SECONDS if customer_id in self.slow else LEGACY_SECONDS
            with psycopg.connect(self.url) as conn:
                total = conn.execute("SELECT coalesce(sum(i.quantity * i.unit_price), 0) FROM orders o"
                                     " JOIN order_items i ON i.order_id = o.id, pg_sleep(%s)"
                                     " WHERE o.customer_id = %s", (seconds, customer_id)).fetchone()[0]
            if customer_id in self.fail:
                raise LegacyError(f"legacy system: no total for customer {customer_id} (the check's, on purpose)")
            return total
        finally:
            with self.lock:
                self.active -= 1


async def _ticker(stalls: list[float], stop: asyncio.Event) -> None:
    """Wake every 10 ms; record how late each wake-up was."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        stalls.append(time.perf_counter() - start - 0.01)


async def legacy_totals(fn) -> None:
    """Exercise 3: fn(legacy_total, customer_ids) -> {id: total}; the blocking calls run in threads,
    together, each distinct id once, an error of legacy_total reaching the caller, and the event loop
    never stalls."""
    url = database_url()
    tag = new_tag(3)
    with check_connect(url, autocommit=True) as observer, learner_env(tag, url) as tagged:
        try:
            peak = await _legacy_totals(fn, observer, tagged)
        finally:
            _end_sessions(tag)
    passed(3, "right totals for every id set (empty and repeated ids included, and with one slow call), from"
              f" legacy_total called once per distinct id, in worker threads, up to {peak} at once; the event loop"
              f" never stalled for more than {MAX_STALL:g} s, and the error of a failing call reached the caller.")


async def _watched(fn, legacy: _Legacy, case: list[int], allowed=()) -> tuple[object, float, float]:
    """Run the learner's coroutine beside a ticker: (result, seconds taken, the loop's longest stall)."""
    stalls: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticker(stalls, stop))
    start = time.perf_counter()
    try:
        got = await arun(3, fn, legacy, case, timeout=TIME_LIMIT, allowed=allowed,
                         hint="run your function on its own in a cell, and read the error")
    finally:
        took = time.perf_counter() - start
        stop.set()
        await ticker
    return got, took, max(stalls, default=0.0)


def _judge_stall(call_text: str, legacy: _Legacy, worst: float) -> None:
    if worst <= MAX_STALL:
        return
    if legacy.in_loop_thread:
        raise CheckFailed(f"{call_text} stalled the event loop for {worst:.2f} s: {legacy.in_loop_thread} call(s) of"
                          " legacy_total ran in the loop's own thread, and nothing else could run meanwhile.",
                          "run each blocking call in a worker thread: await asyncio.to_thread(legacy_total, id)")
    raise CheckFailed(f"{call_text} stalled the event loop for {worst:.2f} s: the calls ran in worker threads, but"
                      " your coroutine waited for them without awaiting (future.result(), thread.join(),"
                      " executor.map, time.sleep), and nothing else could run meanwhile.",
                      "await the threads instead: await asyncio.to_thread(legacy_total, id) (or await"
                      " loop.run_in_executor(...)) for every id, started together with a TaskGroup or gather")


async def _legacy_totals(fn, observer, tagged) -> int:
    busy = [r[0] for r in observer.execute("SELECT customer_id FROM orders GROUP BY customer_id"
                                           " ORDER BY count(*) DESC, customer_id LIMIT 10")]
    ids = random.sample(busy, 4) + [-random.randint(1, 10**6)]
    repeated = ids[:3] + ids[:2]
    peak = 0
    for case, slow in ((ids, frozenset()), (repeated, frozenset()), ([], frozenset()), (ids, frozenset(ids[1:2]))):
        legacy = _Legacy(tagged, slow=slow)
        call_text = describe_call(fn, (legacy, case))
        got, took, worst = await _watched(fn, legacy, case)
        distinct = list(dict.fromkeys(case))
        truth = {i: _legacy_truth(observer, i) for i in distinct}
        missing = [i for i in distinct if not legacy.calls[i]]
        if missing:
            raise CheckFailed(f"{call_text} never called legacy_total({missing[0]})"
                              + (f" (nor for {len(missing) - 1} other id(s))" if len(missing) > 1 else "")
                              + "; the totals must come from legacy_total, once per distinct id.",
                              "call legacy_total(id) for every distinct id, each in a worker thread:"
                              " await asyncio.to_thread(legacy_total, id)")
        bad = _error_value(got)
        if bad:
            raise CheckFailed(f"{call_text} returned a dict in which id {bad[0]} maps to {type(bad[1]).__name__}.",
                              LEGACY_ERROR_HINT)
        if not isinstance(got, dict) or got != truth:
            wrong = ""
            if isinstance(got, dict) and set(got) == set(truth):
                odd = next(i for i in truth if got[i] != truth[i])
                wrong = f" (id {odd}: {got[odd]!r}, legacy_total returned {truth[odd]!r}" + (
                    f" after {SLOW_LEGACY_SECONDS:g} s, slower than the others)" if odd in slow else ")")
            raise CheckFailed(f"{call_text} returned {got!r}"[:300] + f"; expected {truth!r}"[:200] + wrong + ".",
                              "return {id: legacy_total(id)} for every distinct id, the empty list included, however"
                              " long a call takes (no timeout of your own that replaces a result)")
        twice = sorted(i for i, n in legacy.calls.items() if n > 1)
        if twice:
            raise CheckFailed(f"{call_text} called legacy_total({twice[0]}) {legacy.calls[twice[0]]} times; each"
                              " distinct id must be looked up once.",
                              "call it for each distinct id once: dict.fromkeys(ids) drops repeats and keeps the order")
        _judge_stall(call_text, legacy, worst)
        allowed = (SLOW_LEGACY_SECONDS if slow else LEGACY_SECONDS) + LEGACY_SECONDS + 0.25
        if distinct and took > allowed:
            how = "they ran one after another" if legacy.peak <= 1 else f"at most {legacy.peak} ran at once"
            raise CheckFailed(f"{call_text} took {took:.2f} s for {len(distinct)} calls of {LEGACY_SECONDS:g} s"
                              f" (allowed: {allowed:.2f} s): {how}.",
                              "start every asyncio.to_thread(...) call at once (TaskGroup or gather), with no limit"
                              " of your own, then await them")
        peak = max(peak, legacy.peak)
    await _failing_legacy(fn, observer, tagged, ids)
    return peak


LEGACY_ERROR_HINT = ("let the error of legacy_total reach the caller: no return_exceptions=True, no `except` around"
                     " the call that turns it into a value (a TaskGroup raises it in an ExceptionGroup)")


async def _failing_legacy(fn, observer, tagged, ids) -> None:
    """One call raises LegacyError: it must reach the caller (as it is, in an ExceptionGroup, or as a cause)."""
    failing = ids[2]
    legacy = _Legacy(tagged, fail=frozenset({failing}))
    call_text = describe_call(fn, (legacy, ids))
    what = f"when legacy_total({failing}) raised LegacyError"
    try:
        got, _, worst = await _watched(fn, legacy, ids, allowed=(Exception,))
    except (CheckFailed, NotDone):
        raise
    except Exception as exc:  # noqa: BLE001 - judged here
        if not _carries(exc, LegacyError):
            raise CheckFailed(f"{call_text} raised {type(exc).__name__} ({str(exc)[:80]}) {what}; that error itself"
                              " must reach the caller.", LEGACY_ERROR_HINT) from None
        return
    bad = _error_value(got)
    shown = (f"a dict in which id {bad[0]} maps to {type(bad[1]).__name__}" if bad else
             f"{type(got).__name__} {repr(got)[:80]}")
    raise CheckFailed(f"{call_text} returned {shown} {what}; the error must reach the caller.", LEGACY_ERROR_HINT)


def _legacy_truth(observer: psycopg.Connection, customer_id: int) -> Decimal:
    return observer.execute("SELECT coalesce(sum(i.quantity * i.unit_price), 0) FROM orders o"
                            " JOIN order_items i ON i.order_id = o.id WHERE o.customer_id = %s",
                            (customer_id,)).fetchone()[0]
