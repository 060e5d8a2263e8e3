"""Checks for lesson 01 (drivers): parameterized lookups, placeholders per driver, row shapes."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import psycopg
from sqlalchemy import create_engine, make_url

from . import CheckFailed, acall, call, database_url, last_query_of, passed

HOSTILE_EMAILS = [
    "' OR '1'='1",
    "' UNION SELECT 1, current_user --",
    "nobody@example.com'; UPDATE customers SET name = 'pwned'; --",
]
PARAM_HINT = "pass the value as a parameter: conn.execute(\"... WHERE email = %s\", (email,))"


def _run(exercise: int, fn, conn, *args, hint: str, observer: psycopg.Connection | None = None):
    """Call the learner's function inside a savepoint; a database error becomes a CheckFailed.

    With an observer, return (result, the last statement the server received from `conn`), read
    before the savepoint is released.
    """
    try:
        with conn.transaction():
            result = call(exercise, fn, conn, *args)
            return (result, last_query_of(conn, observer)) if observer is not None else result
    except psycopg.Error as exc:
        shown = ", ".join(repr(a) for a in args)
        raise CheckFailed(f"{fn.__name__}(conn, {shown}) raised {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}", hint) from None


def find_customer(fn) -> None:
    """Exercise 1: fn(conn, email) -> (id, name) or None, safe against hostile input."""
    url = database_url()
    with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as observer:
        try:
            known = conn.execute("SELECT id, name, email FROM customers WHERE id = 4242").fetchone()
            pat = conn.execute("INSERT INTO customers (name, email, country, created_at) VALUES"
                               " ('Pat O''Brien', 'pat.o''brien@example.com', 'IE', now()) RETURNING id").fetchone()[0]
            before = conn.execute("SELECT count(*), count(*) FILTER (WHERE name = 'pwned') FROM customers").fetchone()
            cases = [(known[2], known[:2]), ("nobody@example.com", None),
                     ("pat.o'brien@example.com", (pat, "Pat O'Brien"))] + [(e, None) for e in HOSTILE_EMAILS]
            for email, expected in cases:
                got, sent = _run(1, fn, conn, email, observer=observer,
                                 hint=PARAM_HINT + "; a quote in the value must not end the SQL string")
                if got is not None and not isinstance(got, tuple):
                    raise CheckFailed(f"find_customer returned a {type(got).__name__}: {got!r}",
                                      "return the row as fetchone() gives it: a tuple (id, name), or None")
                if got != expected:
                    raise CheckFailed(f"find_customer(conn, {email!r}) returned {got!r}; expected {expected!r}.",
                                      PARAM_HINT + ": then the input is only ever compared, never run")
                if email in sent or email.replace("'", "''") in sent:
                    raise CheckFailed(f"The server received the email inside the SQL text: {sent!r}",
                                      PARAM_HINT + ", so that psycopg sends it apart from the SQL")
            after = conn.execute("SELECT count(*), count(*) FILTER (WHERE name = 'pwned') FROM customers").fetchone()
            if after != before:
                raise CheckFailed(f"Hostile input changed the customers table: {before} -> {after} (rows, 'pwned').",
                                  PARAM_HINT)
        finally:
            conn.rollback()  # nothing the check did, or the learner's code did, is kept
    passed(1, "right rows for real emails, nothing for hostile ones, and values sent apart from the SQL.")


async def count_orders(fn_psycopg, fn_asyncpg, fn_sqlalchemy) -> None:
    """Exercise 2: the same count with each driver's own placeholder style."""
    url = database_url()
    cases = [(7, "paid"), (7, "shipped"), (4242, "pending"), (7, "paid' OR '1'='1")]
    with psycopg.connect(url, autocommit=True) as observer:
        truth = {case: observer.execute("SELECT count(*) FROM orders WHERE customer_id = %s AND status = %s",
                                        case).fetchone()[0] for case in cases}

        def judge(name, case, got, sent):
            if got != truth[case] or not isinstance(got, int):
                raise CheckFailed(f"{name}(conn, {case[0]!r}, {case[1]!r}) returned {got!r}; expected {truth[case]}.",
                                  "count with SELECT count(*) ... and return the number as an int")
            if case[1] in sent:
                raise CheckFailed(f"{name}: the server received the status inside the SQL text: {sent!r}",
                                  "use the driver's placeholders so that the values travel apart from the SQL")

        with psycopg.connect(url) as conn:
            for case in cases:
                got, sent = _run(2, fn_psycopg, conn, *case, observer=observer,
                                 hint="psycopg placeholders are %s (or %(name)s), values in a tuple (or dict)")
                judge(fn_psycopg.__name__, case, got, sent)
        aconn = await asyncpg.connect(url)
        try:
            for case in cases:
                try:
                    got = await acall(2, fn_asyncpg, aconn, *case)
                except asyncpg.PostgresError as exc:
                    raise CheckFailed(f"{fn_asyncpg.__name__} raised {type(exc).__name__}: {exc}",
                                      "asyncpg placeholders are $1, $2, and values follow the query as arguments") from None
                judge(fn_asyncpg.__name__, case, got, last_query_of(aconn.get_server_pid(), observer))
        finally:
            await aconn.close()
        engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
        try:
            with engine.connect() as sa_conn:
                for case in cases:
                    try:
                        got = call(2, fn_sqlalchemy, sa_conn, *case)
                    except Exception as exc:  # SQLAlchemy wraps driver errors in its own types
                        sa_conn.rollback()
                        raise CheckFailed(f"{fn_sqlalchemy.__name__} raised {type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0]}",
                                          "SQLAlchemy's text() takes :name placeholders and a dict of values") from None
                    pid = sa_conn.connection.driver_connection.info.backend_pid
                    judge(fn_sqlalchemy.__name__, case, got, last_query_of(pid, observer))
                sa_conn.rollback()
        finally:
            engine.dispose()
    passed(2, "psycopg, asyncpg and SQLAlchemy each counted right with their own placeholders.")


