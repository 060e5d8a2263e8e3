"""Checks for lesson 07 (async patterns): bounded fan-out with a deadline, cleanup that survives
cancellation, blocking code kept off the event loop.

Every check opens its own pool (tagged: `learner_env`) and hands it to the learner's coroutine, which
runs in the notebook's own event loop. The checks judge behaviour, never the source:

- `lookup_all` gives the learner a lookup function of its own that counts how many lookups run at
  once, which connection each got (it must come from the pool) and how often each id is looked up; it
  times the whole fan-out against the rounds the limit allows, and makes one lookup hang to see the
  deadline honoured, the hung query gone from the server and every pool connection back and usable;
- `run_report` holds a lock on `orders` so that the learner's query waits on the server, cancels the
  learner's task there once, then again and again (as a client disconnect does through anyio cancel
  scopes), then at points swept through a normal run; after each it reads the server (no query of the
  pool still running, no session left in a transaction) and the pool (every connection back, usable),
  and requires the CancelledError to reach the caller;
- `legacy_totals` gives the learner a blocking (sync) function and runs a ticker task beside the
  learner's coroutine: the loop's longest stall and the total time show a blocked loop or calls made
  one after another.
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

CANCEL_GRACE = 3.0
"""Seconds a cancelled task may take to finish its cleanup."""

LEGACY_SECONDS = 0.4
"""How long one call of exercise 3's blocking function takes (pg_sleep on its own connection)."""

MAX_STALL = 0.2
"""Longest the event loop may stall while exercise 3's blocking calls run."""

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

    def __init__(self, exercise: int, fn, *args):
        self.exercise, self.fn, self.args = exercise, fn, args
        self.secrets = secrets_in()
        self.call_text = mask(_describe(fn, args), self.secrets)

    async def __aenter__(self) -> _Task:
        self._cap = captured()
        self.cap = self._cap.__enter__()
        self.task = asyncio.ensure_future(_guarded(self.fn(*self.args)))
        return self

    async def __aexit__(self, *exc) -> None:
        self._cap.__exit__(None, None, None)
        _echo(self.cap, self.secrets)
        if self.cap.leaked(self.secrets):
            raise CheckFailed(f"{self.call_text} printed or logged a secret.",
                              "never print or log a URL with its password in it")

    async def end(self, wait: float) -> bool:
        """Wait up to `wait` seconds for the task to end; whether it did."""
        done, _ = await asyncio.wait({self.task}, timeout=wait)
        return bool(done)

    async def abandon(self) -> None:
        """Cancel the task until it ends, for a few seconds; then leave it."""
        deadline = time.monotonic() + 3
        while not self.task.done() and time.monotonic() < deadline:
            self.task.cancel()
            await asyncio.sleep(0.01)

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


# --- exercise 1 ----------------------------------------------------------------------------------

class _Lookup:
    """The check's lookup: a customer's order count, after LOOKUP_SECONDS on the server; counts how
    many run at once, how often each id is looked up, and that each gets a connection of the pool."""

    def __init__(self, pool_pids: set[int], hang: frozenset[int] = frozenset()):
        self.pool_pids, self.hang = pool_pids, hang
        self.active = self.peak = 0
        self.calls: Counter[int] = Counter()
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
        self.calls[customer_id] += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            seconds = HANG_SECONDS if customer_id in self.hang else LOOKUP_SECONDS
            return await conn.fetchval("SELECT (SELECT count(*) FROM orders WHERE customer_id = $1)::int"
                                       " FROM pg_sleep($2)", customer_id, seconds)
        finally:
            self.active -= 1


LIMIT_HINT = ("acquire a connection per lookup inside `async with semaphore:` (asyncio.Semaphore(limit)), and"
              " start every lookup at once in a TaskGroup")
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
              " the limit, as fast as the limit allows; the deadline raised TimeoutError in time, the hung query"
              " was cancelled on the server and every pool connection came back usable.")


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
        shared = "another operation is in progress" in str(exc)
        raise CheckFailed(f"{call_text} raised InterfaceError: {exc}.",
                          "a connection runs one query at a time: give every lookup a connection of its own"
                          " (async with pool.acquire() as conn: inside the task)" if shared else
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
                              " id must be looked up once.", "look up set(ids) (or dict.fromkeys(ids)), not ids")
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
    await _deadline(fn, pool, pool_pids, observer, tag, first)


