"""Checks for lesson 09 (a web API under load): the pool sized under the database's limit, the dependency
that lends a pooled connection, and the broken wishlist service fixed.

The service check runs the learner's file for real: uvicorn in a subprocess (`pgcourse.webservice.Service`),
its DATABASE_URL routed through a proxy on 127.0.0.1 (`pgcourse.netlab.NetLab`, which counts the connections
the service opens) and tagged with an `application_name` (so the server's `pg_stat_activity` shows only the
service's sessions). It sends the service requests (`pgcourse.loadgen` for the load), reads the server and the
service's log, stops it with SIGTERM, and names every problem it saw, each with the lesson that taught its fix.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import inspect
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as _sql

from . import (
    CHECK_APP,
    CheckFailed,
    NotDone,
    check_connect,
    database_url,
    mask,
    new_tag,
    passed,
    run,
    run_async,
    secrets_in,
    sessions_of,
    stop_sessions,
    wait_for_sessions_to_end,
    with_params,
)

SCHEMA = "exercise09"
ORIGINAL_SHA256 = "c61d2e47701f04c0b3de44a055c84bcf4cb8cdbd56942589edea8bfafb0eb071"
"""sha256 of exercises/09_web_api_service.py as shipped: that file unchanged is not done yet."""

START_LIMIT = 30.0  # seconds for the service to answer its first request
REQUEST_LIMIT = 4.0  # seconds the check waits for one answer
SLOW_LIMIT = 3.0  # seconds within which a query stuck on a lock must have been answered with 503 or 504
LOAD_REQUESTS, LOAD_CONCURRENCY = 48, 8
OPENED_LIMIT = LOAD_CONCURRENCY + 4  # connections the service may open during the load (a pool growing)
SEQUENTIAL, FAILING = 20, 10  # requests in a row, then failing ones, that a pool must survive
BLOCKED = 0.1  # seconds: a request that needs no database, slower than this and than half the time the
# request whose query waited for a lock still took, was held up by it
CUSTOMER, PRODUCTS = 17, (3, 11, 42)  # the wishlist the check writes
NO_PRODUCT = 999_999
HOSTILE = "zq' OR TRUE OR name ILIKE '"
SEARCHES = ("Lamp", "backpack", "KETTLE", "Eco")
ROLE_LIMIT, RESERVED = 5, 1  # the limited role's connection limit, as the task states it, and one kept free
POOL_LIMIT = ROLE_LIMIT - RESERVED  # sessions the service may hold at once, from startup on
LOCK_TIMEOUT = "2s"  # the check's own wait for its lock: a session of the service holding the table fails it
SHORT_WAIT = 0.3  # seconds a query waits for a lock that a timeout of 0.5 s or more must survive
LATENCY_MS = 150  # added each way to every database round trip while each endpoint is probed for the loop
PROBE_PATH = "/pgcourse-check-probe"  # no such route: a 404 answered by the framework without the database


# --- exercise 1: the pool's size ---------------------------------------------------------------------

_SIZES = [  # (connection_limit, workers, reserved) -> right answer, or None: must raise ValueError
    ((5, 1, 1), 4), ((5, 2, 1), 2), ((20, 4, 2), 4), ((21, 4, 2), 4), ((22, 4, 2), 5), ((5, 4, 1), 1),
    ((100, 3, 0), 33), ((5, 5, 1), None), ((3, 1, 3), None), ((1, 1, 0), 1), ((10, 3, 1), 3),
]


def pool_max(fn: Callable[[int, int, int], int]) -> None:
    """Exercise 1: the largest pool per worker process that fits under the limit, or ValueError."""
    for (limit, workers, reserved), right in _SIZES:
        args = (limit, workers, reserved)
        call = f"pool_max({limit}, {workers}, {reserved})"
        if right is None:
            try:
                got = run(1, fn, *args, allowed=(ValueError,), timeout=10,
                          hint=f"{call} must raise ValueError (no other exception): not even a pool of one fits")
            except ValueError:
                continue
            raise CheckFailed(f"{call} returned {got!r}, but {workers} workers with a pool of even one connection"
                              f" each, plus {reserved} reserved, need {workers + reserved} connections: more than"
                              f" the limit of {limit}.",
                              "when not even a pool of one fits, raise ValueError: a service started with it would"
                              " fail under load instead of at deployment")
        got = run(1, fn, *args, timeout=10, hint="the function only does arithmetic on its three arguments")
        if isinstance(got, bool) or not isinstance(got, int):
            raise CheckFailed(f"{call} returned {got!r} ({type(got).__name__}), not an int.",
                              "a pool's size is a whole number of connections: use integer division")
        if got != right:
            total = workers * got + reserved
            why = (f"{workers} × {got} + {reserved} = {total} connections: over the limit of {limit}"
                   if total > limit else f"{workers} × {right} + {reserved} = {workers * right + reserved} still fits")
            raise CheckFailed(f"{call} returned {got}, the right answer is {right} ({why}).",
                              "each worker process opens its own pool: the pools together, plus the reserved"
                              " connections, must stay within the limit (lesson 09, part 2, several workers)")
    passed(1, f"{len(_SIZES)} limits, worker counts and reservations sized right, and ValueError where no pool fits.")


# --- exercise 2: the dependency ------------------------------------------------------------------------

def _request_with(pool) -> Any:
    """A real Starlette request whose `app.state.pool` is `pool`, as FastAPI hands a dependency."""
    from fastapi import FastAPI
    from starlette.requests import Request

    app = FastAPI()
    app.state.pool = pool
    return Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": [], "query_string": b""})


class _RequestFailed(Exception):
    """What the check's handler raises inside a request, as a failing endpoint would."""


