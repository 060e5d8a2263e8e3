"""Lesson 01's checks reject plausible wrong answers, and say what they saw."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from decimal import Decimal

import psycopg
import pytest
from psycopg import ClientCursor
from psycopg.rows import class_row, dict_row
from sqlalchemy import text

from pgcourse.checks import CheckFailed, NotDone, drivers

pytestmark = pytest.mark.usefixtures("checks_database")


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def find_right(conn, email):
    return conn.execute("SELECT id, name FROM customers WHERE email = %s", (email,)).fetchone()


def find_fstring(conn, email):
    return conn.execute(f"SELECT id, name FROM customers WHERE email = '{email}'").fetchone()


def find_escaped(conn, email):  # right results for every input, but the value is still pasted into the SQL
    escaped = email.replace("'", "''")
    return conn.execute(f"SELECT id, name FROM customers WHERE email = '{escaped}'").fetchone()


def find_client_side(conn, email):  # psycopg's client-side binding pastes the value in, like psycopg2
    return ClientCursor(conn).execute("SELECT id, name FROM customers WHERE email = %s", (email,)).fetchone()


def find_dict(conn, email):
    return conn.cursor(row_factory=dict_row).execute("SELECT id, name FROM customers WHERE email = %s",
                                                     (email,)).fetchone()


def test_find_customer_passes_the_solution_and_stops_the_stub(capsys):
    drivers.find_customer(find_right)
    assert "Exercise 1 passed" in capsys.readouterr().out
    with pytest.raises(NotDone, match="Exercise 1 is not done yet"):
        drivers.find_customer(stub)


@pytest.mark.parametrize("wrong, said", [
    (find_fstring, "received the email inside the SQL text"),
    (find_escaped, "received the email inside the SQL text"),
    (find_client_side, "received the email inside the SQL text"),
    (find_dict, "returned a dict"),
])
def test_find_customer_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        drivers.find_customer(wrong)
    assert "Hint:" in str(caught.value)


def test_the_injection_the_check_guards_against_is_real():
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        find_fstring(conn, "nobody@example.com'; UPDATE customers SET name = 'pwned'; --")
        assert conn.execute("SELECT count(*) FROM customers WHERE name = 'pwned'").fetchone()[0] > 0
        conn.rollback()


def count_psycopg(conn, customer_id, status):
    return conn.execute("SELECT count(*) FROM orders WHERE customer_id = %s AND status = %s",
                        (customer_id, status)).fetchone()[0]


async def count_asyncpg(conn, customer_id, status):
    return await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = $1 AND status = $2", customer_id, status)


def count_sqlalchemy(conn, customer_id, status):
    return conn.execute(text("SELECT count(*) FROM orders WHERE customer_id = :c AND status = :s"),
                        {"c": customer_id, "s": status}).scalar_one()


def count_psycopg_dollar(conn, customer_id, status):
    return conn.execute("SELECT count(*) FROM orders WHERE customer_id = $1 AND status = $2",
                        (customer_id, status)).fetchone()[0]


async def count_asyncpg_percent(conn, customer_id, status):
    return await conn.fetchval("SELECT count(*) FROM orders WHERE customer_id = %s AND status = %s", customer_id, status)


async def count_asyncpg_fstring(conn, customer_id, status):
    return await conn.fetchval(f"SELECT count(*) FROM orders WHERE customer_id = {customer_id} AND status = '{status}'")


def count_sqlalchemy_percent(conn, customer_id, status):
    return conn.execute(text("SELECT count(*) FROM orders WHERE customer_id = %s AND status = %s"),
                        (customer_id, status)).scalar_one()


def count_psycopg_str(conn, customer_id, status):
    return str(count_psycopg(conn, customer_id, status))


def test_count_orders_passes_the_solution_and_stops_the_stub(capsys):
    asyncio.run(drivers.count_orders(count_psycopg, count_asyncpg, count_sqlalchemy))
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        asyncio.run(drivers.count_orders(stub, count_asyncpg, count_sqlalchemy))


@pytest.mark.parametrize("functions, said", [
    ((count_psycopg_dollar, count_asyncpg, count_sqlalchemy), "0 placeholders but 2 parameters"),
    ((count_psycopg, count_asyncpg_percent, count_sqlalchemy), "syntax error at or near \"%\""),
    ((count_psycopg, count_asyncpg_fstring, count_sqlalchemy), "returned 1|inside the SQL text|raised"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_percent), "count_sqlalchemy_percent raised"),
    ((count_psycopg_str, count_asyncpg, count_sqlalchemy), "returned '"),
])
def test_count_orders_rejects_plausible_wrong_answers(functions, said):
    with pytest.raises(CheckFailed, match=said):
        asyncio.run(drivers.count_orders(*functions))


@dataclass
class Product:
    id: int
    sku: str
    name: str
    price: Decimal


QUERY = "SELECT id, sku, name, price FROM products WHERE category = %s ORDER BY price, id LIMIT %s"


def cheapest(conn, category, limit):
    return conn.cursor(row_factory=class_row(Product)).execute(QUERY, (category, limit)).fetchall()


def cheapest_dicts(conn, category, limit):
    return conn.cursor(row_factory=dict_row).execute(QUERY, (category, limit)).fetchall()


def cheapest_tuples(conn, category, limit):
    return conn.execute(QUERY, (category, limit)).fetchall()


def cheapest_float(conn, category, limit):
    query = QUERY.replace("price FROM", "price::float8 AS price FROM")
    return conn.cursor(row_factory=class_row(Product)).execute(query, (category, limit)).fetchall()


def cheapest_unordered(conn, category, limit):
    query = QUERY.replace("ORDER BY price, id", "ORDER BY id")
    return conn.cursor(row_factory=class_row(Product)).execute(query, (category, limit)).fetchall()


def test_cheapest_passes_the_solution_and_stops_the_stub(capsys):
    drivers.cheapest(cheapest, cheapest_dicts, Product)
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        drivers.cheapest(stub, cheapest_dicts, Product)


@pytest.mark.parametrize("functions, said", [
    ((cheapest_tuples, cheapest_dicts), "return a list of Product objects"),
    ((cheapest_float, cheapest_dicts), "price arrived as float"),
    ((cheapest_unordered, cheapest_dicts), "order by price, then id"),
    ((cheapest, cheapest_tuples), "return a list of dicts"),
])
def test_cheapest_rejects_plausible_wrong_answers(functions, said):
    with pytest.raises(CheckFailed, match=said):
        drivers.cheapest(*functions, Product)
