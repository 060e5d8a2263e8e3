"""Lesson 03's checks reject plausible wrong answers, accept the right alternatives, and say what they saw."""

from __future__ import annotations

import functools
import math
import os
import sys
import time

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgcourse.checks import CheckFailed, NotDone, check_connect
from pgcourse.checks import pooling as checks

pytestmark = pytest.mark.usefixtures("checks_database")
QUERY = "SELECT count(*) FROM orders WHERE customer_id = %s"


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


@pytest.fixture
def other_notebook():
    """Another notebook open on the same database: idle sessions, and a pool, that no check may count."""
    url = os.environ["DATABASE_URL"]
    conns = [psycopg.connect(url) for _ in range(3)]
    pool = ConnectionPool(url, min_size=4, max_size=4, open=True)
    pool.wait()
    yield
    pool.close()
    for conn in conns:
        conn.close()


# --- exercise 1 ----------------------------------------------------------------------------------

def order_count(pool, customer_id):
    with pool.connection() as conn:
        return conn.execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_finally(pool, customer_id):
    conn = pool.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute(QUERY, (customer_id,))
            return cur.fetchone()[0]
    finally:
        pool.putconn(conn)


def order_count_wraps_the_error(pool, customer_id):
    try:
        with pool.connection() as conn, conn.transaction():
            return conn.execute("SELECT count(o.id) FROM orders AS o WHERE o.customer_id = %(c)s",
                                {"c": customer_id}).fetchone()[0]
    except psycopg.Error as exc:
        raise RuntimeError(f"could not count the orders of customer {customer_id}") from exc


def order_count_except_reraise(pool, customer_id):
    conn = pool.getconn()
    try:
        n = conn.execute(QUERY, (customer_id,)).fetchone()[0]
    except BaseException:
        pool.putconn(conn)
        raise
    conn.commit()
    pool.putconn(conn)
    return n


def order_count_leaky(pool, customer_id):
    conn = pool.getconn()
    return conn.execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_no_finally(pool, customer_id):
    conn = pool.getconn()
    result = conn.execute(QUERY, (customer_id,)).fetchone()[0]
    pool.putconn(conn)  # skipped when the query raises
    return result


def order_count_no_finally_validates(pool, customer_id):
    customer_id = int(customer_id)  # a bad argument never reaches the pool; a failing query still leaks
    conn = pool.getconn()
    result = conn.execute(QUERY, (customer_id,)).fetchone()[0]
    pool.putconn(conn)
    return result


def order_count_swallows(pool, customer_id):
    with pool.connection() as conn:
        try:
            return conn.execute(QUERY, (customer_id,)).fetchone()[0]
        except Exception:
            return 0


def order_count_returns_none(pool, customer_id):
    conn = pool.getconn()
    try:
        return conn.execute(QUERY, (customer_id,)).fetchone()[0]
    except psycopg.Error:
        return None
    finally:
        pool.putconn(conn)


def order_count_own_connection(pool, customer_id):
    with psycopg.connect(pool.conninfo) as conn:
        return conn.execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_from_environment(pool, customer_id):
    with pool.connection():  # borrows, to look right, but queries elsewhere
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            return conn.execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_f_string(pool, customer_id):
    with pool.connection() as conn:
        return conn.execute(f"SELECT count(*) FROM orders WHERE customer_id = {int(customer_id)}").fetchone()[0]


def order_count_client_side(pool, customer_id):
    with pool.connection() as conn:
        cur = psycopg.ClientCursor(conn)
        return cur.execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_constant(pool, customer_id):
    with pool.connection() as conn:
        conn.execute(QUERY, (customer_id,))
        return 5


def order_count_group_by(pool, customer_id):
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM orders WHERE customer_id = %s GROUP BY customer_id",
                           (customer_id,)).fetchone()
        return row[0] if row else None  # no orders: None instead of 0


def order_count_closes(pool, customer_id):
    with pool.connection() as conn:
        n = conn.execute(QUERY, (customer_id,)).fetchone()[0]
        conn.close()
        return n


@functools.cache
def order_count_cached(pool, customer_id):
    return order_count(pool, customer_id)