async def _lend(fn, request) -> tuple[contextlib.AbstractAsyncContextManager, Any]:
    """Enter the learner's dependency as FastAPI does (an async context manager made of the generator)."""
    if not inspect.isasyncgenfunction(fn):
        result = fn(request)  # what it raises (NotImplementedError: not done) is judged by the caller
        if inspect.isawaitable(result):
            async with asyncio.timeout(REQUEST_LIMIT):  # not wait_for: its task would let SystemExit escape the loop
                result = await result
        if isinstance(result, psycopg.AsyncConnection):
            await result.close()
        kind = "a coroutine function (async def ... return)" if inspect.iscoroutinefunction(fn) else (
            "a generator function (def ... yield)" if inspect.isgeneratorfunction(fn) else "a plain function")
        raise CheckFailed(f"get_conn is {kind} that returned {type(result).__name__}, not an async generator"
                          " function that yields a connection: FastAPI has nothing to resume when the request ends,"
                          " so nothing gives the connection back.",
                          "write `async def get_conn(request):` with `yield conn` inside `async with"
                          " request.app.state.pool.connection() as conn:` (lesson 09, part 2)")
    cm = contextlib.asynccontextmanager(fn)(request)
    try:
        async with asyncio.timeout(REQUEST_LIMIT):
            conn = await cm.__aenter__()
    except TimeoutError:
        raise CheckFailed(f"get_conn did not yield a connection within {REQUEST_LIMIT:g} s.",
                          "yield as soon as the pool lends a connection: `async with pool.connection() as conn:"
                          " yield conn`") from None
    return cm, conn


FAILED_WORK = "pgcourse_failed_request"  # a temporary table the failing request creates: rolled back, it is gone


async def _kept_work(pool) -> bool:
    """True if a connection of the pool still has the failed request's table (its work was committed)."""
    async with pool.connection() as first, pool.connection() as second:
        kept = False
        for conn in (first, second):
            await conn.rollback()  # whatever state the learner's code left it in
            cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"pg_temp.{FAILED_WORK}",))
            if (await cur.fetchone())[0]:
                kept = True
                await conn.execute(_sql.SQL("DROP TABLE {}").format(_sql.Identifier(FAILED_WORK)))
                await conn.commit()
        return kept


async def _dependency_run(fn, tag: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    url = with_params(database_url(), application_name=tag)
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, timeout=2, open=False)
    await pool.open(wait=True, timeout=10)
    request = _request_with(pool)

    def lent() -> int:
        stats = pool.get_stats()
        return stats.get("pool_size", 0) - stats.get("pool_available", 0)

    try:
        with check_connect(autocommit=True) as observer:
            for i in range(5):  # requests that succeed, one after another: a pool of 2 must serve them all
                cm, conn = await _lend(fn, request)
                if not isinstance(conn, psycopg.AsyncConnection):
                    raise CheckFailed(f"get_conn yielded {type(conn).__name__}, not a connection.",
                                      "yield the connection the pool lends: `async with pool.connection() as conn:"
                                      " yield conn`")
                if getattr(conn, "_pool", None) is not pool:
                    await cm.__aexit__(None, None, None)
                    raise CheckFailed("get_conn yielded a connection it opened itself, not one from"
                                      " `request.app.state.pool`.",
                                      "borrow from the pool the lifespan opened: `request.app.state.pool.connection()`"
                                      " (lesson 03: a connection per request costs a connect each time)")
                await conn.execute("SELECT 1")
                await cm.__aexit__(None, None, None)
                if lent():
                    raise CheckFailed(f"After request {i + 1} ended well, its connection was still out of the pool"
                                      f" ({lent()} lent).",
                                      "give the connection back after `yield`: `async with pool.connection()` does it"
                                      " for you")
            for how in ("error", "cancelled"):  # a failing request, then one abandoned (client went away)
                cm, conn = await _lend(fn, request)
                if how == "error":  # work that must not outlive the failed request
                    await conn.execute(_sql.SQL("CREATE TEMPORARY TABLE {} (n int)").format(_sql.Identifier(FAILED_WORK)))
                else:
                    await conn.execute("SELECT 1")  # its transaction is open, as a failing endpoint's would be
                exc = _RequestFailed("the endpoint failed") if how == "error" else asyncio.CancelledError()
                try:
                    swallowed = await cm.__aexit__(type(exc), exc, None)
                except type(exc) as raised:
                    swallowed = raised is not exc and not isinstance(raised.__cause__, type(exc))
                except BaseException as other:  # noqa: BLE001 - judged below
                    raise CheckFailed(f"When the request failed with {type(exc).__name__}, get_conn raised"
                                      f" {type(other).__name__}: {other}.",
                                      "let the request's own exception pass through the dependency unchanged") from None
                if swallowed:
                    raise CheckFailed(f"When the request failed with {type(exc).__name__}, get_conn swallowed the"
                                      " exception: FastAPI would answer as if it had succeeded.",
                                      "do not catch the request's exception in the dependency; `async with` gives the"
                                      " connection back and lets it through")
                if lent():
                    raise CheckFailed(f"When the request failed ({type(exc).__name__} thrown in at `yield`), its"
                                      " connection never went back to the pool: after a few such requests every"
                                      " request waits for a connection, then fails.",
                                      "give it back in a `finally:` (or with `async with pool.connection()`), which"
                                      " runs however the request ends (lesson 09, part 2)")
            kept = await _kept_work(pool)
            if kept:
                raise CheckFailed("When the request failed, its work was committed: a table the failing request had"
                                  " created in its transaction was still there after the connection went back.",
                                  "give the connection back without committing when the request raises (`async with"
                                  " pool.connection()` rolls back then); never commit in a `finally:`, and leave the"
                                  " connection out of autocommit")
            await asyncio.sleep(0.2)
            stuck = [s for s in sessions_of(observer, tag) if s["state"] and s["state"].startswith("idle in transaction")]
            if stuck:
                raise CheckFailed(f"{len(stuck)} of the pool's sessions sat idle in transaction after the requests.",
                                  "return the connection to the pool, which rolls back what a failed request left open")
            # two requests hold both connections; a third waits, and is served when the first ends
            first, second = await _lend(fn, request), await _lend(fn, request)
            third = asyncio.ensure_future(_lend(fn, request))
            await asyncio.sleep(0.1)
            await first[0].__aexit__(None, None, None)
            try:
                cm3, _ = await asyncio.wait_for(third, REQUEST_LIMIT)
            except (TimeoutError, Exception) as exc:  # noqa: BLE001 - the pool's timeout, or the learner's error
                raise CheckFailed(f"With both connections lent, a third request waited and then failed"
                                  f" ({type(exc).__name__}) although the first request had ended.",
                                  "borrow with `pool.connection()` so that a waiting request gets the connection"
                                  " the moment another gives it back") from None
            for cm in (second[0], cm3):
                await cm.__aexit__(None, None, None)
            if lent():
                raise CheckFailed(f"{lent()} connection(s) stayed out of the pool after every request had ended.",
                                  "give back exactly the connection you borrowed, once")
    finally:
        await pool.close()


