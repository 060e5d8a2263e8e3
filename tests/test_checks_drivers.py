"""Lesson 01's checks reject plausible wrong answers, accept right alternatives, and say what they saw."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass
from decimal import Decimal

import psycopg
import pytest
from psycopg import ClientCursor, sql
from psycopg.rows import class_row, dict_row, kwargs_row, namedtuple_row, tuple_row
from sqlalchemy import column, func, select, table, text

from pgcourse.checks import CheckFailed, NotDone, drivers

pytestmark = pytest.mark.usefixtures("checks_database")


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


# --- exercise 1: find_customer ------------------------------------------------------------------

def find_right(conn, email):
    return conn.execute("SELECT id, name FROM customers WHERE email = %s", (email,)).fetchone()


def find_fstring(conn, email):
    return conn.execute(f"SELECT id, name FROM customers WHERE email = '{email}'").fetchone()


def find_escaped(conn, email):  # right results for every input, but the value is still pasted into the SQL
    escaped = email.replace("'", "''")
    return conn.execute(f"SELECT id, name FROM customers WHERE email = '{escaped}'").fetchone()


def find_client_side(conn, email):  # psycopg's client-side binding pastes the value in, like psycopg2
    return ClientCursor(conn).execute("SELECT id, name FROM customers WHERE email = %s", (email,)).fetchone()


def find_literal(conn, email):  # composed client-side with sql.Literal: safe, but pasted all the same
    query = sql.SQL("SELECT id, name FROM customers WHERE email = {}").format(sql.Literal(email))
    return conn.execute(query).fetchone()


def find_dict(conn, email):
    return conn.cursor(row_factory=dict_row).execute("SELECT id, name FROM customers WHERE email = %s",
                                                     (email,)).fetchone()


def find_list(conn, email):
    return conn.execute("SELECT id, name FROM customers WHERE email = %s", (email,)).fetchall()


def find_first_of_all(conn, email):  # IndexError for an unknown email
    return conn.execute("SELECT id, name FROM customers WHERE email = %s", (email,)).fetchall()[0]


def find_like(conn, email):
    return conn.execute("SELECT id, name FROM customers WHERE email LIKE %s", (email,)).fetchone()


def find_ilike(conn, email):
    return conn.execute("SELECT id, name FROM customers WHERE email ILIKE %s ORDER BY id", (email,)).fetchone()


def find_in_python(conn, email):  # never pastes anything: reads every customer and compares in Python
    for id_, name, mail in conn.execute("SELECT id, name, email FROM customers").fetchall():
        if mail == email:
            return (id_, name)
    return None


def find_swallowing(conn, email):  # f-string, errors turned into "not found"
    try:
        return conn.execute(f"SELECT id, name FROM customers WHERE email = '{email}'").fetchone()
    except Exception:
        return None


def find_with_conn(conn, email):  # closes the caller's connection
    with conn:
        return conn.execute("SELECT id, name FROM customers WHERE email = %s", (email,)).fetchone()


def find_exits(conn, email):
    sys.exit("no customer")


def find_prints_url(conn, email):
    print("looking up in", os.environ["DATABASE_URL"])
    return find_right(conn, email)


def test_find_customer_passes_the_solution_and_stops_the_stub(capsys):
    drivers.find_customer(find_right)
    assert "Exercise 1 passed" in capsys.readouterr().out
    with pytest.raises(NotDone, match="Exercise 1 is not done yet"):
        drivers.find_customer(stub)


@pytest.mark.parametrize("wrong, said", [
    (find_fstring, r"received the email \('sophie"),
    (find_escaped, "received the email .* inside the SQL text"),
    (find_client_side, "received the email .* inside the SQL text"),
    (find_literal, "received the email .* inside the SQL text"),
    (find_dict, "returned a dict"),
    (find_list, "returned a list"),
    (find_first_of_all, "raised IndexError"),
    (find_like, r"find_like\(conn, 'li_na@example.com'\) returned .* expected|find_like\(conn, 'lee_wu"),
    (find_ilike, r"returned \(\d+, '[^']+'\); expected"),
    (find_in_python, "never travelled as a parameter|sent 100\\d\\d rows"),
    (find_swallowing, "inside the SQL text"),
    (find_with_conn, "closed the connection|transaction unusable|raised"),
    (find_exits, r"tried to end the program"),
    (find_prints_url, "printed or logged a secret"),
])
def test_find_customer_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        drivers.find_customer(wrong)
    assert "Hint:" in str(caught.value)


def test_find_customer_names_wildcards_in_its_hint():
    with pytest.raises(CheckFailed, match="LIKE and ILIKE read _ and %"):
        drivers.find_customer(find_ilike)


def find_fetchall_first(conn, email):
    rows = conn.execute("SELECT id, name FROM customers WHERE email = %s", (email,)).fetchall()
    return rows[0] if rows else None


def find_cursor_named(conn, email):
    with conn.cursor() as cur:
        cur.execute("SELECT id, name FROM customers WHERE email = %(email)s", {"email": email})
        return cur.fetchone()


def find_namedtuple(conn, email):
    return conn.cursor(row_factory=namedtuple_row).execute("SELECT id, name FROM customers WHERE email = %s",
                                                           (email,)).fetchone()


def find_tuple_of_dict(conn, email):
    row = conn.cursor(row_factory=dict_row).execute("SELECT id, name FROM customers WHERE email = %s",
                                                    (email,)).fetchone()
    return (row["id"], row["name"]) if row else None


def find_prepared(conn, email):
    return conn.execute("SELECT id, name FROM customers WHERE email = %s", (email,), prepare=True).fetchone()


def find_lower(conn, email):  # case-insensitive, but no wildcards
    return conn.execute("SELECT id, name FROM customers WHERE lower(email) = lower(%s)", [email]).fetchone()


def find_server_cursor(conn, email):
    with conn.cursor(name="lookup") as cur:
        cur.execute("SELECT id, name FROM customers WHERE email = %s", (email,))
        return cur.fetchone()


@pytest.mark.parametrize("right", [find_fetchall_first, find_cursor_named, find_namedtuple, find_tuple_of_dict,
                                   find_prepared, find_lower, find_server_cursor])
def test_find_customer_accepts_right_alternatives(right, capsys):
    drivers.find_customer(right)
    assert "Exercise 1 passed" in capsys.readouterr().out


def test_the_injection_the_check_guards_against_is_real():
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        find_fstring(conn, "nobody@example.com'; UPDATE customers SET name = 'pwned'; --")
        assert conn.execute("SELECT count(*) FROM customers WHERE name = 'pwned'").fetchone()[0] > 0
        conn.rollback()


# --- exercise 2: count_orders -------------------------------------------------------------------

Q = "SELECT count(*) FROM orders WHERE customer_id = %s AND status = %s"


def count_psycopg(conn, customer_id, status):
    return conn.execute(Q, (customer_id, status)).fetchone()[0]


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


def count_psycopg_int_pasted(conn, customer_id, status):
    return conn.execute(f"SELECT count(*) FROM orders WHERE customer_id = {customer_id} AND status = %s",
                        (status,)).fetchone()[0]


async def count_asyncpg_int_pasted(conn, customer_id, status):
    return await conn.fetchval(f"SELECT count(*) FROM orders WHERE customer_id = {customer_id} AND status = $1", status)


def count_sqlalchemy_int_pasted(conn, customer_id, status):
    return conn.execute(text(f"SELECT count(*) FROM orders WHERE customer_id = {customer_id} AND status = :s"),
                        {"s": status}).scalar_one()


def count_psycopg_len(conn, customer_id, status):
    return len(conn.execute("SELECT id FROM orders WHERE customer_id = %s AND status = %s",
                            (customer_id, status)).fetchall())


async def count_asyncpg_len(conn, customer_id, status):
    return len(await conn.fetch("SELECT id FROM orders WHERE customer_id = $1 AND status = $2", customer_id, status))


def count_sqlalchemy_len(conn, customer_id, status):
    return len(conn.execute(text("SELECT id FROM orders WHERE customer_id = :c AND status = :s"),
                            {"c": customer_id, "s": status}).all())


def count_constant(conn, customer_id, status):
    return 3


async def count_asyncpg_swallowing(conn, customer_id, status):
    try:
        return await count_asyncpg_percent(conn, customer_id, status)
    except Exception:
        return 0


def count_sqlalchemy_exits(conn, customer_id, status):
    raise SystemExit(1)


def count_psycopg_status_escaped(conn, customer_id, status):  # the integer a parameter, the status hand-escaped
    escaped = status.replace("'", "''")
    return conn.execute(f"SELECT count(*) FROM orders WHERE customer_id = %s AND status = '{escaped}'",
                        (customer_id,)).fetchone()[0]


async def count_asyncpg_logs_url(conn, customer_id, status):
    logging.getLogger("shop").info("counting on %s", os.environ["DATABASE_URL"])
    return await count_asyncpg(conn, customer_id, status)


def count_sqlalchemy_begins(conn, customer_id, status):
    with conn.begin():
        return count_sqlalchemy(conn, customer_id, status)


def count_sqlalchemy_driver_sql(conn, customer_id, status):  # psycopg's placeholders through SQLAlchemy, not text()
    return conn.exec_driver_sql(Q, (customer_id, status)).scalar_one()


def count_sqlalchemy_raw_dbapi(conn, customer_id, status):  # the raw psycopg connection under SQLAlchemy
    return conn.connection.driver_connection.execute(Q, (customer_id, status)).fetchone()[0]


def count_sqlalchemy_raw_cursor(conn, customer_id, status):  # a DBAPI cursor of the pooled connection
    cur = conn.connection.cursor()
    cur.execute(Q, (customer_id, status))
    return cur.fetchone()[0]


def test_count_orders_passes_the_solution_and_stops_the_stub(capsys):
    asyncio.run(drivers.count_orders(count_psycopg, count_asyncpg, count_sqlalchemy))
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        asyncio.run(drivers.count_orders(stub, count_asyncpg, count_sqlalchemy))


@pytest.mark.parametrize("functions, said", [
    ((count_psycopg_dollar, count_asyncpg, count_sqlalchemy), "0 placeholders but 2 parameters"),
    ((count_psycopg, count_asyncpg_percent, count_sqlalchemy), "syntax error at or near \"%\""),
    ((count_psycopg, count_asyncpg_fstring, count_sqlalchemy), r"customer_id \(\d+\) inside the SQL text"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_percent), r"count_sqlalchemy_percent\(conn.*raised"),
    ((count_psycopg_str, count_asyncpg, count_sqlalchemy), "returned '"),
    ((count_psycopg_int_pasted, count_asyncpg, count_sqlalchemy), r"count_psycopg_int_pasted.*customer_id .* inside"),
    ((count_psycopg, count_asyncpg_int_pasted, count_sqlalchemy), r"count_asyncpg_int_pasted.*customer_id .* inside"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_int_pasted), r"count_sqlalchemy_int_pasted.*customer_id .* inside"),
    ((count_psycopg_len, count_asyncpg, count_sqlalchemy), r"count_psycopg_len.*sent 3 rows to Python"),
    ((count_psycopg, count_asyncpg_len, count_sqlalchemy), r"count_asyncpg_len.*sent 3 rows to Python"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_len), r"count_sqlalchemy_len.*sent 3 rows to Python"),
    ((count_constant, count_asyncpg, count_sqlalchemy), r"returned 3; expected \d+"),
    ((count_psycopg, count_asyncpg_swallowing, count_sqlalchemy), r"returned 0; expected [1-9]"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_exits), "tried to end the program"),
    ((count_psycopg, count_asyncpg_logs_url, count_sqlalchemy), "printed or logged a secret"),
    ((count_psycopg_status_escaped, count_asyncpg, count_sqlalchemy), r"received the status \('paid'\) inside"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_begins), "raised InvalidRequestError.*\n.*do not begin"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_driver_sql), r"count_sqlalchemy_driver_sql.*with exec_driver_sql"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_raw_dbapi), r"count_sqlalchemy_raw_dbapi.*connection underneath"),
    ((count_psycopg, count_asyncpg, count_sqlalchemy_raw_cursor), r"count_sqlalchemy_raw_cursor.*connection underneath"),
])
def test_count_orders_rejects_plausible_wrong_answers(functions, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        asyncio.run(drivers.count_orders(*functions))
    assert "Hint:" in str(caught.value)


def count_psycopg_named(conn, customer_id, status):
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE customer_id = %(c)s AND status = %(s)s",
                    {"c": customer_id, "s": status})
        (n,) = cur.fetchone()
        return n


async def count_asyncpg_fetchrow(conn, customer_id, status):
    row = await conn.fetchrow("SELECT count(*) AS n FROM orders WHERE customer_id = $1 AND status = $2",
                              customer_id, status)
    return row["n"]


async def count_asyncpg_prepared(conn, customer_id, status):
    stmt = await conn.prepare("SELECT count(*) FROM orders WHERE customer_id = $1 AND status = $2")
    return await stmt.fetchval(customer_id, status)


def count_sqlalchemy_bindparams(conn, customer_id, status):
    query = text("SELECT count(*) FROM orders WHERE customer_id = :c AND status = :s").bindparams(c=customer_id,
                                                                                                    s=status)
    return conn.execute(query).scalar()


def count_sqlalchemy_commits(conn, customer_id, status):  # SQLAlchemy habit: commit after every execute
    n = count_sqlalchemy(conn, customer_id, status)
    conn.commit()
    return n


def count_psycopg_str_param(conn, customer_id, status):  # the server reads '123' as an integer: still a parameter
    return conn.execute(Q, (str(customer_id), status)).fetchone()[0]


async def count_asyncpg_cursor(conn, customer_id, status):  # a cursor in a transaction of its own (a savepoint)
    async with conn.transaction():
        cur = await conn.cursor("SELECT count(*) FROM orders WHERE customer_id = $1 AND status = $2", customer_id, status)
        return (await cur.fetchrow())[0]


def count_sqlalchemy_core(conn, customer_id, status):
    orders = table("orders", column("customer_id"), column("status"))
    query = select(func.count()).select_from(orders).where(orders.c.customer_id == customer_id,
                                                            orders.c.status == status)
    return conn.scalar(query)


@pytest.mark.parametrize("functions", [
    (count_psycopg_named, count_asyncpg_fetchrow, count_sqlalchemy_bindparams),
    (count_psycopg, count_asyncpg_cursor, count_sqlalchemy_core),
    (count_psycopg_str_param, count_asyncpg, count_sqlalchemy),
    (count_psycopg, count_asyncpg_prepared, count_sqlalchemy_commits),
])
def test_count_orders_accepts_right_alternatives(functions, capsys):
    asyncio.run(drivers.count_orders(*functions))
    assert "Exercise 2 passed" in capsys.readouterr().out
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:  # nothing of the check's is left behind
        assert conn.execute("SELECT count(*) FROM customers WHERE id >= 1000000000").fetchone()[0] == 0


def test_count_orders_passes_inside_a_running_event_loop(capsys):
    async def main():  # as in a notebook: `await check.count_orders(...)`
        await drivers.count_orders(count_psycopg, count_asyncpg, count_sqlalchemy)

    asyncio.run(main())
    assert "Exercise 2 passed" in capsys.readouterr().out


# --- exercise 3: cheapest -----------------------------------------------------------------------

@dataclass
class Product:
    id: int
    sku: str
    name: str
    price: Decimal


QUERY = "SELECT id, sku, name, price FROM products WHERE category = %s ORDER BY price, id LIMIT %s"
NO_LIMIT = "SELECT id, sku, name, price FROM products WHERE category = %s ORDER BY price, id"


def cheapest(conn, category, limit):
    return conn.cursor(row_factory=class_row(Product)).execute(QUERY, (category, limit)).fetchall()


def cheapest_dicts(conn, category, limit):
    return conn.cursor(row_factory=dict_row).execute(QUERY, (category, limit)).fetchall()


def cheapest_tuples(conn, category, limit):
    return conn.cursor(row_factory=tuple_row).execute(QUERY, (category, limit)).fetchall()


def cheapest_float(conn, category, limit):
    query = QUERY.replace("price FROM", "price::float8 AS price FROM")
    return conn.cursor(row_factory=class_row(Product)).execute(query, (category, limit)).fetchall()


def cheapest_unordered(conn, category, limit):
    query = QUERY.replace("ORDER BY price, id", "ORDER BY id")
    return conn.cursor(row_factory=class_row(Product)).execute(query, (category, limit)).fetchall()


def cheapest_no_order(conn, category, limit):
    query = QUERY.replace(" ORDER BY price, id", "")
    return conn.cursor(row_factory=class_row(Product)).execute(query, (category, limit)).fetchall()


def cheapest_no_tie_breaker(conn, category, limit):
    query = QUERY.replace("ORDER BY price, id", "ORDER BY price")
    return conn.cursor(row_factory=class_row(Product)).execute(query, (category, limit)).fetchall()


def cheapest_by_hand(conn, category, limit):
    return [Product(*row) for row in conn.execute(QUERY, (category, limit)).fetchall()]


def cheapest_by_hand_indexed(conn, category, limit):
    rows = conn.execute(QUERY, (category, limit)).fetchall()
    return [Product(id=r[0], sku=r[1], name=r[2], price=r[3]) for r in rows]


def dicts_by_hand(conn, category, limit):
    cur = conn.execute(QUERY, (category, limit))
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def dicts_by_hand_keys(conn, category, limit):
    return [{"id": r[0], "sku": r[1], "name": r[2], "price": r[3]} for r in conn.execute(QUERY, (category, limit))]


def cheapest_sliced(conn, category, limit):
    return conn.cursor(row_factory=class_row(Product)).execute(NO_LIMIT, (category,)).fetchall()[:limit]


def cheapest_fetchmany(conn, category, limit):
    return conn.cursor(row_factory=class_row(Product)).execute(NO_LIMIT, (category,)).fetchmany(limit)


def cheapest_limit_pasted(conn, category, limit):
    return conn.cursor(row_factory=class_row(Product)).execute(NO_LIMIT + f" LIMIT {limit}", (category,)).fetchall()


def cheapest_category_pasted(conn, category, limit):
    query = f"SELECT id, sku, name, price FROM products WHERE category = '{category}' ORDER BY price, id LIMIT %s"
    return conn.cursor(row_factory=class_row(Product)).execute(query, (limit,)).fetchall()


def cheapest_constant_limit(conn, category, limit):
    return conn.cursor(row_factory=class_row(Product)).execute(QUERY, (category, 5)).fetchall()


def dicts_print_password(conn, category, limit):
    print("password:", conn.info.password)
    return cheapest_dicts(conn, category, limit)


def test_cheapest_passes_the_solution_and_stops_the_stub(capsys):
    drivers.cheapest(cheapest, cheapest_dicts, Product)
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        drivers.cheapest(stub, cheapest_dicts, Product)


@pytest.mark.parametrize("functions, said", [
    ((cheapest_tuples, cheapest_dicts), "return the list"),
    ((cheapest_float, cheapest_dicts), "price arrived as float"),
    ((cheapest_unordered, cheapest_dicts), "wrong order|gave"),
    ((cheapest_no_order, cheapest_dicts), "wrong order|gave"),
    ((cheapest_no_tie_breaker, cheapest_dicts), "right products in the wrong order"),
    ((cheapest_by_hand, cheapest_dicts), "built the rows from column names|raised"),
    ((cheapest_by_hand_indexed, cheapest_dicts), "raised KeyError"),
    ((cheapest, cheapest_tuples), "return the list"),
    ((cheapest, dicts_by_hand), "built the rows from column names"),
    ((cheapest, dicts_by_hand_keys), "raised KeyError|raised TypeError"),
    ((cheapest_sliced, cheapest_dicts), r"sent \d+ rows to Python"),
    ((cheapest_fetchmany, cheapest_dicts), r"sent \d+ rows to Python"),
    ((cheapest_limit_pasted, cheapest_dicts), r"the limit \(\d+\) never travelled as a parameter"),
    ((cheapest_category_pasted, cheapest_dicts), r"received the category \('kitchen'\) inside the SQL text"),
    ((cheapest_constant_limit, cheapest_dicts), "gave"),
    ((cheapest, dicts_print_password), "printed or logged a secret"),
])
def test_cheapest_rejects_plausible_wrong_answers(functions, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        drivers.cheapest(*functions, Product)
    assert "Hint:" in str(caught.value)


def cheapest_kwargs_row(conn, category, limit):
    return conn.cursor(row_factory=kwargs_row(Product)).execute(QUERY, (category, limit)).fetchall()


def cheapest_sets_row_factory(conn, category, limit):
    conn.row_factory = class_row(Product)
    return conn.execute(QUERY, (category, limit)).fetchall()


def cheapest_fetch_first(conn, category, limit):
    query = ("SELECT id, sku, name, price FROM products WHERE category = %(c)s"
             " ORDER BY price ASC, id ASC FETCH FIRST %(n)s ROWS ONLY")
    with conn.cursor(row_factory=class_row(Product)) as cur:
        return cur.execute(query, {"c": category, "n": limit}).fetchall()


def cheapest_short_circuit(conn, category, limit):
    if limit <= 0:
        return []
    return cheapest(conn, category, limit)


def dicts_other_column_order(conn, category, limit):
    query = QUERY.replace("id, sku, name, price", "price, name, sku, id")
    return conn.cursor(row_factory=dict_row).execute(query, (category, limit)).fetchall()


def dicts_from_namedtuples(conn, category, limit):
    return [r._asdict() for r in conn.cursor(row_factory=namedtuple_row).execute(QUERY, (category, limit))]


@pytest.mark.parametrize("functions", [
    (cheapest_kwargs_row, dicts_other_column_order),
    (cheapest_sets_row_factory, cheapest_dicts),
    (cheapest_fetch_first, dicts_from_namedtuples),
    (cheapest_short_circuit, cheapest_dicts),
])
def test_cheapest_accepts_right_alternatives(functions, capsys):
    drivers.cheapest(*functions, Product)
    assert "Exercise 3 passed" in capsys.readouterr().out


# --- hangs get a verdict ------------------------------------------------------------------------

def find_sleeps(conn, email):
    return conn.execute("SELECT pg_sleep(600), %s", (email,)).fetchone()


def count_psycopg_spins(conn, customer_id, status):
    while True:
        pass


async def count_asyncpg_sleeps(conn, customer_id, status):
    return await conn.fetchval("SELECT count(*) FROM orders, pg_sleep(600) WHERE customer_id = $1 AND status = $2",
                               customer_id, status)


def count_sqlalchemy_sleeps(conn, customer_id, status):
    return conn.execute(text("SELECT count(*) FROM orders, pg_sleep(600) WHERE customer_id = :c AND status = :s"),
                        {"c": customer_id, "s": status}).scalar_one()


def cheapest_sleeps(conn, category, limit):
    conn.execute("SELECT pg_sleep(600)")


@pytest.mark.parametrize("check, functions", [
    (drivers.find_customer, (find_sleeps,)),
    (drivers.count_orders, (count_psycopg_spins, count_asyncpg, count_sqlalchemy)),
    (drivers.count_orders, (count_psycopg, count_asyncpg_sleeps, count_sqlalchemy)),
    (drivers.count_orders, (count_psycopg, count_asyncpg, count_sqlalchemy_sleeps)),
    (drivers.cheapest, (cheapest_sleeps, cheapest_dicts, Product)),
])
def test_a_function_that_hangs_gets_a_verdict(check, functions, monkeypatch):
    monkeypatch.setattr(drivers, "TIME_LIMIT", 2.0)
    with pytest.raises(CheckFailed, match="did not finish within 2 s") as caught:
        result = check(*functions)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    assert "Hint:" in str(caught.value)


def test_no_session_of_the_checks_is_left_open(capsys):
    drivers.find_customer(find_right)
    asyncio.run(drivers.count_orders(count_psycopg, count_asyncpg, count_sqlalchemy))
    drivers.cheapest(cheapest, cheapest_dicts, Product)
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        deadline = time.monotonic() + 5
        while True:
            left = conn.execute("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
                                " AND application_name LIKE 'pgcourse %'").fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert left == []


def find_own_connection(conn, email):  # ignores the connection it is given
    with psycopg.connect(os.environ["DATABASE_URL"]) as own:
        return find_right(own, email)


def count_psycopg_own_connection(conn, customer_id, status):
    with psycopg.connect(os.environ["DATABASE_URL"]) as own:
        return count_psycopg(own, customer_id, status)


def cheapest_own_connection(conn, category, limit):
    with psycopg.connect(os.environ["DATABASE_URL"]) as own:
        return cheapest(own, category, limit)


@pytest.mark.parametrize("check, functions", [
    (drivers.find_customer, (find_own_connection,)),
    (drivers.count_orders, (count_psycopg_own_connection, count_asyncpg, count_sqlalchemy)),
    (drivers.cheapest, (cheapest_own_connection, cheapest_dicts, Product)),
])
def test_a_function_that_opens_its_own_connection_is_told_to_use_the_one_it_is_given(check, functions):
    with pytest.raises(CheckFailed, match="run your query on the connection you are given"):
        result = check(*functions)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