_kept: list = []


def order_count_keeps_one(pool, customer_id):
    if not _kept:
        _kept.append(pool.getconn())  # borrowed once, never given back, shared by every call
    return _kept[0].execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_retries(pool, customer_id):
    for _ in range(3):
        try:
            return order_count(pool, customer_id)
        except psycopg.OperationalError:
            continue
    raise RuntimeError("gave up")


def order_count_waits_forever(pool, customer_id):
    conn = pool.getconn(timeout=600)  # never given back: the next callers wait, and wait
    return conn.execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_prints_url(pool, customer_id):
    print("counting with", os.environ["DATABASE_URL"])
    return order_count(pool, customer_id)


def order_count_exits(pool, customer_id):
    sys.exit("no pool")


def order_count_len(pool, customer_id):
    with pool.connection() as conn:
        return len(conn.execute("SELECT id FROM orders WHERE customer_id = %s", (customer_id,)).fetchall())


def order_count_streams(pool, customer_id):
    with pool.connection() as conn:
        return sum(1 for _ in conn.cursor().stream("SELECT id FROM orders WHERE customer_id = %s", (customer_id,)))


def order_count_scalar(pool, customer_id):
    with pool.connection() as conn, conn.cursor(row_factory=psycopg.rows.scalar_row) as cur:
        return cur.execute("SELECT count(*) FROM orders WHERE customer_id = %s", (customer_id,)).fetchone()


@pytest.mark.parametrize("right", [order_count, order_count_finally, order_count_wraps_the_error,
                                   order_count_except_reraise, order_count_scalar])
def test_order_counts_accepts_right_answers_while_other_sessions_are_open(right, other_notebook, capsys):
    checks.order_counts(right)
    assert "Exercise 1 passed" in capsys.readouterr().out


def test_order_counts_stops_the_stub():
    with pytest.raises(NotDone):
        checks.order_counts(stub)


@pytest.mark.parametrize("wrong, said", [
    (order_count_leaky, "ran dry"),
    (order_count_no_finally, "After 3 call.s. whose query failed, the pool .* ran dry"),
    (order_count_no_finally_validates, "whose query failed, the pool .* ran dry"),
    (order_count_swallows, "returned 0 instead of raising"),
    (order_count_returns_none, "returned None instead of raising"),
    (order_count_own_connection, "opened .* session.s. of its own"),
    (order_count_from_environment, "opened .* session.s. of its own"),
    (order_count_f_string, "the id was written into it"),
    (order_count_client_side, "the id was written into it"),
    (order_count_constant, r"returned 5; that customer has \d+ order"),
    (order_count_group_by, "returned None; that customer has 0 order"),
    (order_count_closes, "gave connections back closed"),
    (order_count_cached, "did not ask the database"),
    (order_count_keeps_one, "Only 1 of .* calls borrowed a connection"),
    (order_count_retries, r"returned \d+ instead of raising"),
    (order_count_prints_url, "printed or logged a secret"),
    (order_count_exits, "tried to end the program"),
    (order_count_len, "sent \\d+ rows to Python to count them"),
    (order_count_streams, "sent \\d+ rows to Python to count them"),
])
def test_order_counts_rejects_plausible_wrong_answers(wrong, said, other_notebook):
    if wrong is order_count_cached:
        order_count_cached.cache_clear()
    _kept.clear()
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.order_counts(wrong)
    assert "Hint:" in str(caught.value)


def test_order_counts_gives_a_verdict_soon_on_a_function_that_waits_forever():
    start = time.monotonic()
    with pytest.raises(CheckFailed, match="did not finish within 15 s"):
        checks.order_counts(order_count_waits_forever)
    assert time.monotonic() - start < 35


@pytest.mark.parametrize("wrong", [order_count_leaky, order_count_no_finally])
def test_order_counts_leaves_no_session_behind_and_the_next_run_passes(wrong, capsys):
    def learner_sessions():
        with check_connect(autocommit=True) as observer:
            return {r[0] for r in observer.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE"
                                                   " 'pgcourse learner 1 %' AND datname = current_database()")}
    before = learner_sessions()
    with pytest.raises(CheckFailed):
        checks.order_counts(wrong)
    assert learner_sessions() - before == set()
    checks.order_counts(order_count)  # the learner fixes the function and runs the check again
    assert "Exercise 1 passed" in capsys.readouterr().out