async def _deadline(fn, pool, pool_pids, observer, tag, ids) -> None:
    """One lookup hangs, and starts last: only an overall deadline stops the fan-out in time."""
    limit, deadline = 3, 1.2
    ordered = list(ids)  # the hanging id comes last: a deadline per lookup would end it too late
    lookup = _Lookup(pool_pids, hang=frozenset({ordered[-1]}))
    call_text = describe_call(fn, (pool, lookup, ordered, limit, deadline))
    start = time.perf_counter()
    try:
        got = await _fan_out(fn, pool, lookup, ordered, limit, deadline, timeout=deadline + 10, allowed=(Exception,))
    except (CheckFailed, NotDone):
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
    passed(2, "right totals; cancelled mid-query, again and again, and at every point of a run, it let"
              " CancelledError through, no query went on running on the server, and both pool connections came"
              " back idle and usable.")


def _report_truth(observer: psycopg.Connection, customer_id: int) -> tuple[int, Decimal]:
    return tuple(observer.execute(REPORT_SQL, (customer_id,)).fetchone())


async def _run_report(fn, pool, observer, tag, url) -> None:
    busy = observer.execute("SELECT customer_id FROM orders GROUP BY customer_id ORDER BY count(*) DESC,"
                            " customer_id LIMIT 10").fetchall()
    customers = [r[0] for r in random.sample(busy, 2)] + [-random.randint(1, 10**6)]
    for cid in customers:
        call_text = _describe(fn, (pool, cid))
        got = await arun(2, fn, pool, cid, timeout=TIME_LIMIT, tag=tag,
                         hint="run your function on its own in a cell, and read the error")
        expected = _report_truth(observer, cid)
        if not isinstance(got, (tuple, list)) or tuple(got) != expected:
            raise CheckFailed(f"{call_text} returned {got!r}; expected {expected!r}.",
                              "return (number of orders, total of their items as Decimal), with 0 and"
                              " Decimal('0') for a customer without orders")
        await _report_pool_settled(pool, observer, tag, call_text, "returned")
    cid = customers[0]
    await _cancelled_while_waiting(fn, pool, observer, tag, url, cid, again=False)
    await _cancelled_while_waiting(fn, pool, observer, tag, url, cid, again=True)
    await _cancel_sweep(fn, pool, observer, tag, cid, _report_truth(observer, cid))


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
        async with _Task(2, fn, pool, cid) as run:
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
            stopped = await _until(lambda: not _running(observer, tag), 1.0)
        kind, value = run.outcome()
        if not stopped:
            raise CheckFailed(f"{call_text} ended when {how}, but its query went on running on the server: the"
                              " cancellation never reached it.", CLEANUP_HINT)
    if kind != "cancelled":
        what = f"returned {value!r}" if kind == "returned" else f"raised {type(value).__name__}"
        raise CheckFailed(f"{call_text} {what} when {how}; the CancelledError must reach the caller.",
                          "after your cleanup, raise the CancelledError again (a bare `raise`); never return from"
                          " an `except asyncio.CancelledError:` block")
    await _report_pool_settled(pool, observer, tag, call_text, f"was {how}")


async def _cancel_sweep(fn, pool, observer, tag, cid, expected) -> None:
    """Cancel once at points spread over a normal run: mid-query, right after it, while giving back."""
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        await arun(2, fn, pool, cid, timeout=TIME_LIMIT, tag=tag)
        timings.append(time.perf_counter() - start)
    span = min(timings)
    for step in range(9):
        async with _Task(2, fn, pool, cid) as run:
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
        if not await _until(lambda: not _running(observer, tag), 1.0):
            raise CheckFailed(f"{run.call_text} was {when}, and its query went on running on the server.",
                              CLEANUP_HINT)
        await _report_pool_settled(pool, observer, tag, run.call_text, f"was {when}")


