"""Checks for lesson 03 (connection pooling): a leak fixed, a pool sized for a load, a pool that survives."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from ..widgets import ConnectionMonitor
from . import CheckFailed, call, database_url, passed, run_async

LEAK_POOL_MAX = 3
LOAD = {"requests": 200, "requests_per_second": 100, "seconds_held": 0.05, "p95_wait_limit": 0.020}
CONNECTIONS_ALLOWED = 20


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


def order_counts(fn) -> None:
    """Exercise 1: fn(pool, customer_id) -> int, called 60 times from 8 threads, returns every connection."""
    with _quiet_pool_log():
        _order_counts(fn)


def _order_counts(fn) -> None:
    url = database_url()
    with psycopg.connect(url) as conn:
        truth = dict(conn.execute("SELECT c.id, count(o.id) FROM customers c LEFT JOIN orders o"
                                  " ON o.customer_id = c.id WHERE c.id <= 60 GROUP BY c.id").fetchall())
    pool = ConnectionPool(url, min_size=1, max_size=LEAK_POOL_MAX, timeout=2, open=False,
                          kwargs={"application_name": "exercise03-leak"})
    pool.open(wait=True)
    monitor = ConnectionMonitor(url, interval=0.05).start()
    try:
        try:
            with ThreadPoolExecutor(8) as workers:
                results = dict(zip(truth, workers.map(lambda cid: call(1, fn, pool, cid), truth), strict=True))
        except PoolTimeout:
            raise CheckFailed(f"The pool (max_size={LEAK_POOL_MAX}) ran dry: a caller waited 2 s for a connection"
                              " that never came back.",
                              "borrow with `with pool.connection() as conn:`, which returns the connection"
                              " however the block ends") from None
        if pool.get_stats().get("requests_num", 0) < len(truth):
            raise CheckFailed(f"Only {pool.get_stats().get('requests_num', 0)} of {len(truth)} calls borrowed a"
                              " connection from the pool.", "take the connection from the pool you are given:"
                              " `with pool.connection() as conn:`")
        wrong = {cid: got for cid, got in results.items() if got != truth[cid]}
        if wrong:
            cid = next(iter(wrong))
            raise CheckFailed(f"order_count(pool, {cid}) returned {wrong[cid]!r}; expected {truth[cid]}.",
                              "count the customer's orders: SELECT count(*) FROM orders WHERE customer_id = %s")
        for _ in range(2 * LEAK_POOL_MAX):  # failing calls must give their connection back too
            try:
                call(1, fn, pool, "not a number")
            except (psycopg.Error, PoolTimeout) as exc:
                if isinstance(exc, PoolTimeout):
                    raise CheckFailed("After calls that raised an error, the pool ran dry: a failing call kept its"
                                      " connection.", "use `with pool.connection() as conn:` (or try/finally"
                                      " around putconn) so that errors return the connection too") from None
        time.sleep(0.2)
        stats = pool.get_stats()
        if stats["pool_available"] != stats["pool_size"]:
            raise CheckFailed(f"After the calls, {stats['pool_size'] - stats['pool_available']} connection(s) were"
                              " still checked out of the pool.", "return every connection you borrow")
        if monitor.peak > LEAK_POOL_MAX:
            raise CheckFailed(f"The server saw {monitor.peak} sessions at once; the pool holds at most {LEAK_POOL_MAX}.",
                              "use the pool's connections instead of opening new ones")
    finally:
        monitor.stop()
        pool.close()
    passed(1, f"60 concurrent calls and {2 * LEAK_POOL_MAX} failing ones, every connection back in the pool,"
              f" at most {LEAK_POOL_MAX} sessions on the server.")


async def _p95_wait(url: str, size: int) -> float:
    waits = []
    async with AsyncConnectionPool(url, min_size=size, max_size=size, open=False) as pool:
        await pool.wait()

        async def request() -> None:
            asked = time.perf_counter()
            async with pool.connection() as conn:
                waits.append(time.perf_counter() - asked)
                await conn.execute("SELECT pg_sleep(%s)", (LOAD["seconds_held"],))

        async with asyncio.TaskGroup() as group:
            for _ in range(LOAD["requests"]):
                group.create_task(request())
                await asyncio.sleep(1 / LOAD["requests_per_second"])
    return statistics.quantiles(waits, n=20)[-1]


def pool_size(fn) -> None:
    """Exercise 2: fn(requests_per_second, seconds_held) -> a pool size that meets the load's p95 wait."""
    size = call(2, fn, LOAD["requests_per_second"], LOAD["seconds_held"])
    if not isinstance(size, int) or isinstance(size, bool):
        raise CheckFailed(f"pool_size returned {size!r}, a {type(size).__name__}; a pool holds a whole number of"
                          " connections.", "round up: math.ceil(...)")
    if not 1 <= size <= CONNECTIONS_ALLOWED:
        raise CheckFailed(f"A pool of {size} is outside what this service may use (1 to {CONNECTIONS_ALLOWED}"
                          " connections).", "start from Little's law, requests per second times seconds held,"
                          " and add headroom for bursts")
    p95 = run_async(_p95_wait(database_url(), size))
    if p95 >= LOAD["p95_wait_limit"]:
        raise CheckFailed(f"With a pool of {size}, the p95 wait for a connection was {p95 * 1000:.0f} ms; the"
                          f" limit is {LOAD['p95_wait_limit'] * 1000:.0f} ms.",
                          "Little's law gives the average number in use; requests arrive unevenly, so leave"
                          " headroom above it")
    passed(2, f"a pool of {size} kept the p95 wait at {p95 * 1000:.0f} ms under"
              f" {LOAD['requests_per_second']} requests/s of {LOAD['seconds_held'] * 1000:.0f} ms each.")


def survivor(fn) -> None:
    """Exercise 3: fn(conninfo) -> a ConnectionPool that keeps working after its server sessions are killed."""
    with _quiet_pool_log():
        _survivor(fn)


def _survivor(fn) -> None:
    url = database_url()
    name = "exercise03-survivor"
    pool = call(3, fn, make_conninfo(url, application_name=name))
    if not isinstance(pool, ConnectionPool):
        raise CheckFailed(f"make_pool returned a {type(pool).__name__}, not a psycopg_pool.ConnectionPool.",
                          "return ConnectionPool(conninfo, ...)")
    try:
        if pool.closed:
            pool.open(wait=True)
        else:
            pool.wait()
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                   " WHERE application_name = %s", (name,)).fetchone()[0]
        if killed == 0:
            raise CheckFailed("The pool kept no connection open to be cut, so this proves nothing.",
                              "keep at least one connection open (min_size=1, the default)")
        time.sleep(0.2)
        for attempt in range(1, 6):
            try:
                with pool.connection() as conn:
                    conn.execute("SELECT count(*) FROM products").fetchone()
            except psycopg.OperationalError as exc:
                raise CheckFailed(f"After the server ended {killed} pooled session(s), use number {attempt} failed:"
                                  f" {type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
                                  "give the pool check=ConnectionPool.check_connection, so that it tests a"
                                  " connection before lending it") from None
    finally:
        pool.close()
    passed(3, f"the server ended {killed} pooled session(s), and the next five uses all worked.")