# --- exercise 2 ----------------------------------------------------------------------------------

def pool_size(rate, held):
    busy = rate * held
    if rate < 0 or held < 0:
        raise ValueError("a load has no negative rate or holding time")
    if busy > 20:
        raise ValueError(f"{busy:g} connections busy on average: more than 20")
    return min(20, max(1, math.ceil(2 * busy)))


def pool_size_plus_three(rate, held):
    if rate < 0 or held < 0 or rate * held > 20:
        raise ValueError("impossible load")
    return min(20, math.ceil(rate * held * 1.25) + 3)


def pool_size_constant(rate, held):
    if rate < 0 or held < 0 or rate * held > 20:
        raise ValueError("impossible load")
    return 10


def pool_size_the_limit(rate, held):
    if rate < 0 or held < 0 or rate * held > 20:
        raise ValueError("impossible load")
    return 20


def pool_size_rounds_down(rate, held):
    if rate < 0 or held < 0 or rate * held > 20:
        raise ValueError("impossible load")
    return max(1, int(rate * held))  # fewer connections than are busy on average


def pool_size_ignores_the_max(rate, held):
    if rate < 0 or held < 0 or rate * held > 20:
        raise ValueError("impossible load")
    return max(1, math.ceil(2 * rate * held))


def pool_size_caps_the_impossible(rate, held):
    if rate < 0 or held < 0:
        raise ValueError("negative")
    return min(20, max(1, math.ceil(2 * rate * held)))


def pool_size_zero(rate, held):
    if rate < 0 or held < 0 or rate * held > 20:
        raise ValueError("impossible load")
    return min(20, math.ceil(2 * rate * held))


def pool_size_negative(rate, held):
    if rate * held > 20:
        raise ValueError("impossible load")
    return min(20, max(1, math.ceil(2 * rate * held)))


def pool_size_lookup(rate, held):
    """Fits the loads a previous run of the check tried, and nothing else."""
    known = {(100, 0.05): 10, (50, 0.1): 10, (100, 0.1): 20, (50, 0.2): 20, (200, 0.075): 20, (100, 0.15): 20, (0, 0.05): 1}
    if (rate, held) not in known:
        raise ValueError("impossible load")
    return known[(rate, held)]


def pool_size_wrong_error(rate, held):
    if rate < 0 or held < 0 or rate * held > 20:
        raise RuntimeError("impossible load")
    return min(20, max(1, math.ceil(2 * rate * held)))


@pytest.mark.parametrize("right", [pool_size, pool_size_plus_three])
def test_pool_size_accepts_right_answers(right, capsys):
    checks.pool_size(right)
    assert "Exercise 2 passed" in capsys.readouterr().out


def test_pool_size_stops_the_stub():
    with pytest.raises(NotDone):
        checks.pool_size(stub)


@pytest.mark.parametrize("wrong, said", [
    (pool_size_constant, "returned 10 for 0 requests/s .* more than twice that plus 5"),
    (pool_size_the_limit, r"returned 20 for \d+ requests/s .* more than twice that plus 5"),
    (pool_size_rounds_down, "p95 wait for a connection was"),
    (pool_size_ignores_the_max, r"returned \d+: more than the 20"),
    (pool_size_caps_the_impossible, r"pool_size\(400, 0.1\) returned 20; .* must raise ValueError"),
    (pool_size_zero, "returned 0: a pool needs at least one"),
    (pool_size_negative, r"pool_size\(-10, 0.05\) returned 1; a negative rate"),
    (pool_size_wrong_error, "raised RuntimeError"),
    (pool_size_lookup, r"lookup\(\d+, 0\.\d+\) raised ValueError: impossible load"),
    (lambda rate, held: 7.5, "a float"),
    (lambda rate, held: True, "a bool"),
])
def test_pool_size_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.pool_size(wrong)
    assert "Hint:" in str(caught.value)