# --- exercise 3 ----------------------------------------------------------------------------------

class _Legacy:
    """The check's blocking function: a customer's total spent, on a sync psycopg connection of its own,
    after LEGACY_SECONDS on the server. Counts calls per id and how many run at once."""

    def __init__(self, url: str):
        self.url = url
        self.lock = threading.Lock()
        self.calls: Counter[int] = Counter()
        self.active = self.peak = 0

    def __repr__(self) -> str:
        return "legacy_total"

    def __call__(self, customer_id: int) -> Decimal:
        with self.lock:
            self.calls[customer_id] += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            with psycopg.connect(self.url) as conn:
                return conn.execute("SELECT coalesce(sum(i.quantity * i.unit_price), 0) FROM orders o"
                                    " JOIN order_items i ON i.order_id = o.id, pg_sleep(%s)"
                                    " WHERE o.customer_id = %s", (LEGACY_SECONDS, customer_id)).fetchone()[0]
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
    together, and the event loop never stalls."""
    url = database_url()
    tag = new_tag(3)
    with check_connect(url, autocommit=True) as observer, learner_env(tag, url) as tagged:
        try:
            await _legacy_totals(fn, observer, tagged)
        finally:
            _end_sessions(tag)
    passed(3, "right totals for every id set (empty and repeated ids included), the blocking calls ran together"
              " in threads, and the event loop never stalled.")


async def _legacy_totals(fn, observer, tagged) -> None:
    busy = [r[0] for r in observer.execute("SELECT customer_id FROM orders GROUP BY customer_id"
                                           " ORDER BY count(*) DESC, customer_id LIMIT 10")]
    ids = random.sample(busy, 4) + [-random.randint(1, 10**6)]
    repeated = ids[:3] + ids[:2]
    for case in (ids, repeated, []):
        legacy = _Legacy(tagged)
        call_text = describe_call(fn, (legacy, case))
        stalls: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.ensure_future(_ticker(stalls, stop))
        start = time.perf_counter()
        try:
            got = await arun(3, fn, legacy, case, timeout=TIME_LIMIT,
                             hint="run your function on its own in a cell, and read the error")
        finally:
            took = time.perf_counter() - start
            stop.set()
            await ticker
        distinct = list(dict.fromkeys(case))
        truth = {i: _legacy_truth(observer, i) for i in distinct}
        if not isinstance(got, dict) or got != truth:
            raise CheckFailed(f"{call_text} returned {got!r}"[:300] + f"; expected {truth!r}"[:200] + ".",
                              "return {id: legacy_total(id)} for every distinct id, the empty list included")
        twice = sorted(i for i, n in legacy.calls.items() if n > 1)
        if twice:
            raise CheckFailed(f"{call_text} called legacy_total({twice[0]}) {legacy.calls[twice[0]]} times; each"
                              " distinct id must be looked up once.", "call it for dict.fromkeys(ids), not ids")
        worst = max(stalls, default=0.0)
        if worst > MAX_STALL:
            raise CheckFailed(f"{call_text} stalled the event loop for {worst:.2f} s: the blocking calls ran in the"
                              " loop's own thread, and nothing else could run meanwhile.",
                              "run each blocking call in a worker thread: await asyncio.to_thread(legacy_total, id)")
        allowed = 2 * LEGACY_SECONDS + 0.25
        if distinct and took > allowed:
            raise CheckFailed(f"{call_text} took {took:.2f} s for {len(distinct)} calls of {LEGACY_SECONDS:g} s"
                              f" (allowed: {allowed:.2f} s): the calls ran one after another.",
                              "start every asyncio.to_thread(...) call at once (TaskGroup or gather), then await them")


def _legacy_truth(observer: psycopg.Connection, customer_id: int) -> Decimal:
    return observer.execute("SELECT coalesce(sum(i.quantity * i.unit_price), 0) FROM orders o"
                            " JOIN order_items i ON i.order_id = o.id WHERE o.customer_id = %s",
                            (customer_id,)).fetchone()[0]
