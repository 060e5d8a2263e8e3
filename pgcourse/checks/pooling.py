"""Checks for lesson 03 (connection pooling): a leak fixed, a pool sized for a load, a pool that survives.

Every session the learner's code opens is tagged (application_name) and only those are observed, so
other notebooks holding connections to the same database change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import secrets as _secrets
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from . import (
    CHECK_APP,
    CheckFailed,
    NotDone,
    check_connect,
    database_url,
    learner_env,
    new_tag,
    passed,
    query_text,
    run,
    run_async,
    secrets_in,
    sessions_of,
    stop_sessions,
    wait_for_sessions_to_end,
    with_params,
)

LEAK_POOL_MAX = 3
FAILING_CALLS = LEAK_POOL_MAX + 2
POOL_TIMEOUT = 5  # seconds a caller waits for a connection from the check's pool
CALL_LIMIT = 15  # seconds one call of the learner's function may take
PARAMETER_PROBE = 1991  # a customer with 17 orders: a number no query text contains by chance
CONNECTIONS_ALLOWED = 20
P95_WAIT_LIMIT = 0.020
LOAD_SECONDS = 2.0
LOAD_CHOICES = [((100, 0.05), (50, 0.1)), ((100, 0.1), (50, 0.2)), ((200, 0.075), (100, 0.15))]
"""Loads keeping about 5, 10 and 15 connections busy on average; each check run picks one of each and lowers its
rate by 3 to 15 %, so that only a size computed from the load fits them all."""
IMPOSSIBLE_LOAD = (400, 0.1)  # 40 busy on average: more than CONNECTIONS_ALLOWED
MEASURE_RUNS = 3
MARGIN = (1.5, 0.005)  # on a machine too busy for the limit: within 1.5 times the reference's p95, plus 5 ms


@contextmanager
def _quiet_pool_log():
    """psycopg_pool warns when it cleans up after a caller; the check reports what matters itself."""
    logger = logging.getLogger("psycopg.pool")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _end_sessions(tag: str) -> None:
    """End whatever sessions the learner's code left open under this check's tag (a leaked connection idle
    in a transaction would otherwise hold its locks until the kernel restarts)."""
    with contextlib.suppress(psycopg.Error), check_connect(autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
                      " AND pid <> pg_backend_pid()", (tag,))
        wait_for_sessions_to_end(admin, tag, 5)


# --- exercise 1 ----------------------------------------------------------------------------------

class _Watcher:
    """Polls the tagged sessions while the learner's function runs: which pids appeared."""

    def __init__(self, url: str, tag: str):
        self.tag, self.seen = tag, set()
        self._conn = check_connect(url, autocommit=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="exercise 1 watcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psycopg.Error):
                self.seen |= {r["pid"] for r in sessions_of(self._conn, self.tag)}
            self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(psycopg.Error):
            self.seen |= {r["pid"] for r in sessions_of(self._conn, self.tag)}
        self._conn.close()


def order_counts(fn) -> None:
    """Exercise 1: fn(pool, customer_id) -> int. Called 60 times from 8 threads on a pool of 3 (customers
    with many, few and no orders); then once while the check reads the query the server received (the
    id must travel as a parameter); then with its query cancelled: the error must reach the caller, and
    every connection must be back in the pool. Only the pool's sessions may be used, and no statement may send
    more than one row to Python (the pool's connections record it in their cursor class): the server counts."""
    with _quiet_pool_log():
        _order_counts(fn)


def _truth(conn: psycopg.Connection) -> dict[int, int]:
    rows = conn.execute(
        "(SELECT c.id, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id"
        "  WHERE c.id <= 48 OR c.id IN (1008, 6755, 2857, %s) GROUP BY c.id)"
        " UNION ALL (SELECT c.id, 0 FROM customers c WHERE NOT EXISTS"
        "  (SELECT FROM orders o WHERE o.customer_id = c.id) ORDER BY c.id LIMIT 5)", (PARAMETER_PROBE,)).fetchall()
    truth = dict(rows)
    truth.update({0: 0, -7: 0, 10**7: 0})  # no such customer: no orders
    return truth


def _blocked_call(fn, pool, cid, tag, observer, then):
    """Call fn(pool, cid) while the check holds a lock on orders; when one of the learner's sessions waits
    for it, call then(session) (read its query, or cancel it) and let go of the lock.
    Returns (session that waited or None, outcome) where outcome is ('returned', value) or ('raised', exc)."""
    with check_connect(autocommit=False) as locker:
        locker.execute("SET lock_timeout = '5s'")
        try:
            locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        except psycopg.errors.LockNotAvailable:
            holders = observer.execute(
                "SELECT DISTINCT coalesce(nullif(a.application_name, ''), 'a session') FROM pg_locks l"
                " JOIN pg_stat_activity a USING (pid) WHERE l.relation = 'orders'::regclass"
                " AND a.pid <> pg_backend_pid()").fetchall()
            raise CheckFailed(f"The check could not lock orders for a moment: {', '.join(h[0] for h in holders)}"
                              " keeps a transaction open on it.",
                              "commit or roll back in your other notebooks (or restart their kernels), then run"
                              " this check again") from None
        with ThreadPoolExecutor(1) as one:
            future = one.submit(_outcome, fn, pool, cid, tag)
            waiting = None
            deadline = time.monotonic() + 20
            while not future.done() and time.monotonic() < deadline:
                waiting = next((s for s in sessions_of(observer, tag) if s["wait_event_type"] == "Lock"), None)
                if waiting:
                    then(waiting)
                    break
                time.sleep(0.01)
            locker.rollback()
            return waiting, future.result()


def _outcome(fn, pool, cid, tag):
    try:
        return "returned", run(1, fn, pool, cid, tag=tag, timeout=CALL_LIMIT, allowed=(Exception,))
    except (CheckFailed, NotDone):
        raise
    except Exception as exc:  # noqa: BLE001 - the check judges what the learner's function raised
        return "raised", exc


def _order_counts(fn) -> None:
    url = database_url()
    tag = new_tag(1)
    pool_pids: list[int] = []  # appended by the pool's workers as they configure each connection
    with check_connect(url, autocommit=True) as observer:
        truth = _truth(observer)
    fetched: list[tuple[str, object, int]] = []  # (text, params, rows) of each statement that sent rows to Python
    cursor_class = _counting_cursor(fetched)

    def configure(conn):
        conn.cursor_factory = cursor_class
        pool_pids.append(conn.info.backend_pid)

    pool = ConnectionPool(with_params(url, application_name=tag), min_size=LEAK_POOL_MAX, max_size=LEAK_POOL_MAX,
                          timeout=POOL_TIMEOUT, open=False, configure=configure)
    with learner_env(tag), check_connect(url, autocommit=True) as observer:
        try:
            pool.open(wait=True)
            _order_counts_against(fn, pool, pool_pids, truth, tag, url, observer, fetched)
        finally:
            pool.close()
            _end_sessions(tag)
    passed(1, f"{len(truth)} calls from 8 threads with the right counts, the id sent as a parameter,"
              f" {FAILING_CALLS} cancelled queries raised to the caller, every connection back in a pool of"
              f" {LEAK_POOL_MAX}, no session of its own.")


def _counting_cursor(fetched: list) -> type[psycopg.Cursor]:
    """A psycopg cursor class (server-side binding, like the default) that notes how many rows each statement
    sent to Python."""

    class CountingCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            result = super().execute(query, params, **kwargs)
            with contextlib.suppress(Exception):
                if self.pgresult is not None and self.pgresult.ntuples > 1:
                    fetched.append((query_text(query, self), params, self.pgresult.ntuples))
            return result

        def stream(self, query, params=None, **kwargs):
            rows = 0
            try:
                for row in super().stream(query, params, **kwargs):
                    rows += 1
                    yield row
            finally:
                if rows > 1:
                    fetched.append((query_text(query, self), params, rows))

    return CountingCursor


def _judge_fetched(fetched: list) -> None:
    """No statement sent more than one row to Python: the count is the server's to make."""
    if fetched:
        text, params, rows = max(list(fetched), key=lambda f: f[2])
        shown = " ".join(text.split())
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        raise CheckFailed(f"Your function sent {rows} rows to Python to count them: the server ran {shown!r} with"
                          f" {params!r} and returned every row ({len(fetched)} such statement(s) in all).",
                          "let the server count: a query whose result is one row holding the number, so that"
                          " only that number travels to Python")


def _dry(after: str) -> CheckFailed:
    return CheckFailed(f"{after}, the pool (max_size={LEAK_POOL_MAX}) ran dry: a caller waited {POOL_TIMEOUT} s for a"
                       " connection that never came back.",
                       "borrow with `with pool.connection() as conn:`, which gives the connection back however"
                       " the block ends (or put putconn in a finally)")


def _order_counts_against(fn, pool, pool_pids, truth, tag, url, observer, fetched) -> None:
    # 1. many customers, from 8 threads at once
    watcher = _Watcher(url, tag)
    results, failed = {}, threading.Event()

    def one(cid):
        if failed.is_set():  # a verdict now, rather than after every other call timed out too
            return None
        try:
            return run(1, fn, pool, cid, tag=tag, timeout=CALL_LIMIT, allowed=(PoolTimeout,))
        except BaseException:
            failed.set()
            raise

    try:
        with ThreadPoolExecutor(8) as workers:
            calls = {cid: workers.submit(one, cid) for cid in truth}
            results = {cid: call.result() for cid, call in calls.items()}
    except PoolTimeout:
        raise _dry("During 60 calls from 8 threads") from None
    finally:
        watcher.stop()
    deadline = time.monotonic() + 3  # a connection the pool is opening shows on the server before it is configured
    while (own := watcher.seen - set(list(pool_pids))) and time.monotonic() < deadline:
        time.sleep(0.05)
    if own:
        raise CheckFailed(f"Besides the pool's {LEAK_POOL_MAX} sessions, your function opened {len(own)} session(s)"
                          " of its own.", "take the connection from the pool you are given instead of connecting")
    borrowed = pool.get_stats().get("requests_num", 0)
    if borrowed < len(truth):
        raise CheckFailed(f"Only {borrowed} of {len(truth)} calls borrowed a connection from the pool.",
                          "take the connection from the pool you are given: `with pool.connection() as conn:`")
    wrong = {cid: got for cid, got in results.items() if got != truth[cid] or isinstance(got, bool)}
    if wrong:
        cid = next(iter(wrong))
        raise CheckFailed(f"order_count(pool, {cid}) returned {wrong[cid]!r}; that customer has {truth[cid]}"
                          f" order(s) ({len(wrong)} of {len(truth)} calls were wrong).",
                          "count that customer's orders in the database on every call; a customer with no"
                          " orders (or no such customer) has 0")
    _judge_fetched(fetched)
    if len(set(list(pool_pids))) > LEAK_POOL_MAX:
        raise CheckFailed(f"The pool had to open {len(set(list(pool_pids))) - LEAK_POOL_MAX} new connection(s): your"
                          " function gave connections back closed or broken.",
                          "leave the connection open; returning it to the pool is what ends the borrowing")

    # 2. the id travels as a parameter
    def read(session):
        read.query = session["query"]
    read.query = ""
    waited, (how, value) = _blocked_call(fn, pool, PARAMETER_PROBE, tag, observer, read)
    if how == "raised":
        if isinstance(value, PoolTimeout):
            raise _dry("After 60 calls") from None
        raise CheckFailed(f"order_count(pool, {PARAMETER_PROBE}) raised {type(value).__name__}: {value}",
                          "run your function on its own in a cell with the same arguments, and read the error")
    if waited is None:
        raise CheckFailed(f"order_count(pool, {PARAMETER_PROBE}) returned {value!r} while the check held a lock"
                          " on orders: it did not ask the database.",
                          "run the count query on every call; don't keep answers from earlier calls")
    if re.search(rf"(?<![\w$]){PARAMETER_PROBE}(?!\w)", read.query):
        raise CheckFailed(f"For order_count(pool, {PARAMETER_PROBE}) the server received this SQL text:"
                          f" {read.query.strip()!r}; the id was written into it.",
                          "send the id as a query parameter (a %s placeholder, the value in the second argument"
                          " of execute), never formatted into the string")
    if value != truth[PARAMETER_PROBE]:
        raise CheckFailed(f"order_count(pool, {PARAMETER_PROBE}) returned {value!r}; that customer has"
                          f" {truth[PARAMETER_PROBE]} orders.", "count that customer's orders in the database")
    _judge_fetched(fetched)

    # 3. a failing query: the error reaches the caller, and the connection comes back
    def cancel(session):
        observer.execute("SELECT pg_cancel_backend(%s)", (session["pid"],))
    for n in range(1, FAILING_CALLS + 1):
        cid = 4 + n
        waited, (how, value) = _blocked_call(fn, pool, cid, tag, observer, cancel)
        if how == "raised" and isinstance(value, PoolTimeout):
            raise _dry(f"After {n - 1} call(s) whose query failed") from None
        if waited is None:
            raise CheckFailed(f"order_count(pool, {cid}) {'returned ' + repr(value) if how == 'returned' else 'raised'}"
                              " without reading orders (the check held a lock on it).",
                              "run the count query on every call")
        if how == "returned":
            raise CheckFailed(f"The check cancelled the query of order_count(pool, {cid}); your function returned"
                              f" {value!r} instead of raising: the caller cannot tell a failure from a count.",
                              "let the error propagate to the caller: don't catch it (a with block or a finally"
                              " still gives the connection back)")
    deadline = time.monotonic() + 2
    while (stats := pool.get_stats())["pool_available"] != stats["pool_size"] and time.monotonic() < deadline:
        time.sleep(0.05)
    if stats["pool_available"] != stats["pool_size"]:
        out = stats["pool_size"] - stats["pool_available"]
        raise CheckFailed(f"After calls whose query failed, {out} connection(s) were still checked out of the pool.",
                          "give the connection back however the call ends: `with pool.connection() as conn:`")


# --- exercise 2 ----------------------------------------------------------------------------------

async def _p95_wait(url: str, size: int, rate: float, held: float) -> float:
    waits = []
    async with AsyncConnectionPool(with_params(url, application_name=CHECK_APP), min_size=size, max_size=size,
                                   open=False, timeout=30) as pool:
        await pool.wait(timeout=60)

        async def request() -> None:
            asked = time.perf_counter()
            async with pool.connection() as conn:
                waits.append(time.perf_counter() - asked)
                await conn.execute("SELECT pg_sleep(%s)", (held,))

        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for i in range(int(rate * LOAD_SECONDS)):
                # steady arrivals on a fixed schedule, so that a late wake-up does not slow the load down
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                group.create_task(request())
    return statistics.quantiles(waits, n=20)[-1]


def _best_p95(url: str, size: int, rate: float, held: float, runs: int = MEASURE_RUNS) -> float:
    best = float("inf")
    for _ in range(runs):
        best = min(best, run_async(_p95_wait(url, size, rate, held)))
        if best < P95_WAIT_LIMIT:
            break
    return best


def _load(rate: float, held: float) -> str:
    return f"{rate:g} requests/s holding {held * 1000:g} ms"


def _size_of(fn, rate, held) -> int:
    size = run(2, fn, rate, held, timeout=10, hint="run pool_size on its own in a cell with these arguments")
    if not isinstance(size, int) or isinstance(size, bool):
        raise CheckFailed(f"pool_size({rate}, {held}) returned {size!r}, a {type(size).__name__}; a pool holds a"
                          " whole number of connections.", "round up to an int: math.ceil(...)")
    busy = rate * held
    if size < 1:
        raise CheckFailed(f"pool_size({rate}, {held}) returned {size}: a pool needs at least one connection.",
                          "even a load of nothing needs one connection: never return less than 1")
    if size > CONNECTIONS_ALLOWED:
        raise CheckFailed(f"pool_size({rate}, {held}) returned {size}: more than the {CONNECTIONS_ALLOWED}"
                          " connections this service may use.",
                          f"never return more than {CONNECTIONS_ALLOWED}, even when the headroom you add would")
    if size > 2 * busy + 5:
        raise CheckFailed(f"pool_size({rate}, {held}) returned {size} for {_load(rate, held)}, which keeps"
                          f" {busy:g} connections busy on average: more than twice that plus 5.",
                          "size the pool from the load (Little's law: rate times time held), not from the limit")
    return size


def _must_refuse(fn, rate, held, why) -> None:
    try:
        size = run(2, fn, rate, held, timeout=10, allowed=(ValueError,))
    except ValueError:
        return
    raise CheckFailed(f"pool_size({rate}, {held}) returned {size!r}; {why}, so it must raise ValueError.",
                      "check the load before sizing, and raise ValueError with a message that says why")


def pool_size(fn) -> None:
    """Exercise 2: fn(requests_per_second, seconds_held) -> a pool size that keeps the p95 wait under 20 ms,
    for several loads; ValueError for a load that 20 connections cannot carry and for negative inputs."""
    loads = [(round(rate * random.uniform(0.85, 0.97)), held) for rate, held in map(random.choice, LOAD_CHOICES)]
    sizes = {load: _size_of(fn, *load) for load in loads}
    zero = _size_of(fn, 0, 0.05)
    rate, held = IMPOSSIBLE_LOAD
    _must_refuse(fn, rate, held, f"that load keeps {rate * held:g} connections busy on average, more than the"
                 f" {CONNECTIONS_ALLOWED} this service may use")
    _must_refuse(fn, -10, 0.05, "a negative rate is not a load")
    _must_refuse(fn, 10, -0.05, "a negative holding time is not a load")
    url = database_url()
    for (rate, held), size in sizes.items():
        p95 = _best_p95(url, size, rate, held)
        if p95 >= P95_WAIT_LIMIT:
            reference = min(CONNECTIONS_ALLOWED, math.ceil(2 * rate * held))
            ref_p95 = _best_p95(url, reference, rate, held, runs=MEASURE_RUNS) if reference != size else p95
            allowed = max(P95_WAIT_LIMIT, ref_p95 * MARGIN[0] + MARGIN[1])
            if p95 > allowed:
                raise CheckFailed(
                    f"With a pool of {size} for {_load(rate, held)}, the p95 wait for a connection was"
                    f" {p95 * 1000:.0f} ms (best of {MEASURE_RUNS} runs); the limit is {P95_WAIT_LIMIT * 1000:.0f} ms"
                    f" (a pool of {reference}, measured just now, waited {ref_p95 * 1000:.0f} ms; on a busy machine"
                    f" the check allows {MARGIN[0]:g} times that plus {MARGIN[1] * 1000:.0f} ms).",
                    "Little's law gives the average number in use; a pool of just that is full all the time,"
                    " and every hiccup becomes a queue: leave headroom above it")
    passed(2, f"pools of the sizes pool_size returned kept the p95 wait under {P95_WAIT_LIMIT * 1000:.0f} ms for"
              f" three loads (about 5, 10 and 15 connections busy on average); {zero} for no load; ValueError for a"
              f" load beyond {CONNECTIONS_ALLOWED} connections and for negative inputs.")


# --- exercise 3 ----------------------------------------------------------------------------------

def survivor(fn) -> None:
    """Exercise 3: fn(conninfo) -> an open ConnectionPool on that conninfo that keeps (reuses) its
    connections and keeps working after the server ends its sessions, twice; then a second pool from fn, used
    once and closed, must leave no session of the conninfo behind (a probe connection never closed)."""
    with _quiet_pool_log():
        _survivor(fn)


def _close(pool) -> None:
    with contextlib.suppress(Exception):
        if isinstance(pool, AsyncConnectionPool):
            if not pool.closed:
                run_async(pool.close(timeout=5))
        elif hasattr(pool, "close"):
            pool.close(timeout=5) if isinstance(pool, ConnectionPool) else pool.close()


def _use(pool, what: str, hint: str, timeout: float = 10, timeout_hint: str | None = None) -> tuple:
    try:
        with pool.connection(timeout=timeout) as conn:
            return conn.execute("SELECT pg_backend_pid(), current_setting('application_name'),"
                                " current_setting('pgcourse.check', true), count(*) FROM products").fetchone()
    except PoolTimeout:
        raise CheckFailed(f"{what}: the pool gave no connection within {timeout:g} s.", timeout_hint or hint) from None
    except Exception as exc:  # noqa: BLE001 - whatever the learner's pool raised, said in the check's voice
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckFailed(f"{what} failed: {type(exc).__name__}" + (f": {first}" if first else ""), hint) from None


FIRST_USE_HINT = ("build the pool from the conninfo you are given, and let it open its connections (min_size of 1"
                  " or more)")
RECOVERY_TIME = 40  # seconds the first use after a cut may take: the pool checks its dead connections one by one,
# and backs off between them (1, 2, 4, 8 s...): a pool of 6 needs about 15 s
ROUNDS = 2
RECOVERY_HINT = ("the pool checks its dead connections one by one and waits longer after each (1, 2, 4, 8 s...):"
                 " keep min_size small (a few connections) so that it gets through them in time")
SURVIVE_HINT = ("have the pool test a connection before lending it (see the pool's check parameter), rather than"
                " counting on connections being replaced in time")


def _survivor(fn) -> None:
    url = database_url()
    tag, marker = new_tag(3), _secrets.token_hex(4)
    conninfo = make_conninfo(url, application_name=tag, options=f"-c pgcourse.check={marker}")
    made: list = []

    def make_pool(conninfo):  # keeps what fn returned, so that the check closes it even when it fails
        made.append(fn(conninfo))
        return made[-1]

    make_pool.__name__ = getattr(fn, "__name__", "make_pool")
    tags = [tag]

    def made_pool(tag, conninfo):
        pool = run(3, make_pool, conninfo, tag=tag, timeout=30,
                   secrets=sorted(set(secrets_in(url)) | set(secrets_in(conninfo))))
        if not isinstance(pool, ConnectionPool):
            raise CheckFailed(f"make_pool returned {type(pool).__name__ if pool is not None else 'None'}, not a"
                              " psycopg_pool.ConnectionPool.", "return ConnectionPool(conninfo, ...)")
        if pool.closed:
            raise CheckFailed("make_pool returned a pool that is not open: its first user would get PoolClosed.",
                              "return the pool ready to use: open=True, or call its open() before returning it")
        return pool

    try:
        _survivor_against(made_pool(tag, conninfo), tag, marker)
        # the cuts above ended every session under the tag: make a fresh pool to see what closing it leaves behind
        tags.append(leak_tag := new_tag(3))
        leak_conninfo = make_conninfo(url, application_name=leak_tag, options=f"-c pgcourse.check={marker}")
        pool = made_pool(leak_tag, leak_conninfo)
        _use(pool, "Use 1 of a second pool make_pool returned", FIRST_USE_HINT)
        _close(pool)
        with check_connect(autocommit=True) as admin:
            left = wait_for_sessions_to_end(admin, leak_tag, 5)
        if left:
            stop_sessions(leak_tag)
            raise CheckFailed(f"The check called make_pool again, used the pool once and closed it: {len(left)}"
                              " session(s) opened with the conninfo stayed open after the pool was closed.",
                              "close whatever make_pool opens besides the pool (or don't open it): once the pool"
                              " is closed, nothing of it should stay connected")
    finally:
        for pool in made:
            _close(pool)
        for t in tags:
            _end_sessions(t)
    passed(3, "the pool reused its connections; the server ended every session it held, twice, and every use"
              " after that worked.")


def _survivor_against(pool, tag, marker) -> None:
    seen = []
    for i in range(1, 6):  # a moment apart, as requests come: a pool that keeps nothing idle opens one each time
        seen.append(_use(pool, f"Use {i} of the pool you returned", FIRST_USE_HINT))
        time.sleep(0.25)
    pid, app, mark, _ = seen[0]
    if mark != marker:
        raise CheckFailed("The pool's sessions were not opened with the conninfo make_pool was given (they lack the"
                          " settings the check put in it).",
                          "pass the conninfo argument to ConnectionPool, rather than DATABASE_URL or another string")
    if app != tag:
        raise CheckFailed(f"The pool's sessions are named {app!r}, not as in the conninfo make_pool was given.",
                          "keep the conninfo as given (no application_name of your own): the check finds the"
                          " pool's sessions by it")
    if len({row[0] for row in seen}) == len(seen):
        raise CheckFailed(f"Five uses a quarter of a second apart got {len(seen)} different server sessions: the pool"
                          " opens a new connection for each use instead of keeping them.",
                          "let the pool keep its connections: min_size of 1 or more, and no tiny max_idle or"
                          " max_lifetime")
    with check_connect(autocommit=True) as admin:
        for round_ in range(1, ROUNDS + 1):
            pids = [r["pid"] for r in sessions_of(admin, tag)]
            if not pids:
                raise CheckFailed("The pool kept no connection open to be cut, so this proves nothing.",
                                  "keep at least one connection open (min_size=1, the default)")
            for p in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (p,))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()[0]:
                time.sleep(0.02)
            for attempt in range(1, 6):
                _use(pool, f"After the server ended {len(pids)} pooled session(s) (round {round_} of {ROUNDS}), use"
                     f" number {attempt}", SURVIVE_HINT, timeout=RECOVERY_TIME if attempt == 1 else 10,
                     timeout_hint=RECOVERY_HINT if attempt == 1 else None)