# --- exercise 3 ----------------------------------------------------------------------------------

def make_pool(conninfo):
    return ConnectionPool(conninfo, min_size=1, max_size=4, open=True, check=ConnectionPool.check_connection)


def make_pool_own_check(conninfo):
    def check(conn):
        conn.execute("SELECT 1")

    pool = ConnectionPool(conninfo, min_size=2, open=False, check=check)
    pool.open(wait=True)
    return pool


def make_pool_opened_by_default(conninfo):
    return ConnectionPool(conninfo, check=ConnectionPool.check_connection)  # 4 connections, opened at once


def make_pool_says_where(conninfo):
    safe = psycopg.conninfo.conninfo_to_dict(conninfo)
    print(f"pool for database {safe['dbname']} on {safe['host']}")  # no password: fine
    return make_pool(conninfo)


def make_pool_unchecked(conninfo):
    return ConnectionPool(conninfo, min_size=1, max_size=4, open=True)


def make_pool_short_lifetime(conninfo):
    return ConnectionPool(conninfo, min_size=2, max_size=4, open=True, max_lifetime=1.0)


def make_pool_no_idle(conninfo):
    return ConnectionPool(conninfo, min_size=0, max_size=4, max_idle=0.1, open=True,
                          check=ConnectionPool.check_connection)


def make_pool_not_open(conninfo):
    return ConnectionPool(conninfo, min_size=1, max_size=4, open=False, check=ConnectionPool.check_connection)


def make_pool_environment(conninfo):
    return ConnectionPool(os.environ["DATABASE_URL"], min_size=1, open=True, check=ConnectionPool.check_connection)


def make_pool_prints(conninfo):
    print("pool for", conninfo)
    return make_pool(conninfo)


def make_pool_async(conninfo):
    return AsyncConnectionPool(conninfo, open=False)


class NewEveryTime(ConnectionPool):
    """A 'pool' that lends a brand new connection every time."""

    def getconn(self, timeout=None):
        return psycopg.connect(self.conninfo)

    def putconn(self, conn):
        conn.close()


def make_pool_new_every_time(conninfo):
    return NewEveryTime(conninfo, min_size=1, open=True)


def make_pool_leaky_probe(conninfo):
    probe = psycopg.connect(conninfo)  # "test the URL first", and never closed
    make_pool_leaky_probe.keep = probe
    return make_pool(conninfo)


def make_pool_closed_probe(conninfo):
    with psycopg.connect(conninfo) as probe:
        probe.execute("SELECT 1")
    return make_pool(conninfo)


@pytest.mark.parametrize("right", [make_pool, make_pool_own_check, make_pool_opened_by_default,
                                   make_pool_says_where, make_pool_closed_probe])
def test_survivor_accepts_right_answers(right, other_notebook, capsys):
    checks.survivor(right)
    assert "Exercise 3 passed" in capsys.readouterr().out


def test_survivor_stops_the_stub():
    with pytest.raises(NotDone):
        checks.survivor(stub)


made: list = []


def remember(make):
    def fn(conninfo):
        made.append(make(conninfo))
        return made[-1]
    fn.__name__ = make.__name__
    return fn


@pytest.mark.parametrize("wrong, said", [
    (make_pool_unchecked, r"round 1 of 2\), use number 1 failed"),
    (make_pool_short_lifetime, "use number 1 failed"),
    (make_pool_no_idle, "opens a new connection for each use|kept no connection open"),
    (make_pool_new_every_time, "opens a new connection for each use"),
    (make_pool_not_open, "not open"),
    (make_pool_environment, "not opened with the conninfo"),
    (make_pool_prints, "printed or logged a secret"),
    (make_pool_async, "not a psycopg_pool.ConnectionPool"),
    (make_pool_leaky_probe, "1 session.s. opened with the conninfo stayed open after the pool was closed"),
])
def test_survivor_rejects_plausible_wrong_answers_and_closes_their_pool(wrong, said):
    made.clear()
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.survivor(remember(wrong))
    assert "Hint:" in str(caught.value)
    assert all(pool.closed for pool in made), "the check left the learner's pool open"