def cheapest(fn_objects, fn_dicts, product_class) -> None:
    """Exercise 3: the cheapest products of a category, as dataclass objects and as dicts."""
    url = database_url()
    fields = ["id", "sku", "name", "price"]
    with psycopg.connect(url) as conn:
        def truth(category, limit):
            return conn.execute("SELECT id, sku, name, price FROM products WHERE category = %s"
                                " ORDER BY price, id LIMIT %s", (category, limit)).fetchall()

        try:
            for category, limit in [("kitchen", 3), ("audio", 5), ("kitchen' OR '1'='1", 3)]:
                expected = truth(category, limit)
                objects = _run(3, fn_objects, conn, category, limit, hint="use class_row(Product) as the row factory")
                if not isinstance(objects, list) or not all(isinstance(o, product_class) for o in objects):
                    raise CheckFailed(f"{fn_objects.__name__} returned {objects!r:.200}",
                                      f"return a list of {product_class.__name__} objects: "
                                      f"conn.cursor(row_factory=class_row({product_class.__name__}))")
                wrong_type = [o.price for o in objects if not isinstance(o.price, Decimal)]
                if wrong_type:
                    raise CheckFailed(f"price arrived as {type(wrong_type[0]).__name__}, not Decimal",
                                      "select the numeric column as it is: numeric becomes Decimal, exact as money must be")
                got = [tuple(getattr(o, f) for f in fields) for o in objects]
                if got != expected:
                    raise CheckFailed(f"{fn_objects.__name__}(conn, {category!r}, {limit}) gave {got!r:.300};"
                                      f" expected {expected!r:.300}",
                                      "order by price, then id, and pass category and limit as parameters")
                dicts = _run(3, fn_dicts, conn, category, limit, hint="use dict_row as the row factory")
                if not isinstance(dicts, list) or not all(isinstance(d, dict) for d in dicts):
                    raise CheckFailed(f"{fn_dicts.__name__} returned {dicts!r:.200}",
                                      "return a list of dicts: conn.cursor(row_factory=dict_row)")
                if [list(d) for d in dicts] != [fields] * len(dicts) or [tuple(d.values()) for d in dicts] != expected:
                    raise CheckFailed(f"{fn_dicts.__name__}(conn, {category!r}, {limit}) gave {dicts!r:.300}",
                                      "select exactly id, sku, name, price, ordered by price then id")
        finally:
            conn.rollback()
    passed(3, "dataclass objects and dicts, right rows, right order, prices as Decimal.")