def dependency(fn) -> None:
    """Exercise 2: get_conn(request) lends a pooled connection and gets it back however the request ends."""
    import logging

    tag = new_tag(2)
    pool_log = logging.getLogger("psycopg.pool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)  # its warning on a connection given back mid-transaction is the check's to judge
    try:
        run_async(_guarded_dependency(fn, tag))
    except (CheckFailed, NotDone):
        stop_sessions(tag)  # a connection the learner's code kept: the check's pool is closed already
        raise
    finally:
        pool_log.setLevel(level)
    with check_connect(autocommit=True) as observer:
        left = wait_for_sessions_to_end(observer, tag, wait=3)
    if left:
        stop_sessions(tag)
        raise CheckFailed(f"{len(left)} session(s) of the check's pool stayed open after the pool was closed.",
                          "yield a connection borrowed from the pool; never open one of your own")
    passed(2, "9 requests on a pool of 2: successes, a failure and a cancellation each gave the connection back,"
              " the failure's work was rolled back and its exception reached FastAPI, and a waiting request got the"
              " connection another gave back.")


async def _guarded_dependency(fn, tag: str) -> None:
    """The dependency's run, with whatever the learner's code raised (SystemExit too) turned into a verdict."""
    try:
        async with asyncio.timeout(60):
            await _dependency_run(fn, tag)
    except NotImplementedError:
        raise NotDone("Exercise 2 is not done yet: replace the `raise NotImplementedError` line with your code,"
                      " run that cell, then run this check again.") from None
    except TimeoutError:
        raise CheckFailed("The check's requests through get_conn had not all ended after 60 s; it gave up on them.",
                          "look for an await that waits on a connection your own code holds") from None
    except (CheckFailed, NotDone):
        raise
    except SystemExit as exc:
        raise CheckFailed(f"get_conn tried to end the program (SystemExit({exc.code!r})) instead of yielding.",
                          "raise an exception that says what went wrong; never call sys.exit() in a dependency"
                          ) from None
    except BaseException as exc:  # noqa: BLE001 - the learner's error, in the check's voice
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckFailed(f"get_conn raised {type(exc).__name__}" + (f": {first}" if first else "."),
                          "run it by hand: `async with contextlib.asynccontextmanager(get_conn)(request) as conn:`"
                          ) from None


# --- exercise 3: the service ---------------------------------------------------------------------------

PROBLEMS = {
    "per_request": ("a new connection for every request",
                    "open one pool in the lifespan and borrow from it in the dependency (lesson 03, part 1;"
                    " lesson 09, part 1)"),
    "too_many": ("more connections than the role may open",
                 f"size the pool with `pool_max({ROLE_LIMIT}, 1, {RESERVED})`: at most {POOL_LIMIT} connections at"
                 " once, from startup on (a pool's min_size counts too; lesson 09, part 2)"),
    "returned": ("connections left to the garbage collector",
                 "the dependency must `yield` the connection and give it back after, not `return` it"
                 " (lesson 08, part 1; lesson 09, part 2)"),
    "not_given_back": ("connections never given back",
                       "`yield` inside `async with pool.connection() as conn:`, so the pool gets it back when the"
                       " request ends (lesson 09, part 2)"),
    "pool_wait": ("a pool that lets a request wait too little",
                  "give the pool's checkout timeout (POOL_TIMEOUT) a second or two: a request should wait that long"
                  " for a connection another request is giving back before it fails with 503 (lesson 03)"),
    "idle_in_transaction": ("sessions left idle in a transaction",
                            "`yield` the connection inside `async with pool.connection() as conn:`; never `return`"
                            " it from inside that block (it goes back to the pool while you still use it) and"
                            " never share one connection between requests (lesson 09, part 2)"),
    "uncommitted": ("writes never committed",
                    "end each write's transaction: `async with conn.transaction():` commits when the block ends, and"
                    " a connection given back to the pool mid-transaction is rolled back (lesson 04, part 1)"),
    "hung": ("requests that never ended",
             "look for a request that waits on something another request holds: a connection used after it went"
             " back to the pool, or one connection shared by every request (lesson 09, part 2)"),
    "kept_on_error": ("a failed request keeps its connection",
                      "give the connection back in a `finally:` or with `async with`, which also runs when the request"
                      " raises (lesson 09, part 2)"),
    "blocked_loop": ("a blocking call inside `async def`",
                     "in `async def` endpoints await an async driver (psycopg's AsyncConnectionPool) and"
                     " `asyncio.sleep`, never a sync driver or `time.sleep`; or make them plain `def` so FastAPI"
                     " runs them in its thread pool (lesson 07, part 1)"),
    "injection": ("SQL built from the request's text",
                  "pass the value as a parameter (`%s`), never inside an f-string (lesson 01, part 1)"),
    "no_timeout": ("no statement timeout",
                   "give every connection a statement_timeout (the `options` connection parameter) and answer"
                   " QueryCanceled with 503 (lesson 02, part 2; lesson 04, part 1)"),
    "short_timeout": ("a statement timeout too short",
                      "the task asks for 0.5 to 2 s: a query that waits a moment for a lock is normal, and must"
                      " still succeed (lesson 02, part 2)"),
    "timeout_status": ("a cancelled query answered with the wrong status",
                       "answer QueryCanceled (and PoolTimeout) with 503 in an exception handler, so that clients"
                       " know to retry later (lesson 09, part 1)"),
    "errors_hidden": ("errors hidden",
                      "let database errors reach an exception handler that answers with an error status; never"
                      " catch everything and answer success (lesson 09, part 1)"),
    "health_blind": ("a health check that does not ask the database",
                     "make /health run a query (`SELECT 1`) on a pooled connection, so that it fails when the"
                     " database cannot be reached (lesson 09, part 1)"),
    "pool_left_open": ("the pool left open at shutdown",
                       "close the pool after the lifespan's `yield` (lesson 09, part 3)"),
    "no_shutdown": ("a shutdown that never ends",
                    "the lifespan's code after `yield` must finish: close the pool and wait for nothing else"
                    " (lesson 09, part 3)"),
    "contract": ("an endpoint no longer keeps its contract",
                 "keep every path, parameter and JSON shape the file's docstring lists"),
    "secret": ("the password in the service's log",
               "never log DATABASE_URL; log the host and database name, or the URL with the password masked"
               " (lesson 02, part 2)"),
}


@dataclass
class _Findings:
    problems: dict[str, str] = field(default_factory=dict)  # name -> what the check saw (the first time)
    stopped_early: str = ""
    logged: collections.Counter = field(default_factory=collections.Counter)  # exceptions in the service's log

    def add(self, name: str, seen: str) -> None:
        self.problems.setdefault(name, seen)

    def verdict(self, file: str) -> CheckFailed:
        names = [n for n in PROBLEMS if n in self.problems]  # always in the same order: the file's, top down
        items = [f"- {PROBLEMS[n][0]}: {self.problems[n]} (Hint: {PROBLEMS[n][1]}.)" for n in names]
        head = (f"The check found {len(items)} problem{'s' if len(items) > 1 else ''} in {file}:")
        tail = [self.stopped_early] if self.stopped_early else []
        if self.logged:
            shown = [f"{line[:120]} (×{n})" for line, n in self.logged.most_common(3)]
            tail.append("The service's log shows these exceptions: " + "; ".join(shown) + ".")
        first = names[0]
        return CheckFailed("\n".join([head, *items, *tail]), f"start with the first: {PROBLEMS[first][1]}")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepare(admin: psycopg.Connection) -> None:
    """The check's table, with a wishlist for one customer, committed (the service's sessions must see it)."""
    schema, table = _sql.Identifier(SCHEMA), _sql.Identifier(SCHEMA, "wishlist")
    admin.execute(_sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
    admin.execute(_sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    admin.execute(_sql.SQL(
        "CREATE TABLE {} (customer_id int NOT NULL REFERENCES customers (id), product_id int NOT NULL REFERENCES"
        " products (id), quantity int NOT NULL CHECK (quantity BETWEEN 1 AND 99),"
        " PRIMARY KEY (customer_id, product_id))").format(table))
    admin.execute(_sql.SQL("INSERT INTO {} VALUES (%s, %s, 2), (%s, %s, 1)").format(table),
                  (CUSTOMER + 1, PRODUCTS[0], CUSTOMER + 1, PRODUCTS[1]))


def _one_at_a_time(admin: psycopg.Connection, wait: float = 60.0) -> None:
    """Hold the check's advisory lock for this session: two runs at once in one database would share the table."""
    deadline = time.monotonic() + wait
    while not admin.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (SCHEMA,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise CheckFailed(f"Another run of this check has held the database for over {wait:g} s.",
                              "wait for the other run (another notebook or terminal) to finish, then run it again")
        time.sleep(0.2)


def _drop(admin: psycopg.Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        admin.execute(_sql.SQL("DROP TABLE IF EXISTS {}").format(_sql.Identifier(SCHEMA, "wishlist")))


def _search_reference(admin: psycopg.Connection, name: str) -> list[tuple[int, str, Decimal]]:
    return admin.execute("SELECT id, name, price FROM products WHERE strpos(lower(name), lower(%s)) > 0"
                         " ORDER BY id LIMIT 20", (name,)).fetchall()


def _wishlist_rows(admin: psycopg.Connection, customer: int) -> list[tuple[int, int]]:
    return admin.execute(_sql.SQL("SELECT product_id, quantity FROM {} WHERE customer_id = %s ORDER BY product_id")
                         .format(_sql.Identifier(SCHEMA, "wishlist")), (customer,)).fetchall()


def _abandoned(admin: psycopg.Connection) -> int | None:
    """Sessions of this database that ended without saying goodbye (the client went away), PostgreSQL 14+."""
    if admin.info.server_version < 140000:
        return None
    admin.execute("SELECT pg_stat_clear_snapshot()")
    return admin.execute("SELECT sessions_abandoned FROM pg_stat_database WHERE datname = current_database()"
                         ).fetchone()[0]


def _shown(response) -> str:
    """An answer as the learner would read it: status and a short body."""
    if isinstance(response, BaseException):
        return f"no answer ({type(response).__name__})"
    body = response.text.strip().replace("\n", " ")
    return f"{response.status_code} {body[:80] + '...' if len(body) > 80 else body}".strip()


class _Client:
    """httpx.AsyncClient on the service: one request at a time, each within REQUEST_LIMIT, timed."""

    def __init__(self, base_url: str):
        import httpx

        self.httpx = httpx
        self.client = httpx.AsyncClient(base_url=base_url, timeout=REQUEST_LIMIT,
                                        limits=httpx.Limits(max_keepalive_connections=0))

    async def send(self, method: str, path: str, *, json=None, params=None, timeout=REQUEST_LIMIT):
        """(response or the client's exception, seconds); `self.ended` is when the last answer came"""
        began = time.perf_counter()
        try:
            response = await self.client.request(method, path, json=json, params=params, timeout=timeout)
        except self.httpx.HTTPError as exc:
            response = exc
        return response, time.perf_counter() - began

    async def ended(self, method: str, path: str, **kwargs):
        """(response, seconds, the moment it ended)"""
        response, seconds = await self.send(method, path, **kwargs)
        return response, seconds, time.perf_counter()

    async def close(self) -> None:
        await self.client.aclose()


def _json(response) -> Any:
    try:
        return response.json()
    except Exception:  # noqa: BLE001 - not JSON: the caller reports the body
        return None


async def _answered_later(client: _Client) -> bool:
    """After a failed /health: does one sent 1 s later succeed (the pool is not dry, it only waits too little)?"""
    await asyncio.sleep(1.0)
    again, _ = await client.send("GET", "/health")
    return not isinstance(again, BaseException) and again.status_code == 200


async def _lifetimes(svc, found: _Findings) -> None:
    """Phase 1: requests in a row, then failing ones: a pool whose connections are not given back runs dry."""
    client = _Client(svc.url)
    try:
        for i in range(SEQUENTIAL):
            response, seconds = await client.send("GET", "/health")
            if isinstance(response, BaseException) or response.status_code != 200:
                if i == 0:
                    found.add("contract", f"GET /health answered {_shown(response)}, not 200 {{\"status\": \"ok\"}}")
                    return
                if await _answered_later(client):
                    found.add("pool_wait", f"{i} requests in a row were answered, then GET /health got"
                                           f" {_shown(response)}, yet one sent 1 s later was answered: the"
                                           " connections do come back, but a request waits too little for one")
                else:
                    found.add("not_given_back", f"{i} requests in a row were answered, then GET /health got"
                                                f" {_shown(response)}: the connections lent before were never"
                                                " given back, and the pool ran dry")
                return
        for _ in range(FAILING):
            response, _ = await client.send("POST", f"/customers/{CUSTOMER}/wishlist",
                                            json={"product_id": NO_PRODUCT, "quantity": 1})
            if isinstance(response, BaseException):
                break
        for _ in range(3):
            response, _ = await client.send("GET", "/health")
            if isinstance(response, BaseException) or response.status_code != 200:
                if await _answered_later(client):
                    found.add("pool_wait", f"after {FAILING} requests that failed in the database, GET /health got"
                                           f" {_shown(response)}, yet one sent 1 s later was answered: the"
                                           " connections do come back, but a request waits too little for one")
                    return
                found.add("kept_on_error", f"after {FAILING} requests that failed in the database (a product that"
                                           f" does not exist), GET /health got {_shown(response)}: each failed"
                                           " request kept its connection")
                return
    finally:
        await client.close()


async def _basics(client: _Client, admin: psycopg.Connection, found: _Findings) -> None:
    """Each endpoint's contract on right input, and the hostile search."""
    response, _ = await client.send("GET", "/health")
    if isinstance(response, BaseException) or response.status_code != 200 or _json(response) != {"status": "ok"}:
        found.add("contract", f"GET /health answered {_shown(response)}, not 200 {{\"status\": \"ok\"}}")
    for name in (*SEARCHES[:2], HOSTILE):
        response, _ = await client.send("GET", "/products/search", params={"name": name})
        right = [(i, n, p) for i, n, p in _search_reference(admin, name)]
        body = _json(response) if not isinstance(response, BaseException) else None
        try:
            got = [(int(p["id"]), p["name"], Decimal(str(p["price"]))) for p in body["products"]]
        except (TypeError, KeyError, ValueError, ArithmeticError):
            got = None
        if got == right:
            continue
        if name == HOSTILE:
            found.add("injection", f"GET /products/search?name={HOSTILE} answered"
                      + (f" {len(got)} products, although no product's name contains that text: the value"
                         " became part of the SQL" if got else f" {_shown(response)} instead of an empty list"))
        else:
            found.add("contract", f"GET /products/search?name={name} answered {_shown(response)}; the right answer"
                                  f" is {len(right)} products, by id")
    for product, quantity in ((PRODUCTS[1], 3), (PRODUCTS[0], 5), (PRODUCTS[1], 4)):
        response, _ = await client.send("POST", f"/customers/{CUSTOMER}/wishlist",
                                        json={"product_id": product, "quantity": quantity})
        if isinstance(response, BaseException) or response.status_code != 201:
            found.add("contract", f"POST /customers/{CUSTOMER}/wishlist {{\"product_id\": {product}, \"quantity\":"
                                  f" {quantity}}} answered {_shown(response)}, not 201")
            return
    rows = _wishlist_rows(admin, CUSTOMER)
    if rows != [(PRODUCTS[0], 5), (PRODUCTS[1], 4)]:
        found.add("uncommitted", f"after three POSTs that answered 201, the table holds {rows} for customer"
                                 f" {CUSTOMER}, not {[(PRODUCTS[0], 5), (PRODUCTS[1], 4)]}: the writes were not all"
                                 " committed")
        return
    response, _ = await client.send("GET", f"/customers/{CUSTOMER}/wishlist")
    body = _json(response) if not isinstance(response, BaseException) else None
    try:
        items = [(int(i["product_id"]), int(i["quantity"])) for i in body["items"]]
    except (TypeError, KeyError, ValueError):
        items = None
    if items != rows:
        found.add("contract", f"GET /customers/{CUSTOMER}/wishlist answered {_shown(response)}; the table holds"
                              f" {rows} (product, quantity)")


def _mix():
    from ..loadgen import Mix

    return Mix({
        "wishlist": lambda r: ("GET", f"/customers/{r.randint(CUSTOMER, CUSTOMER + 1)}/wishlist", None),
        "search": lambda r: ("GET", f"/products/search?name={r.choice(SEARCHES)}", None),
        "health": lambda r: ("GET", "/health", None),
    }, {"wishlist": 0.5, "search": 0.3, "health": 0.2}, seed=9)


async def _load(svc, lab, found: _Findings) -> None:
    from .. import loadgen

    before = lab.accepted
    load = await loadgen.run(svc.url, _mix(), requests=LOAD_REQUESTS, concurrency=LOAD_CONCURRENCY,
                             time_limit=10.0, timeout=REQUEST_LIMIT, progress=False)
    opened = lab.accepted - before
    if opened > OPENED_LIMIT:
        found.add("per_request", f"during {len(load.outcomes)} requests ({LOAD_CONCURRENCY} at a time) the service"
                                 f" opened {opened} connections to the server")
    errors = load.errors()
    if errors:
        kinds = ", ".join(f"{kind} ×{n}" for kind, n in sorted(errors.items()))
        if all(str(kind).startswith("503") for kind in errors):  # refused for want of a connection, or too slow
            found.add("pool_wait", f"under a load of {LOAD_REQUESTS} requests ({LOAD_CONCURRENCY} at a time),"
                                   f" {sum(errors.values())} were answered 503 ({kinds}) although nothing in the"
                                   " database was slow: requests gave up waiting for a connection too soon")
            return
        found.add("contract", f"under a load of {LOAD_REQUESTS} requests ({LOAD_CONCURRENCY} at a time),"
                              f" {sum(errors.values())} failed: {kinds}")


async def _waiting_on_lock(tag: str, limit: float) -> bool:
    """True once a session of the service waits for a lock (read from pg_stat_activity every 10 ms)."""
    deadline = time.monotonic() + limit
    async with await psycopg.AsyncConnection.connect(database_url(), autocommit=True,
                                                     application_name=CHECK_APP) as observer:
        while time.monotonic() < deadline:
            cur = await observer.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                                         " AND wait_event_type = 'Lock'", (tag,))
            if (await cur.fetchone())[0]:
                return True
            await asyncio.sleep(0.01)
    return False


@contextlib.asynccontextmanager
async def _locked(table_name: str, found: _Findings, tag: str):
    """The check holds `table` in ACCESS EXCLUSIVE mode; yields False when a session of the service kept it."""
    async with await psycopg.AsyncConnection.connect(database_url(), application_name=CHECK_APP) as locker:
        async with locker.transaction():
            await locker.execute(_sql.SQL("SET LOCAL lock_timeout = {}").format(_sql.Literal(LOCK_TIMEOUT)))
            try:
                await locker.execute(_sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    _sql.Identifier(*table_name.split("."))))
            except psycopg.errors.LockNotAvailable:
                idle = await _idle_sessions(tag, 0.0)
                found.add("idle_in_transaction", f"the check could not lock {table_name} within"
                                                 f" {LOCK_TIMEOUT}: {idle} of the service's sessions held it, idle"
                                                 " in a transaction that no request was running")
                yield False
                return
            yield True
        # the lock is released here, whatever happened


async def _idle_sessions(tag: str, older: float) -> int:
    """The service's sessions idle in a transaction for more than `older` seconds."""
    async with await psycopg.AsyncConnection.connect(database_url(), autocommit=True,
                                                     application_name=CHECK_APP) as observer:
        cur = await observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state LIKE 'idle in transaction%%'"
            " AND clock_timestamp() - state_change > make_interval(secs => %s)", (tag, older))
        return (await cur.fetchone())[0]


async def _slow(client: _Client, tag: str, found: _Findings, table_name: str, path: str,
                params: dict | None = None) -> None:
    """A query stuck behind the check's lock: answered 503/504 in time, and the event loop free meanwhile."""
    from ..bench import duration

    baseline = min([(await client.send("GET", PROBE_PATH))[1] for _ in range(3)])
    async with _locked(table_name, found, tag) as locked:
        if not locked:
            return
        slow = asyncio.ensure_future(client.ended("GET", path, params=params, timeout=SLOW_LIMIT + 1))
        waiting = await _waiting_on_lock(tag, 2.0)
        probe = asyncio.ensure_future(client.ended("GET", PROBE_PATH, timeout=SLOW_LIMIT + 2))
        response, seconds, slow_end = await slow
    probed, probe_seconds, probe_end = await probe
    # A free event loop answers the probe at once, long before the waiting request ends; a blocked one only
    # once the blocking call has returned, near the end of that request (its cleanup may still follow).
    remaining = slow_end - (probe_end - probe_seconds)
    held_up = probe_seconds > max(BLOCKED, 5 * baseline) and probe_seconds > 0.5 * remaining
    if waiting and (isinstance(probed, BaseException) or held_up):
        found.add("blocked_loop", f"while GET {path} waited for a lock, a request that needs no database took"
                                  f" {duration(probe_seconds)} instead of {duration(baseline)}: the event loop was held"
                                  " up by the waiting request")
    if isinstance(response, BaseException) or seconds > SLOW_LIMIT:
        found.add("no_timeout", f"GET {path}, whose query waited for a lock on {table_name}, got {_shown(response)}"
                                f" after {duration(seconds)} (the check released the lock then); it should fail within"
                                f" {SLOW_LIMIT:g} s with 503 or 504")
    elif 200 <= response.status_code < 300:
        found.add("errors_hidden", f"GET {path}, whose query waited for a lock, answered {_shown(response)}, a"
                                   f" success, after {duration(seconds)}")
    elif response.status_code not in (503, 504):
        found.add("timeout_status", f"GET {path}, whose query waited for a lock, was stopped after"
                                    f" {duration(seconds)}, but answered {_shown(response)}; a query cancelled by"
                                    " its timeout should answer 503 (or 504)")


async def _short_wait(client: _Client, tag: str, found: _Findings) -> None:
    """A query that waits SHORT_WAIT s for a lock must succeed: a timeout of 0.5 s or more lets it."""
    async with _locked(f"{SCHEMA}.wishlist", found, tag) as locked:
        if not locked:
            return
        slow = asyncio.ensure_future(client.send("GET", f"/customers/{CUSTOMER}/wishlist"))
        await asyncio.sleep(SHORT_WAIT)
    response, _ = await slow
    if not isinstance(response, BaseException) and response.status_code in (503, 504):
        found.add("short_timeout", f"GET /customers/{CUSTOMER}/wishlist, whose query waited {SHORT_WAIT:g} s for a"
                                   f" lock, answered {_shown(response)}: its timeout is under the task's 0.5 s")


async def _loop_free(client: _Client, lab, found: _Findings) -> None:
    """Every endpoint, while the proxy slows each database round trip: a request without database meanwhile."""
    from ..bench import duration

    baseline = min([(await client.send("GET", PROBE_PATH))[1] for _ in range(3)])
    calls = [("GET", "/health", None), ("GET", "/products/search", None),
             ("GET", f"/customers/{CUSTOMER}/wishlist", None),
             ("POST", f"/customers/{CUSTOMER + 1}/wishlist", {"product_id": PRODUCTS[2], "quantity": 1})]
    lab.latency_ms = LATENCY_MS
    try:
        for method, path, body in calls:
            params = {"name": SEARCHES[0]} if path == "/products/search" else None
            held = []
            for _ in range(2):  # held up twice in a row: not the noise of a busy machine
                request = asyncio.ensure_future(client.send(method, path, json=body, params=params))
                await asyncio.sleep(0.03)
                probed, probe_seconds = await client.send("GET", PROBE_PATH)
                await request
                if isinstance(probed, BaseException) or probe_seconds <= max(BLOCKED, 5 * baseline):
                    break
                held.append(probe_seconds)
            if len(held) == 2:
                found.add("blocked_loop", f"while {method} {path} waited for the database (the proxy slowed each"
                                          f" round trip by {2 * LATENCY_MS} ms), a request that needs no database"
                                          f" took {duration(min(held))} instead of {duration(baseline)}: that"
                                          " endpoint held up the event loop")
    finally:
        lab.latency_ms = 0


async def _health_blind(client: _Client, lab, found: _Findings) -> None:
    """While the proxy holds every byte, /health must not answer 200: it would say a cut-off service is well."""
    with lab.blackhole():
        response, _ = await client.send("GET", "/health", timeout=1.5)
    if not isinstance(response, BaseException) and response.status_code == 200:
        found.add("health_blind", f"while the proxy let no byte through to the database, GET /health answered"
                                  f" {_shown(response)}")


async def _hidden_errors(client: _Client, admin: psycopg.Connection, found: _Findings) -> None:
    """Requests the database refuses must not answer success."""
    before = _wishlist_rows(admin, CUSTOMER)
    for body, why in (({"product_id": NO_PRODUCT, "quantity": 1}, "a product that does not exist"),
                      ({"product_id": PRODUCTS[2], "quantity": 0}, "a quantity of 0, which the table's CHECK refuses")):
        response, _ = await client.send("POST", f"/customers/{CUSTOMER}/wishlist", json=body)
        if not isinstance(response, BaseException) and 200 <= response.status_code < 300:
            found.add("errors_hidden", f"POST /customers/{CUSTOMER}/wishlist with {why} answered {_shown(response)},"
                                       " a success, though nothing was written")
    if _wishlist_rows(admin, CUSTOMER) != before:
        found.add("contract", "a POST that the database should have refused changed the wishlist")


async def _examine(svc, lab, tag: str, admin: psycopg.Connection, found: _Findings) -> None:
    client = _Client(svc.url)
    try:
        await _basics(client, admin, found)
        await _load(svc, lab, found)
        await asyncio.sleep(0.6)  # a request's own transaction ends with it; these outlived their requests
        idle = await _idle_sessions(tag, 0.5)
        if idle:
            found.add("idle_in_transaction", f"after the load had ended, {idle} of its sessions sat idle in a"
                                             " transaction that no request was running, holding locks")
        else:  # a session holding the table would make the check's lock wait: these need it free
            await _slow(client, tag, found, f"{SCHEMA}.wishlist", f"/customers/{CUSTOMER}/wishlist")
            if "no_timeout" not in found.problems:  # the second endpoint's timeout: named once is enough
                await _slow(client, tag, found, "products", "/products/search", {"name": SEARCHES[0]})
            if not {"no_timeout", "idle_in_transaction"} & set(found.problems):
                await _short_wait(client, tag, found)
        await _hidden_errors(client, admin, found)
        if "blocked_loop" not in found.problems:  # each endpoint in turn: what the lock did not show
            await _loop_free(client, lab, found)
        await _health_blind(client, lab, found)
    finally:
        await client.close()


def _service(path: Path, env: dict[str, str]):
    from ..webservice import Service

    env = {**env, "PYTHONWARNINGS": "always::ResourceWarning"}  # psycopg warns when it frees an open connection
    return Service(f"{path.stem}:app", app_dir=path.parent, env=env, graceful_timeout=3.0)


def _started(svc, file: str, secrets: list[str]):
    try:
        svc.start(timeout=START_LIMIT)
    except RuntimeError as exc:
        text = mask(str(exc), secrets).rstrip()
        if text.endswith("Its log ends:"):  # uvicorn logs nothing until the lifespan has reached its `yield`
            text += " (nothing: the lifespan never reached its `yield`, or the service logs nothing)"
        raise CheckFailed(f"{file} did not start: {text}",
                          "run the service by hand in a terminal (`uvicorn ...`) and read the error") from None
    return svc


def _from_log(log: str, found: _Findings, secrets: list[str]) -> None:
    from ..webservice import exception_lines

    found.logged.update({mask(line, secrets): n for line, n in exception_lines(log).items()})
    if any(s in log for s in secrets):
        found.add("secret", "the service printed the database password")
    freed = len(re.findall(r"<psycopg\.(?:Async)?Connection .*? was deleted while still open", log))
    if freed:
        found.add("returned", f"{freed} connections were closed only when Python freed them (psycopg's"
                              " ResourceWarning 'was deleted while still open' in the service's log): nothing closed"
                              " them when their request ended")


def _env_from(fn, url: str) -> dict[str, str]:
    env = run(3, fn, url, timeout=10, hint="service_env only builds a dict from its argument and your settings")
    if not isinstance(env, dict):
        raise CheckFailed(f"service_env returned {type(env).__name__}, not a dict of str to str.",
                          "return the environment variables your service reads, every value a string")
    wrong = sorted(f"{k!r}: {type(v).__name__}" for k, v in env.items() if not (isinstance(k, str) and isinstance(v, str)))
    if wrong:
        raise CheckFailed(f"service_env returned a dict with values that are not strings ({', '.join(wrong)}):"
                          " an environment holds only strings.",
                          "write each value as a string, `str(pool_max(5, 1, 1))` for a number")
    if env.get("DATABASE_URL") != url:
        raise CheckFailed("service_env did not pass on the URL it was given as DATABASE_URL.",
                          "set DATABASE_URL to the `database_url` argument: the check routes and tags it so that"
                          " it sees your service's sessions (and a URL typed into code is a secret in code)")
    return env


def service(file: str | Path, service_env: Callable[[str], dict[str, str]]) -> None:
    """Exercise 3: run the learner's service file, load it, read the server and the log, name each problem."""
    path = Path(file).resolve()
    if path.is_file() and _digest(path) == ORIGINAL_SHA256:
        raise NotDone(f"You have not changed {path.name} yet. Its first problem: {PROBLEMS['per_request'][0]}"
                      f" (`psycopg.connect` in `get_conn`). Open it in JupyterLab, fix it, save it, then run this"
                      " check again.")
    from ..netlab import NetLab

    tag = new_tag(3)
    found = _Findings()
    # packet_level=False: an outage only stops the proxy forwarding, so that the service's connections recover at once
    with check_connect(autocommit=True) as admin, NetLab(database_url(), packet_level=False) as lab:
        url = with_params(lab.url, application_name=tag)
        env = _env_from(service_env, url)
        secrets = secrets_in(url)
        if not path.is_file():
            raise CheckFailed(f"There is no file {file} next to this notebook.",
                              "the service file ships beside the exercises notebook: `git checkout` it if it is gone")
        _one_at_a_time(admin)  # released when `admin` closes
        _prepare(admin)
        try:
            with _Peak(lab) as peak, _started(_service(path, env), path.name, secrets) as svc:  # phase 1: lifetimes
                _within(_lifetimes(svc, found), 60, found, path.name, "20 requests in a row, then 10 failing ones")
                first_log = svc.log
            _too_many(peak, found)
            wait_for_sessions_to_end(admin, tag, wait=3)
            _from_log(first_log, found, secrets)
            if {"not_given_back", "kept_on_error"} & set(found.problems):
                found.stopped_early = ("The check stopped there: a service whose pool runs dry answers nothing"
                                       " more. Fix this, and it will look for more.")
                raise found.verdict(path.name)
            with _Peak(lab) as peak:
                svc = _started(_service(path, env), path.name, secrets)  # phase 2: contract, load, slow, errors
                try:
                    _within(_examine(svc, lab, tag, admin, found), 90, found, path.name,
                            "the contract, the load, the locks and the slowed database")
                    before = _abandoned(admin)
                    code = svc.stop(signal.SIGTERM, timeout=10)
                finally:
                    svc.__exit__(None, None, None)
            _too_many(peak, found)
            _shutdown(admin, tag, before, code, found)
            _from_log(svc.log, found, secrets)
        except psycopg.errors.UndefinedTable:
            raise CheckFailed(f"The check's table {SCHEMA}.wishlist vanished during the run: something else dropped"
                              " it (another run of this check in an older version, or your own code).",
                              "run the check again, with nothing else using that schema") from None
        finally:
            stop_sessions(tag)
            _drop(admin)
    if found.problems:
        raise found.verdict(path.name)
    passed(3, f"one pool of at most {POOL_LIMIT} connections for many requests, each given back (also by failed"
              " requests) and none left idle in a transaction, the event loop free while each endpoint waited for"
              " the database, a hostile search value kept out of the SQL, a stuck query answered 503 in time on two"
              " endpoints while a short wait succeeded, /health failing without the database, refused writes"
              " answered as errors, and every session ended properly at shutdown.")


class _Peak:
    """The most connections the service held open through the proxy at once, sampled every 10 ms."""

    def __init__(self, lab):
        import threading

        self.lab, self.peak, self.stop = lab, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, name="pgcourse-peak", daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, self.lab.connections - self.before)

    def __enter__(self) -> _Peak:
        self.before = self.lab.connections  # what an earlier phase left is not this phase's
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _too_many(peak: _Peak, found: _Findings) -> None:
    if peak.peak > POOL_LIMIT and "per_request" not in found.problems:  # a connection per request: named already
        found.add("too_many", f"it held {peak.peak} connections at once; its role may open {ROLE_LIMIT}, one of"
                              f" them kept free, so {POOL_LIMIT} at most")


def _within(coro, seconds: float, found: _Findings, file: str, what: str) -> None:
    """Run a phase of the check; past `seconds` its verdict says so, with what was found before."""
    try:
        run_async(asyncio.wait_for(coro, seconds))
    except TimeoutError:
        found.add("hung", f"the check's requests ({what}) had not ended after {seconds:g} s")
        found.stopped_early = "The check stopped there: a service that no longer answers can be examined no further."
        raise found.verdict(file) from None


def _shutdown(admin: psycopg.Connection, tag: str, before: int | None, code: int | None, found: _Findings) -> None:
    if code == -signal.SIGKILL:  # uvicorn ends with 0 or -SIGTERM (it re-raises the signal) when it shuts down
        found.add("no_shutdown", "after SIGTERM the service did not finish shutting down within 10 s, and was"
                                 " killed")
        return  # its sessions then vanished with the process: that says nothing more about its pool
    left = wait_for_sessions_to_end(admin, tag, wait=3)
    if left:
        found.add("pool_left_open", f"{len(left)} of its sessions were still on the server 3 s after it stopped")
    if before is None or "kept_on_error" in found.problems:
        return  # PostgreSQL 13 has no such counter; connections a failed request kept are not the pool's to close
    deadline, after = time.monotonic() + 1.0, before
    while time.monotonic() < deadline and after == before:
        time.sleep(0.1)
        after = _abandoned(admin)
    if after > before:
        found.add("pool_left_open", f"when it stopped (SIGTERM), {after - before} of its sessions ended without"
                                    " saying goodbye: the server saw the process vanish"
                                    " (pg_stat_database.sessions_abandoned) instead of each connection closing")
