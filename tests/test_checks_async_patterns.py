"""Lesson 07's checks reject plausible wrong answers (unbounded or sequential fan-outs, deadlines per lookup,
cleanup that a second cancellation breaks, blocking calls in the event loop) and accept the right ones."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from decimal import Decimal

import psycopg
import pytest

from pgcourse.checks import CheckFailed, NotDone, check_connect
from pgcourse.checks import async_patterns as checks

pytestmark = pytest.mark.usefixtures("checks_database")

REPORT = ("SELECT count(DISTINCT o.id)::int, coalesce(sum(i.quantity * i.unit_price), 0)"
          " FROM orders o LEFT JOIN order_items i ON i.order_id = o.id WHERE o.customer_id = %s")


def no_learner_session_left() -> None:
    with check_connect(autocommit=True) as admin:
        left = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgcourse learner%%'"
                             " AND datname = current_database()").fetchone()[0]
    assert left == 0


# --- exercise 1: lookup_all --------------------------------------------------------------------------

async def lookup_stub(pool, lookup, ids, limit, deadline):
    raise NotImplementedError("Exercise 1: write your code here")


async def lookup_solution(pool, lookup, ids, limit, deadline):
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            return await lookup(conn, i)

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as tasks:
        started = {i: tasks.create_task(one(i)) for i in dict.fromkeys(ids)}
    return {i: t.result() for i, t in started.items()}


async def lookup_gather_wait_for(pool, lookup, ids, limit, deadline):
    semaphore = asyncio.Semaphore(limit)
    distinct = list(set(ids))

    async def one(i):
        async with semaphore:
            async with pool.acquire() as conn:
                return await lookup(conn, i)

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in distinct)), timeout=deadline)
    return dict(zip(distinct, results, strict=True))


async def lookup_batches(pool, lookup, ids, limit, deadline):  # slower with uneven lookups, but within the rules
    distinct = list(dict.fromkeys(ids))
    out = {}

    async def one(i):
        async with pool.acquire() as conn:
            out[i] = await lookup(conn, i)

    async with asyncio.timeout(deadline):
        for k in range(0, len(distinct), limit):
            await asyncio.gather(*(one(i) for i in distinct[k:k + limit]))
    return out


async def lookup_workers(pool, lookup, ids, limit, deadline):
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in dict.fromkeys(ids):
        queue.put_nowait(i)
    out = {}

    async def worker():
        async with pool.acquire() as conn:
            while not queue.empty():
                i = queue.get_nowait()
                out[i] = await lookup(conn, i)

    async with asyncio.timeout(deadline), asyncio.TaskGroup() as tasks:
        for _ in range(limit):
            tasks.create_task(worker())
    return out


async def lookup_sequential(pool, lookup, ids, limit, deadline):
    out = {}
    async with asyncio.timeout(deadline):
        for i in dict.fromkeys(ids):
            async with pool.acquire() as conn:
                out[i] = await lookup(conn, i)
    return out


async def lookup_unbounded(pool, lookup, ids, limit, deadline):  # the pool's 8 connections are the only limit
    distinct = list(dict.fromkeys(ids))

    async def one(i):
        async with pool.acquire() as conn:
            return await lookup(conn, i)

    async with asyncio.timeout(deadline):
        return dict(zip(distinct, await asyncio.gather(*(one(i) for i in distinct)), strict=True))


async def lookup_semaphore_too_small(pool, lookup, ids, limit, deadline):
    semaphore = asyncio.Semaphore(limit - 1)  # "below the limit, to be safe"

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            return await lookup(conn, i)

    distinct = list(dict.fromkeys(ids))
    async with asyncio.timeout(deadline):
        return dict(zip(distinct, await asyncio.gather(*(one(i) for i in distinct)), strict=True))


async def lookup_semaphore_per_task(pool, lookup, ids, limit, deadline):  # a new semaphore each time limits nothing
    async def one(i):
        async with asyncio.Semaphore(limit), pool.acquire() as conn:
            return await lookup(conn, i)

    distinct = list(dict.fromkeys(ids))
    async with asyncio.timeout(deadline):
        return dict(zip(distinct, await asyncio.gather(*(one(i) for i in distinct)), strict=True))


async def lookup_one_shared_connection(pool, lookup, ids, limit, deadline):
    semaphore = asyncio.Semaphore(limit)
    async with pool.acquire() as conn:
        async def one(i):
            async with semaphore:
                return await lookup(conn, i)
        distinct = list(dict.fromkeys(ids))
        async with asyncio.timeout(deadline):
            return dict(zip(distinct, await asyncio.gather(*(one(i) for i in distinct)), strict=True))


async def lookup_hands_the_pool(pool, lookup, ids, limit, deadline):  # asyncpg's Pool can run queries itself
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with semaphore:
            return await lookup(pool, i)

    distinct = list(dict.fromkeys(ids))
    async with asyncio.timeout(deadline):
        return dict(zip(distinct, await asyncio.gather(*(one(i) for i in distinct)), strict=True))


async def lookup_every_id(pool, lookup, ids, limit, deadline):  # repeated ids looked up again
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            return await lookup(conn, i)

    async with asyncio.timeout(deadline):
        return dict(zip(ids, await asyncio.gather(*(one(i) for i in ids)), strict=True))


async def lookup_deadline_per_lookup(pool, lookup, ids, limit, deadline):
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            return await asyncio.wait_for(lookup(conn, i), deadline)

    distinct = list(dict.fromkeys(ids))
    return dict(zip(distinct, await asyncio.gather(*(one(i) for i in distinct)), strict=True))


async def lookup_timeout_inside_the_group(pool, lookup, ids, limit, deadline):  # ExceptionGroup, not TimeoutError
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with asyncio.timeout(deadline), semaphore, pool.acquire() as conn:
            return await lookup(conn, i)

    async with asyncio.TaskGroup() as tasks:
        started = {i: tasks.create_task(one(i)) for i in dict.fromkeys(ids)}
    return {i: t.result() for i, t in started.items()}


async def lookup_wait_and_walk_away(pool, lookup, ids, limit, deadline):  # asyncio.wait does not cancel
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            return i, await lookup(conn, i)

    tasks = [asyncio.ensure_future(one(i)) for i in dict.fromkeys(ids)]
    if not tasks:
        return {}
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    if pending:
        raise TimeoutError("deadline passed")
    return dict(t.result() for t in done)


async def lookup_partial_results(pool, lookup, ids, limit, deadline):  # the deadline swallowed
    semaphore = asyncio.Semaphore(limit)
    out = {}

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            out[i] = await lookup(conn, i)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(deadline), asyncio.TaskGroup() as tasks:
            for i in dict.fromkeys(ids):
                tasks.create_task(one(i))
    return out


async def lookup_deadline_per_lookup_set(pool, lookup, ids, limit, deadline):  # set() reorders: any id may start last
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            return i, await asyncio.wait_for(lookup(conn, i), deadline)

    return dict(await asyncio.gather(*(one(i) for i in set(ids))))


async def lookup_return_exceptions(pool, lookup, ids, limit, deadline):  # a failed lookup becomes a value
    semaphore = asyncio.Semaphore(limit)
    distinct = list(dict.fromkeys(ids))

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            return await lookup(conn, i)

    async with asyncio.timeout(deadline):
        return dict(zip(distinct, await asyncio.gather(*(one(i) for i in distinct), return_exceptions=True),
                        strict=True))


async def lookup_shielded(pool, lookup, ids, limit, deadline):  # the hung query runs on when its connection goes back
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with semaphore, pool.acquire() as conn:
            return i, await asyncio.shield(lookup(conn, i))

    async with asyncio.timeout(deadline):
        return dict(await asyncio.gather(*(one(i) for i in dict.fromkeys(ids))))


async def lookup_clock_between(pool, lookup, ids, limit, deadline):  # never interrupts a running lookup
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    semaphore = asyncio.Semaphore(limit)

    async def one(i):
        async with semaphore:
            if loop.time() > end:
                raise TimeoutError
            async with pool.acquire() as conn:
                return i, await lookup(conn, i)

    return dict(await asyncio.gather(*(one(i) for i in dict.fromkeys(ids))))


def test_lookup_all_passes_the_solution_and_stops_the_stub(capsys):
    asyncio.run(checks.lookup_all(lookup_solution))
    assert "Exercise 1 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        asyncio.run(checks.lookup_all(lookup_stub))
    no_learner_session_left()


@pytest.mark.parametrize("wrong, said", [
    (lookup_sequential, r"took .* s for 12 lookups.*one after another"),
    (lookup_unbounded, r"ran [4-8] lookups at once; the limit was 3"),
    (lookup_semaphore_per_task, r"ran [4-8] lookups at once; the limit was 3"),
    (lookup_semaphore_too_small, r"ran at most 2 lookups at once; the limit allows 3"),
    (lookup_one_shared_connection, r"raised InterfaceError.*another operation is in progress.*two lookups ran on one"),
    (lookup_shielded, r"still running on its connection when that connection went back"),
    (lookup_deadline_per_lookup_set, r"raised TimeoutError after [\d.]+ s; the deadline was 1.2 s for the whole call"),
    (lookup_return_exceptions, r"returned a dict in which id -?\d+ maps to RaiseError .*must reach the caller"),
    (lookup_clock_between, r"with one lookup that hangs .* was still running .* past its deadline"),
    (lookup_hands_the_pool, r"not a connection acquired from the pool"),
    (lookup_every_id, r"looked up id -?\d+ 2 times"),
    (lookup_deadline_per_lookup, r"raised TimeoutError after [\d.]+ s; the deadline was 1.2 s for the whole call"),
    (lookup_timeout_inside_the_group, r"raised ExceptionGroup.*expected TimeoutError"),
    (lookup_wait_and_walk_away, r"lookup\(s\) went on running"),
    (lookup_partial_results, r"returned dict after .* expected TimeoutError"),
], ids=lambda v: getattr(v, "__name__", None))
def test_lookup_all_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        asyncio.run(checks.lookup_all(wrong))
    assert "Hint:" in str(caught.value)
    no_learner_session_left()


@pytest.mark.parametrize("right", [lookup_gather_wait_for, lookup_batches, lookup_workers],
                         ids=lambda v: v.__name__)
def test_lookup_all_accepts_right_alternatives(right, capsys):
    asyncio.run(checks.lookup_all(right))
    assert "Exercise 1 passed" in capsys.readouterr().out


def test_lookup_all_stops_a_function_that_never_returns(monkeypatch):
    async def forever(pool, lookup, ids, limit, deadline):
        await asyncio.Event().wait()

    monkeypatch.setattr(checks, "TIME_LIMIT", 2.0)
    with pytest.raises(CheckFailed, match=r"did not finish within 2 s"):
        asyncio.run(checks.lookup_all(forever))
    no_learner_session_left()


# --- exercise 2: run_report --------------------------------------------------------------------------

async def report_stub(pool, customer_id):
    raise NotImplementedError("Exercise 2: write your code here")


async def _query(conn, customer_id):
    return await (await conn.execute(REPORT, (customer_id,))).fetchone()


async def report_solution(pool, customer_id):
    async def report():
        async with pool.connection() as conn:
            return await _query(conn, customer_id)

    task = asyncio.create_task(report())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        raise


async def report_getconn_inside(pool, customer_id):  # the inner task lends and returns by hand, in a transaction
    async def report():
        conn = await pool.getconn()
        try:
            async with conn.transaction():
                return await _query(conn, customer_id)
        finally:
            await pool.putconn(conn)

    task = asyncio.ensure_future(report())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        while not task.done():
            try:
                await asyncio.shield(asyncio.wait([task]))
            except asyncio.CancelledError:
                continue
        raise


async def report_cleanup_left_to_run(pool, customer_id):  # the caller sees CancelledError while the query still runs
    async def report():
        async with pool.connection() as conn:
            return await _query(conn, customer_id)

    task = asyncio.create_task(report())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise


async def report_naive(pool, customer_id):  # right for one cancellation; a second one orphans the query
    async with pool.connection() as conn:
        return await _query(conn, customer_id)


async def report_no_finally(pool, customer_id):
    conn = await pool.getconn()
    result = await _query(conn, customer_id)
    await conn.rollback()
    await pool.putconn(conn)
    return result


async def report_shielded_putconn(pool, customer_id):  # the return survives, psycopg's own cancel does not
    conn = await pool.getconn()
    try:
        async with conn.transaction():
            return await _query(conn, customer_id)
    finally:
        await asyncio.shield(pool.putconn(conn))


async def report_swallows(pool, customer_id):
    try:
        async with pool.connection() as conn:
            return await _query(conn, customer_id)
    except asyncio.CancelledError:
        return None


async def report_wraps_the_cancel(pool, customer_id):
    try:
        async with pool.connection() as conn:
            return await _query(conn, customer_id)
    except BaseException as exc:
        raise RuntimeError("report failed") from exc


async def report_shields_the_query(pool, customer_id):  # the server never hears of the cancellation
    async with pool.connection() as conn:
        return await asyncio.shield(_query(conn, customer_id))


async def report_never_cancels_the_inner_task(pool, customer_id):
    async def report():
        async with pool.connection() as conn:
            return await _query(conn, customer_id)

    return await asyncio.shield(asyncio.ensure_future(report()))


async def report_awaits_the_task_unprotected(pool, customer_id):  # a second cancel reaches the inner task
    async def report():
        async with pool.connection() as conn:
            return await _query(conn, customer_id)

    task = asyncio.create_task(report())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise


async def report_own_connection(pool, customer_id):  # right numbers, but not through the pool
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"]) as conn:
        return await _query(conn, customer_id)


async def report_cancel_safe_in_except(pool, customer_id):  # too late: psycopg has already given up
    async with pool.connection() as conn:
        try:
            return await _query(conn, customer_id)
        except asyncio.CancelledError:
            await conn.cancel_safe()
            raise


async def report_prints_the_url_when_cancelled(pool, customer_id):
    try:
        return await report_solution(pool, customer_id)
    except asyncio.CancelledError:
        print("cancelled, while connected to", os.environ["DATABASE_URL"])
        raise


async def report_float_total(pool, customer_id):
    async with pool.connection() as conn:
        orders, total = await _query(conn, customer_id)
        return orders, float(total)


async def report_statement_timeout(pool, customer_id):  # the server ends the query later; psycopg closed the connection
    async with pool.connection() as conn:
        await conn.execute("SET statement_timeout = '1s'")
        return await _query(conn, customer_id)


async def report_lock_timeout(pool, customer_id):  # gives up on any lock wait instead of handling the cancellation
    async with pool.connection() as conn:
        await conn.execute("SET lock_timeout = '200ms'")
        return await _query(conn, customer_id)


async def report_swallows_db_errors(pool, customer_id):  # right cleanup, but a failed query becomes (0, 0)
    async def report():
        try:
            async with pool.connection() as conn:
                return await _query(conn, customer_id)
        except Exception:
            return 0, Decimal("0")

    task = asyncio.create_task(report())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        raise


async def report_spins_when_cancelled(pool, customer_id):  # never yields again: only the watchdog stops it
    task = asyncio.create_task(report_naive(pool, customer_id))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while True:
            pass


def test_run_report_passes_the_solution_and_stops_the_stub(capsys):
    asyncio.run(checks.run_report(report_solution))
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        asyncio.run(checks.run_report(report_stub))
    no_learner_session_left()


@pytest.mark.parametrize("wrong, said", [
    (report_naive, r"cancelled again and again.*query was still running on the server"),
    (report_shielded_putconn, r"cancelled again and again.*query was still running on the server"),
    (report_awaits_the_task_unprotected, r"cancelled again and again.*query was still running on the server"),
    (report_no_finally, r"connections never came back"),
    (report_swallows, r"returned None when cancelled.*CancelledError must reach the caller"),
    (report_wraps_the_cancel, r"raised RuntimeError when cancelled"),
    (report_shields_the_query, r"still running 3 s after|query was still running on the server"),
    (report_never_cancels_the_inner_task, r"query was still running on the server"),
    (report_cancel_safe_in_except, r"again and again.*(still running on the server|raised)"),
    (report_prints_the_url_when_cancelled, r"printed or logged a secret"),
    (report_own_connection, r"on a connection of its own, not one from the pool"),
    (report_float_total, r"returned \(\d+, [\d.]+\); expected"),
    (report_cleanup_left_to_run, r"cancelled while its query waited, but its query was still running on the server at"
                                 r" that moment"),
    (report_statement_timeout, r"again and again.*still running on the server at that moment"),
    (report_lock_timeout, r"again and again.*(still running on the server at that moment|throw a connection away)"),
    (report_swallows_db_errors, r"returned \(0, Decimal\('0'\)\) when its query failed on the server"),
    (report_spins_when_cancelled, r"held the event loop without ever yielding"),
], ids=lambda v: getattr(v, "__name__", None))
def test_run_report_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        asyncio.run(checks.run_report(wrong))
    assert "Hint:" in str(caught.value)
    no_learner_session_left()


@pytest.mark.parametrize("right", [report_getconn_inside], ids=lambda v: v.__name__)
def test_run_report_accepts_right_alternatives(right, capsys):
    asyncio.run(checks.run_report(right))
    assert "Exercise 2 passed" in capsys.readouterr().out


def test_a_second_cancellation_really_orphans_the_query():
    """The failure the check looks for is real: psycopg gives up its cancel and the server runs on."""
    from psycopg_pool import AsyncConnectionPool

    from pgcourse.checks import database_url, sessions_of, with_params

    tag = "pgcourse learner orphan test"

    async def main():
        async with AsyncConnectionPool(with_params(database_url(), application_name=tag), min_size=1, max_size=1,
                                       open=False) as pool:
            task = asyncio.create_task(report_naive(pool, 1))
            await asyncio.sleep(0.3)
            while not task.done():
                task.cancel()
                await asyncio.sleep(0)
            with contextlib.suppress(asyncio.CancelledError):
                await task

    with check_connect(autocommit=True) as observer, check_connect() as locker:
        locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        with checks._quiet_driver_logs():
            asyncio.run(main())
        running = [r for r in sessions_of(observer, tag) if r["state"] == "active"]
        locker.rollback()
        observer.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (tag,))
    assert running and "orders" in running[0]["query"]


# --- exercise 3: legacy_totals -----------------------------------------------------------------------

async def totals_stub(legacy_total, customer_ids):
    raise NotImplementedError("Exercise 3: write your code here")


async def totals_solution(legacy_total, customer_ids):
    async with asyncio.TaskGroup() as tasks:
        started = {i: tasks.create_task(asyncio.to_thread(legacy_total, i)) for i in dict.fromkeys(customer_ids)}
    return {i: t.result() for i, t in started.items()}


async def totals_gather(legacy_total, customer_ids):
    distinct = list(dict.fromkeys(customer_ids))
    return dict(zip(distinct, await asyncio.gather(*(asyncio.to_thread(legacy_total, i) for i in distinct)),
                    strict=True))


async def totals_run_in_executor(legacy_total, customer_ids):
    loop = asyncio.get_running_loop()
    distinct = list(dict.fromkeys(customer_ids))
    futures = [loop.run_in_executor(None, legacy_total, i) for i in distinct]
    return dict(zip(distinct, await asyncio.gather(*futures), strict=True))


async def totals_own_executor(legacy_total, customer_ids):
    distinct = list(dict.fromkeys(customer_ids))
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(distinct))) as executor:
        futures = [loop.run_in_executor(executor, legacy_total, i) for i in distinct]
        return dict(zip(distinct, await asyncio.gather(*futures), strict=True))


async def totals_direct(legacy_total, customer_ids):
    return {i: legacy_total(i) for i in dict.fromkeys(customer_ids)}


async def totals_async_wrapper(legacy_total, customer_ids):  # "async def" does not make a call non-blocking
    async def one(i):
        return legacy_total(i)

    distinct = list(dict.fromkeys(customer_ids))
    return dict(zip(distinct, await asyncio.gather(*(one(i) for i in distinct)), strict=True))


async def totals_one_thread_after_another(legacy_total, customer_ids):
    return {i: await asyncio.to_thread(legacy_total, i) for i in dict.fromkeys(customer_ids)}


async def totals_called_before_the_thread(legacy_total, customer_ids):
    distinct = list(dict.fromkeys(customer_ids))
    return dict(zip(distinct, await asyncio.gather(*(asyncio.to_thread(legacy_total(i)) for i in distinct)),
                    strict=True))


async def totals_single_worker(legacy_total, customer_ids):
    loop = asyncio.get_running_loop()
    distinct = list(dict.fromkeys(customer_ids))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        futures = [loop.run_in_executor(executor, legacy_total, i) for i in distinct]
        return dict(zip(distinct, await asyncio.gather(*futures), strict=True))


async def totals_threads_joined(legacy_total, customer_ids):  # join() blocks the loop
    out = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, legacy_total(i)))
               for i in dict.fromkeys(customer_ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


async def totals_every_id(legacy_total, customer_ids):
    return dict(zip(customer_ids, await asyncio.gather(*(asyncio.to_thread(legacy_total, i) for i in customer_ids)),
                    strict=True))


async def totals_list(legacy_total, customer_ids):
    return await asyncio.gather(*(asyncio.to_thread(legacy_total, i) for i in dict.fromkeys(customer_ids)))


async def totals_own_query(legacy_total, customer_ids):  # right totals, never from legacy_total
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        out = {}
        for i in dict.fromkeys(customer_ids):
            cur = await conn.execute("SELECT coalesce(sum(i.quantity * i.unit_price), 0) FROM orders o"
                                     " JOIN order_items i ON i.order_id = o.id WHERE o.customer_id = %s", (i,))
            out[i] = (await cur.fetchone())[0]
        return out


async def totals_return_exceptions(legacy_total, customer_ids):  # a failed call becomes a value
    distinct = list(dict.fromkeys(customer_ids))
    results = await asyncio.gather(*(asyncio.to_thread(legacy_total, i) for i in distinct), return_exceptions=True)
    return dict(zip(distinct, results, strict=True))


async def totals_timeout_per_call(legacy_total, customer_ids):  # a slow call silently becomes 0
    async def one(i):
        try:
            return i, await asyncio.wait_for(asyncio.to_thread(legacy_total, i), 0.8)
        except TimeoutError:
            return i, Decimal("0")

    return dict(await asyncio.gather(*(one(i) for i in dict.fromkeys(customer_ids))))


async def totals_semaphore_2(legacy_total, customer_ids):  # too few at once
    semaphore = asyncio.Semaphore(2)

    async def one(i):
        async with semaphore:
            return i, await asyncio.to_thread(legacy_total, i)

    return dict(await asyncio.gather(*(one(i) for i in dict.fromkeys(customer_ids))))


async def totals_result_in_the_loop(legacy_total, customer_ids):  # threads, but .result() blocks the loop
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        futures = {i: executor.submit(legacy_total, i) for i in dict.fromkeys(customer_ids)}
        return {i: f.result() for i, f in futures.items()}


def test_legacy_totals_passes_the_solution_and_stops_the_stub(capsys):
    asyncio.run(checks.legacy_totals(totals_solution))
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        asyncio.run(checks.legacy_totals(totals_stub))
    no_learner_session_left()


@pytest.mark.parametrize("wrong, said", [
    (totals_direct, r"stalled the event loop .*ran in the loop's own thread"),
    (totals_async_wrapper, r"stalled the event loop .*ran in the loop's own thread"),
    (totals_called_before_the_thread, r"raised TypeError.*not callable"),
    (totals_threads_joined, r"stalled the event loop .*ran in worker threads, but your coroutine waited"),
    (totals_result_in_the_loop, r"stalled the event loop .*ran in worker threads, but your coroutine waited"),
    (totals_own_query, r"never called legacy_total"),
    (totals_return_exceptions, r"returned a dict in which id -?\d+ maps to LegacyError"),
    (totals_timeout_per_call, r"returned .*expected .*slower than the others"),
    (totals_semaphore_2, r"at most 2 ran at once"),
    (totals_one_thread_after_another, r"one after another"),
    (totals_single_worker, r"one after another"),
    (totals_every_id, r"called legacy_total\(-?\d+\) 2 times"),
    (totals_list, r"returned \[.*expected \{"),
], ids=lambda v: getattr(v, "__name__", None))
def test_legacy_totals_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        asyncio.run(checks.legacy_totals(wrong))
    assert "Hint:" in str(caught.value)
    no_learner_session_left()


@pytest.mark.parametrize("right", [totals_gather, totals_run_in_executor, totals_own_executor],
                         ids=lambda v: v.__name__)
def test_legacy_totals_accepts_right_alternatives(right, capsys):
    asyncio.run(checks.legacy_totals(right))
    assert "Exercise 3 passed" in capsys.readouterr().out


def test_checks_pass_inside_a_running_event_loop_and_leave_nothing(capsys):
    async def main():  # as in a notebook: the checks are awaited in the kernel's loop
        await checks.lookup_all(lookup_solution)
        await checks.run_report(report_solution)
        await checks.legacy_totals(totals_solution)

    asyncio.run(main())
    assert capsys.readouterr().out.count("passed") == 3
    no_learner_session_left()
