"""Lesson 03's checks reject plausible wrong answers, and say what they saw."""

from __future__ import annotations

import math

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import pooling as checks

pytestmark = pytest.mark.usefixtures("checks_database")
QUERY = "SELECT count(*) FROM orders WHERE customer_id = %s"


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def order_count(pool, customer_id):
    with pool.connection() as conn:
        return conn.execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_leaky(pool, customer_id):
    conn = pool.getconn()
    return conn.execute(QUERY, (customer_id,)).fetchone()[0]


def order_count_no_finally(pool, customer_id):
    conn = pool.getconn()
    result = conn.execute(QUERY, (customer_id,)).fetchone()[0]
    pool.putconn(conn)  # skipped when the query raises
    return result


def order_count_own_connection(pool, customer_id):
    with psycopg.connect(pool.conninfo) as conn:
        return conn.execute(QUERY, (customer_id,)).fetchone()[0]


def test_order_counts_passes_the_solution_and_stops_the_stub(capsys):
    checks.order_counts(order_count)
    assert "Exercise 1 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.order_counts(stub)


@pytest.mark.parametrize("wrong, said", [
    (order_count_leaky, "ran dry"),
    (order_count_no_finally, "a failing call kept its connection"),
    (order_count_own_connection, "calls borrowed a connection from the pool"),
])
def test_order_counts_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said):
        checks.order_counts(wrong)


def test_pool_size_passes_the_solution(capsys):
    checks.pool_size(lambda rate, held: math.ceil(2 * rate * held))
    assert "Exercise 2 passed" in capsys.readouterr().out


@pytest.mark.parametrize("answer, said", [
    (1, "p95 wait for a connection was"),
    (50, "outside what this service may use"),
    (7.5, "a float"),
    (True, "a bool"),
])
def test_pool_size_rejects_plausible_wrong_answers(answer, said):
    with pytest.raises(CheckFailed, match=said):
        checks.pool_size(lambda rate, held: answer)


def make_pool(conninfo):
    return ConnectionPool(conninfo, min_size=1, max_size=4, open=False, check=ConnectionPool.check_connection)


def make_pool_unchecked(conninfo):
    return ConnectionPool(conninfo, min_size=1, max_size=4, open=False)


def make_pool_async(conninfo):
    return AsyncConnectionPool(conninfo, open=False)


def test_survivor_passes_the_solution_and_stops_the_stub(capsys):
    checks.survivor(make_pool)
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.survivor(stub)


@pytest.mark.parametrize("wrong, said", [
    (make_pool_unchecked, "use number 1 failed"),
    (make_pool_async, "not a psycopg_pool.ConnectionPool"),
])
def test_survivor_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said):
        checks.survivor(wrong)
