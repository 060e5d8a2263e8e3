"""Checks for lesson 01 (drivers): parameterized lookups, placeholders per driver, row shapes.

Every check hands the learner's functions connections it opened itself (tagged, in a transaction it
rolls back), and watches what those functions send: each statement's text and parameters, as the
driver passed them on (a recording cursor for psycopg and SQLAlchemy's psycopg connection, the
query logger for asyncpg), and the text the server received (pg_stat_activity). From that it judges
that every input value travelled as a parameter, and that no statement sent more rows than the
answer needs (counting or cutting rows in Python instead of with count(*) or LIMIT). For SQLAlchemy it
also watches which statements SQLAlchemy itself ran (an event listener on its engine), so that a query sent
with exec_driver_sql or on the psycopg connection underneath is not taken for one in SQLAlchemy's own style.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets as _secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
from psycopg import sql
from psycopg.rows import dict_row, namedtuple_row, tuple_row
from sqlalchemy import create_engine, event, make_url
from sqlalchemy.exc import SQLAlchemyError

from . import (
    CheckFailed,
    NotDone,
    arun,
    check_connect,
    database_url,
    describe_call,
    disorder,
    last_query_of,
    learner_env,
    new_tag,
    passed,
    run,
    with_params,
)

HOSTILE_EMAILS = [
    "' OR '1'='1",
    "' UNION SELECT 1, current_user --",
    "nobody@example.com'; UPDATE customers SET name = 'pwned'; --",
]
PARAM_HINT = "pass the value as a parameter: conn.execute(\"... WHERE email = %s\", (email,))"
TIME_LIMIT = 30.0
OWN_CONN_HINT = ("run your query on the connection you are given (conn): the check's test rows exist only in its"
                 " transaction, which a connection of your own does not see")


# --- what the learner's code sent ----------------------------------------------------------------

@dataclass
class _Sent:
    """One statement the learner's code ran: its text, its parameters, and how many rows came back."""

    text: str
    params: Any
    rows: int | None  # None: not known (the check could not count them)


@dataclass
class _Log:
    statements: list[_Sent] = field(default_factory=list)

    def clear(self) -> None:
        self.statements.clear()


def _text_of(query, cur) -> str:
    if isinstance(query, sql.Composable):
        with contextlib.suppress(Exception):
            return query.as_string(cur)
        return str(query)
    if isinstance(query, (bytes, bytearray, memoryview)):
        return bytes(query).decode("utf-8", "replace")
    return str(query)


def _recording_cursor(log: _Log) -> type[psycopg.Cursor]:
    """A psycopg cursor class (server-side binding, like the default) that notes every execute()."""

    class RecordingCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            ok = False
            try:
                result = super().execute(query, params, **kwargs)
                ok = True
                return result
            finally:
                rows = self.pgresult.ntuples if ok and self.pgresult is not None else None
                log.statements.append(_Sent(_text_of(query, self), params, rows))

        def executemany(self, query, params_seq, **kwargs):
            params_seq = list(params_seq)
            try:
                return super().executemany(query, params_seq, **kwargs)
            finally:
                for params in params_seq:
                    log.statements.append(_Sent(_text_of(query, self), params, None))

    return RecordingCursor


def _values(params: Any) -> list:
    if params is None:
        return []
    if isinstance(params, dict):
        return list(params.values())
    if isinstance(params, (list, tuple)):
        return list(params)
    return [params]


def _same(sent: Any, value: Any) -> bool:
    if isinstance(sent, bool) or isinstance(value, bool):
        return sent is value
    with contextlib.suppress(Exception):
        if sent == value:
            return True
    return isinstance(sent, (str, int, Decimal)) and str(sent) == str(value)


def _pasted(value: Any, text: str) -> bool:
    """Whether the value appears in the SQL text as a pasted literal."""
    if isinstance(value, str):
        return bool(value) and ("'" + value + "'" in text or "'" + value.replace("'", "''") + "'" in text
                                or (len(value) > 3 and value in text))
    if isinstance(value, int) and abs(value) >= 100_000:  # distinctive: cannot appear in the SQL by chance
        return re.search(rf"(?<![\w$]){value}(?!\w)", text) is not None
    return False


def _show(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


_CONTROL = re.compile(r"\s*(SAVEPOINT|RELEASE|ROLLBACK|BEGIN|COMMIT|START|END|SET|RESET|SHOW)\b", re.IGNORECASE)
"""Statements that carry no input values: transaction control and settings."""


def _judge_sent(call_text: str, values: dict[str, Any], log: _Log, server_text: str, *, max_rows: int | None,
                hint_param: str, hint_rows: str) -> None:
    """Every input value travelled as a parameter, none was pasted into the SQL, and no statement
    sent more than `max_rows` rows."""
    texts = [s.text for s in log.statements] + ([server_text] if server_text else [])
    for label, value in values.items():
        for text in texts:
            if _pasted(value, text):
                raise CheckFailed(f"{call_text}: the server received the {label} ({value!r}) inside the SQL text:"
                                  f" {_show(text)}", hint_param)
    if max_rows is not None:
        counted = [s for s in log.statements if s.rows is not None]
        worst = max(counted, key=lambda s: s.rows, default=None)
        if worst is not None and worst.rows > max_rows:
            raise CheckFailed(f"{call_text}: one statement sent {worst.rows} rows to Python"
                              f" ({_show(worst.text, 120)}), where the answer needs at most {max_rows}.", hint_rows)
    queries = [s for s in log.statements if not _CONTROL.match(s.text)]
    if queries:  # none seen: the query went by a way the check does not watch (an asyncpg cursor), judged by its text
        for label, value in values.items():
            if not any(_same(v, value) for s in queries for v in _values(s.params)):
                sent = "; ".join(f"{_show(s.text, 120)} with {s.params!r}" for s in queries[:3])
                raise CheckFailed(f"{call_text}: the {label} ({value!r}) never travelled as a parameter. Your code sent:"
                                  f" {sent}", hint_param)


def _closed_verdict(call_text: str, what: str = "connection") -> CheckFailed:
    return CheckFailed(f"{call_text} closed the {what} it was given.",
                       "the caller owns the connection: use it (or `with conn.cursor() as cur:`), but do not close it"
                       " or use `with conn:` on it")


_OWNER_HINT = ("do not begin, commit, roll back or close on the connection you are given (no `with conn:` either):"
               " run your query on it, the caller owns it and its transaction")


_DRIVER_ERRORS = (psycopg.Error, asyncpg.PostgresError, asyncpg.InterfaceError, SQLAlchemyError)


def _driver_error(call_text: str, exc: BaseException, hint: str, other_hint: str | None = None) -> CheckFailed:
    """A verdict for what the learner's function raised: a driver's error gets the placeholder hint."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    owner = any(w in first for w in ("forbidden within a Transaction", "connection is closed", "the connection is lost",
                                      "connection was closed", "This Connection is closed",
                                      "already begun", "already initialized a SQLAlchemy Transaction",
                                      "transaction is already"))
    if owner:
        chosen = _OWNER_HINT
    elif isinstance(exc, _DRIVER_ERRORS):
        chosen = hint
    else:
        chosen = other_hint or "run your function on its own in a cell with the same arguments, and read the error"
    return CheckFailed(f"{call_text} raised {type(exc).__name__}" + (f": {first}" if first else "."), chosen)


def _psycopg_call(exercise: int, fn, conn: psycopg.Connection, log: _Log, observer, *args, tag: str, hint: str,
                  other_hint: str | None = None):
    """Call fn(conn, *args) inside a savepoint; return (result, last statement text the server saw)."""
    call_text = describe_call(fn, (conn, *args))
    log.clear()
    verdict: Exception | None = None
    try:
        with conn.transaction():
            try:
                result = run(exercise, fn, conn, *args, timeout=TIME_LIMIT, tag=tag,
                             stop_pids=[conn.info.backend_pid], allowed=(Exception,))
            except (CheckFailed, NotDone) as exc:
                verdict = exc
                raise
            except Exception as exc:  # noqa: BLE001 - judged and turned into a verdict here
                verdict = _driver_error(call_text, exc, hint, other_hint)
                raise verdict from None
            if conn.closed:
                verdict = _closed_verdict(call_text)
                raise verdict
            return result, last_query_of(conn, observer)
    except psycopg.Error as exc:  # the savepoint could not be rolled back or released
        if verdict is not None:  # e.g. a time limit: the check ended the session; say what happened first
            raise verdict from None
        if conn.closed:
            raise _closed_verdict(call_text) from None
        raise CheckFailed(f"{call_text} left the connection's transaction unusable ({type(exc).__name__}:"
                          f" {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}).",
                          _OWNER_HINT) from None


# --- exercise 1 ----------------------------------------------------------------------------------

def find_customer(fn) -> None:
    """Exercise 1: fn(conn, email) -> (id, name) or None, safe against hostile input."""
    url = database_url()
    tag, log = new_tag(1), _Log()
    with psycopg.connect(with_params(url, application_name=tag)) as conn, check_connect(url, autocommit=True) as observer, \
            learner_env(tag, url):  # a connection the learner's code opens itself is tagged too
        conn.cursor_factory = _recording_cursor(log)
        try:
            cur = conn.cursor(row_factory=tuple_row)
            known = cur.execute("SELECT id, name, email FROM customers WHERE id = 4242").fetchone()
            made = {}
            for name, email in [("Pat O'Brien", "pat.o'brien@example.com"), ("Lee Wu", "lee.wu@example.com"),
                                ("Lixna Park", "lixna@example.com"), ("Li Na", "li_na@example.com")]:
                made[email] = cur.execute("INSERT INTO customers (name, email, country, created_at)"
                                          " VALUES (%s, %s, 'IE', now()) RETURNING id, name", (name, email)).fetchone()
            before = cur.execute("SELECT count(*), count(*) FILTER (WHERE name = 'pwned') FROM customers").fetchone()
            cases = [(known[2], known[:2]), ("nobody@example.com", None),
                     ("pat.o'brien@example.com", made["pat.o'brien@example.com"]),
                     ("li_na@example.com", made["li_na@example.com"]),
                     ("lee_wu@example.com", None), ("%@example.com", None)] + [(e, None) for e in HOSTILE_EMAILS]
            for email, expected in cases:
                got, sent = _psycopg_call(1, fn, conn, log, observer, email, tag=tag,
                                          hint=PARAM_HINT + "; a quote in the value must not end the SQL string",
                                          other_hint="fetchone() gives the row, or None when no customer has"
                                                     " that email: return it as it is")
                call_text = describe_call(fn, (conn, email))
                if got is not None and not isinstance(got, tuple):
                    raise CheckFailed(f"{call_text} returned a {type(got).__name__}: {got!r:.200}",
                                      "return the row as fetchone() gives it: a tuple (id, name), or None")
                if got != expected:
                    like = any(ch in email for ch in "%_") and got is not None
                    raise CheckFailed(f"{call_text} returned {got!r}; expected {expected!r}.",
                                      OWN_CONN_HINT if not log.statements else
                                      "compare with = : LIKE and ILIKE read _ and % in the input as wildcards"
                                      if like else PARAM_HINT + ": then the input is only ever compared, never run")
                _judge_sent(call_text, {"email": email}, log, sent, max_rows=1,
                            hint_param=PARAM_HINT + ", so that psycopg sends it apart from the SQL"
                                       " (client-side binding, as in psycopg2 or ClientCursor, pastes it into the text)",
                            hint_rows="let the WHERE clause find the one customer: WHERE email = %s")
            after = cur.execute("SELECT count(*), count(*) FILTER (WHERE name = 'pwned') FROM customers").fetchone()
            if after != before:
                raise CheckFailed(f"Hostile input changed the customers table: {before} -> {after} (rows, 'pwned').",
                                  PARAM_HINT)
        finally:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):  # a verdict on its way is what the learner should see
                    conn.rollback()  # nothing the check did, or the learner's code did, is kept
    passed(1, "right rows for real emails, nothing for hostile ones or wildcards, and values sent apart from the SQL.")


# --- exercise 2 ----------------------------------------------------------------------------------

_STATUSES = {1: ["paid", "paid", "paid", "shipped", "pending", "pending"], 2: ["pending"] * 12 + ["paid"]}


def _count_data(ids: list[int]) -> list[str]:
    """SQL statements (the check's own, no input from the learner) that add customers with known orders,
    composed with psycopg.sql so that every driver can run them as they are."""
    c = {i + 1: cid for i, cid in enumerate(ids)}
    rows = sql.SQL(", ").join(sql.SQL("({}, {}, {}, 'NL', now())").format(
        sql.Literal(c[k]), sql.Literal(f"Check Customer {k}"), sql.Literal(f"check.{c[k]}@example.invalid"))
        for k in (1, 2))
    orders = sql.SQL(", ").join(sql.SQL("({}, {}, now())").format(sql.Literal(c[k]), sql.Literal(s))
                                for k, statuses in _STATUSES.items() for s in statuses)
    return [sql.SQL("INSERT INTO customers (id, name, email, country, created_at) VALUES {}").format(rows).as_string(None),
            sql.SQL("INSERT INTO orders (customer_id, status, created_at) VALUES {}").format(orders).as_string(None)]


def _remove_count_data(url: str, ids: list[int]) -> None:
    """Delete the check's customers, should the learner's code have committed them."""
    with contextlib.suppress(psycopg.Error), check_connect(url, autocommit=True) as admin:
        admin.execute("DELETE FROM orders WHERE customer_id = ANY(%s)", (ids,))
        admin.execute("DELETE FROM customers WHERE id = ANY(%s)", (ids,))


async def count_orders(fn_psycopg, fn_asyncpg, fn_sqlalchemy) -> None:
    """Exercise 2: the same count with each driver's own placeholder style."""
    url = database_url()
    ids = random.sample(range(1_000_000_000, 2_000_000_000), 3)  # distinctive: their text cannot be there by chance
    c1, c2, c3 = ids
    cases = [(c1, "paid"), (c1, "shipped"), (c1, "cancelled"), (c2, "pending"), (c2, "paid"), (c3, "paid"),
             (4242, "paid"), (c1, "paid' OR '1'='1")]
    tag = new_tag(2)
    tagged = with_params(url, application_name=tag)
    hint_param = "pass both values as parameters with the driver's own placeholders, the integer too"
    hint_rows = "let the server count: SELECT count(*) ... returns one row with the number"
    try:
        with check_connect(url, autocommit=True) as observer, learner_env(tag, url):
            # psycopg
            log = _Log()
            with psycopg.connect(tagged) as conn:
                conn.cursor_factory = _recording_cursor(log)
                try:
                    for statement in _count_data(ids):
                        conn.execute(statement)
                    truth = {case: conn.cursor(row_factory=tuple_row).execute(
                        "SELECT count(*) FROM orders WHERE customer_id = %s AND status = %s", case).fetchone()[0]
                        for case in cases}

                    def judge(fn, case, got, call_text, used=True):
                        if not isinstance(got, int) or isinstance(got, bool) or got != truth[case]:
                            raise CheckFailed(f"{call_text} returned {got!r}; expected {truth[case]}.",
                                              "count with SELECT count(*) ... and return the number as an int"
                                              if used or not isinstance(got, int) else OWN_CONN_HINT)

                    for case in cases:
                        got, sent = _psycopg_call(2, fn_psycopg, conn, log, observer, *case, tag=tag,
                                                  hint="psycopg placeholders are %s (or %(name)s), values in a tuple"
                                                       " (or dict)")
                        call_text = describe_call(fn_psycopg, (conn, *case))
                        judge(fn_psycopg, case, got, call_text, bool(log.statements))
                        _judge_sent(call_text, {"customer_id": case[0], "status": case[1]}, log, sent, max_rows=1,
                                    hint_param=hint_param + ": %s for each", hint_rows=hint_rows)
                finally:
                    if not conn.closed:
                        with contextlib.suppress(psycopg.Error):
                            conn.rollback()
            # asyncpg
            await _count_asyncpg(fn_asyncpg, tagged, ids, cases, judge, observer, tag, hint_param, hint_rows)
            # SQLAlchemy
            _count_sqlalchemy(fn_sqlalchemy, tagged, ids, cases, judge, observer, tag, hint_param, hint_rows)
    finally:
        _remove_count_data(url, ids)
    passed(2, "psycopg, asyncpg and SQLAlchemy each counted right, every value sent as a parameter"
              " in the driver's own placeholder style.")


async def _count_asyncpg(fn, tagged, ids, cases, judge, observer, tag, hint_param, hint_rows) -> None:
    hint = "asyncpg placeholders are $1, $2, and the values follow the query as arguments"
    aconn = await asyncpg.connect(tagged)
    logged: list = []

    def note(record) -> None:
        logged.append(record)

    try:
        tr = aconn.transaction()
        await tr.start()
        for statement in _count_data(ids):
            await aconn.execute(statement)
        aconn.add_query_logger(note)
        pid = aconn.get_server_pid()
        for case in cases:
            call_text = describe_call(fn, (aconn, *case))
            inner = aconn.transaction()
            await inner.start()
            await asyncio.sleep(0)  # query loggers are called soon after each query: let them run, then forget
            logged.clear()
            try:
                try:
                    got = await arun(2, fn, aconn, *case, timeout=TIME_LIMIT, tag=tag, stop_pids=[pid],
                                     allowed=(Exception,))
                except (CheckFailed, NotDone):
                    raise
                except Exception as exc:  # noqa: BLE001 - judged and turned into a verdict here
                    raise _driver_error(call_text, exc, hint) from None
                await asyncio.sleep(0)  # query loggers are called soon after each query: let them run
                await asyncio.sleep(0)
                if aconn.is_closed():
                    raise _closed_verdict(call_text)
                sent = last_query_of(pid, observer)
                judge(fn, case, got, call_text, bool(logged))
                log = _Log([_Sent(r.query, tuple(r.args) if isinstance(r.args, (tuple, list)) else r.args, None)
                            for r in list(logged) if r.exception is None])
                for s in log.statements:  # count the rows each statement returns by running it again
                    with contextlib.suppress(Exception):
                        async with aconn.transaction():
                            s.rows = len(await aconn.fetch(s.text, *_values(s.params)))
                            raise _Undo
                _judge_sent(call_text, {"customer_id": case[0], "status": case[1]}, log, sent, max_rows=1,
                            hint_param=hint_param + ": $1, $2", hint_rows=hint_rows)
            finally:
                if not aconn.is_closed():
                    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                        await inner.rollback()
    finally:
        if not aconn.is_closed():
            aconn.remove_query_logger(note)
            with contextlib.suppress(Exception):
                await tr.rollback()
            await aconn.close()


class _Undo(Exception):
    """Raised inside a transaction block to roll it back."""


def _count_sqlalchemy(fn, tagged, ids, cases, judge, observer, tag, hint_param, hint_rows) -> None:
    hint = "SQLAlchemy's text() takes :name placeholders and a dict of values"
    engine = create_engine(make_url(tagged).set(drivername="postgresql+psycopg"))
    log = _Log()
    through: list[tuple[str, bool]] = []  # what went through SQLAlchemy: (statement, by exec_driver_sql)

    @event.listens_for(engine, "before_cursor_execute")
    def note(conn, cursor, statement, parameters, context, executemany) -> None:
        through.append((statement, context is None or context.compiled is None))

    try:
        with engine.connect() as sa_conn:
            driver_conn = sa_conn.connection.driver_connection
            driver_conn.cursor_factory = _recording_cursor(log)
            pid = driver_conn.info.backend_pid
            for statement in _count_data(ids):
                sa_conn.exec_driver_sql(statement)
            try:
                for case in cases:
                    call_text = describe_call(fn, (sa_conn, *case))
                    log.clear()
                    through.clear()
                    savepoint = sa_conn.begin_nested()
                    try:
                        try:
                            got = run(2, fn, sa_conn, *case, timeout=TIME_LIMIT, tag=tag, stop_pids=[pid],
                                      allowed=(Exception,))
                        except (CheckFailed, NotDone):
                            raise
                        except Exception as exc:  # noqa: BLE001 - judged and turned into a verdict here
                            raise _driver_error(call_text, exc, hint) from None
                        if sa_conn.closed:
                            raise _closed_verdict(call_text)
                        sent = last_query_of(pid, observer)
                    finally:
                        if not sa_conn.closed:
                            with contextlib.suppress(Exception):
                                if savepoint.is_active:
                                    savepoint.rollback()
                    judge(fn, case, got, call_text, bool(log.statements))
                    _judge_sent(call_text, {"customer_id": case[0], "status": case[1]}, log, sent, max_rows=1,
                                hint_param=hint_param + ": :name in text(), values in a dict", hint_rows=hint_rows)
                    _judge_through_sqlalchemy(call_text, through, log, sent)
            finally:
                if not sa_conn.closed:
                    with contextlib.suppress(Exception):
                        sa_conn.rollback()
    finally:
        engine.dispose()


_SA_HINT = ("let SQLAlchemy run the query: conn.execute(text(...)) with :name placeholders and a dict of values"
            " (or a Core select()), so that SQLAlchemy's own placeholder style is the one you use")


def _judge_through_sqlalchemy(call_text: str, through: list[tuple[str, bool]], log: _Log, server_text: str) -> None:
    """The learner's statement went through SQLAlchemy's Connection.execute: neither exec_driver_sql (the
    SQL handed to psycopg as it is, psycopg's placeholders) nor the psycopg connection underneath."""
    driver_sql = [text for text, raw in through if raw and not _CONTROL.match(text)]
    if driver_sql:
        raise CheckFailed(f"{call_text} ran {_show(driver_sql[0], 120)} with exec_driver_sql, which hands the SQL to"
                          " psycopg as it is, in psycopg's placeholder style rather than SQLAlchemy's.", _SA_HINT)
    seen = {text for text, _ in through}
    around = [s.text for s in log.statements if s.text not in seen and not _CONTROL.match(s.text)]
    if not around and not any(not _CONTROL.match(text) for text, _ in through) and server_text \
            and not _CONTROL.match(server_text):
        around = [server_text]
    if around:
        raise CheckFailed(f"{call_text} ran {_show(around[0], 120)} on the psycopg connection underneath SQLAlchemy"
                          " (conn.connection), not through the SQLAlchemy connection it was given.", _SA_HINT)


# --- exercise 3 ----------------------------------------------------------------------------------

FIELDS = ["id", "sku", "name", "price"]
CHEAPEST_CASES = [  # (category, limit, the default row factory of the connection the check hands over)
    ("kitchen", 5, tuple_row), ("audio", 100, dict_row), ("office", 0, namedtuple_row), ("travel", 1, dict_row),
    ("home", 4, namedtuple_row), ("kitchen' OR '1'='1", 3, tuple_row), ("kitchen", 7, dict_row),
]


def _add_ties(conn: psycopg.Connection) -> None:
    """Products that cost the same as the cheapest kitchen product, stored in reverse id order, and the
    kitchen's rows moved so that physical order is not id order: only ORDER BY price, id gives the expected order."""
    cur = conn.cursor(row_factory=tuple_row)
    top, cheapest = cur.execute("SELECT (SELECT max(id) FROM products), min(price) FROM products"
                                " WHERE category = 'kitchen'").fetchone()
    token = _secrets.token_hex(3)
    for i in (4, 3, 2, 1):
        cur.execute("INSERT INTO products (id, sku, name, category, price, stock) VALUES (%s, %s, %s, 'kitchen', %s, 5)",
                    (top + 1000 + i, f"CHECK-{token}-{i}", f"Check tie {i}", cheapest))
    disorder(conn, "products", where="category = 'kitchen'")


def cheapest(fn_objects, fn_dicts, product_class) -> None:
    """Exercise 3: the cheapest products of a category, as dataclass objects and as dicts."""
    url = database_url()
    tag, log = new_tag(3), _Log()
    with psycopg.connect(with_params(url, application_name=tag)) as conn, check_connect(url, autocommit=True) as observer, \
            learner_env(tag, url):
        conn.cursor_factory = _recording_cursor(log)

        def truth(category, limit):
            return conn.cursor(row_factory=tuple_row).execute(
                "SELECT id, sku, name, price FROM products WHERE category = %s ORDER BY price, id LIMIT %s",
                (category, limit)).fetchall()

        hint_param = "pass category and limit as parameters: ... WHERE category = %s ... LIMIT %s"
        hint_rows = "let the server cut the rows with LIMIT %s, rather than fetching them all and slicing"
        try:
            _add_ties(conn)
            for category, limit, default in CHEAPEST_CASES:
                expected = truth(category, limit)
                shape = f" (the check set the connection's default row factory to {default.__name__})"
                conn.row_factory = default
                call_text = describe_call(fn_objects, (conn, category, limit))
                objects, sent = _psycopg_call(3, fn_objects, conn, log, observer, category, limit, tag=tag,
                                              hint=f"use class_row({product_class.__name__}) as the row factory",
                                              other_hint=f"select exactly id, sku, name, price, and ask for the shape"
                                                         f" on the cursor (the check set the connection's default row"
                                                         f" factory to {default.__name__}):"
                                                         f" conn.cursor(row_factory=class_row({product_class.__name__}))")
                if not isinstance(objects, list) or not all(isinstance(o, product_class) for o in objects):
                    raise CheckFailed(f"{call_text} returned {objects!r:.200}{shape}.",
                                      f"ask for the row shape you want: "
                                      f"conn.cursor(row_factory=class_row({product_class.__name__})), and return the list")
                got = [tuple(getattr(o, f, None) for f in FIELDS) for o in objects]
                _judge_names(call_text, got, shape, f"class_row({product_class.__name__})")
                _judge_prices(call_text, [o.price for o in objects])
                if got != [tuple(r) for r in expected]:
                    _wrong_rows(call_text, got, expected, shape, bool(log.statements))
                _judge_sent(call_text, {"category": category, "limit": limit}, log, sent, max_rows=len(expected),
                            hint_param=hint_param, hint_rows=hint_rows)

                conn.row_factory = default
                call_text = describe_call(fn_dicts, (conn, category, limit))
                dicts, sent = _psycopg_call(3, fn_dicts, conn, log, observer, category, limit, tag=tag,
                                            hint="use dict_row as the row factory",
                                            other_hint=f"select exactly id, sku, name, price, and ask for the shape"
                                                       f" on the cursor (the check set the connection's default row"
                                                       f" factory to {default.__name__}): conn.cursor(row_factory=dict_row)")
                if not isinstance(dicts, list) or not all(isinstance(d, dict) for d in dicts):
                    raise CheckFailed(f"{call_text} returned {dicts!r:.200}{shape}.",
                                      "ask for the row shape you want: conn.cursor(row_factory=dict_row),"
                                      " and return the list")
                wanted = [dict(zip(FIELDS, r, strict=True)) for r in expected]
                if any(set(d) != set(FIELDS) for d in dicts):
                    raise CheckFailed(f"{call_text} returned dicts with the keys {sorted(set().union(*map(set, dicts)))}"
                                      f"{shape}; expected exactly {FIELDS}.",
                                      "select exactly id, sku, name, price, and let dict_row name the keys")
                _judge_names(call_text, [tuple(d.get(f) for f in FIELDS) for d in dicts], shape, "dict_row")
                _judge_prices(call_text, [d["price"] for d in dicts])
                if dicts != wanted:
                    _wrong_rows(call_text, [tuple(d.get(f) for f in FIELDS) for d in dicts], expected, shape,
                                bool(log.statements))
                _judge_sent(call_text, {"category": category, "limit": limit}, log, sent, max_rows=len(expected),
                            hint_param=hint_param, hint_rows=hint_rows)
        finally:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
    passed(3, "dataclass objects and dicts from row factories, right rows in price-then-id order, LIMIT and"
              " category sent as parameters, prices as Decimal.")


def _wrong_rows(call_text: str, got: list, expected: list, shape: str, used: bool) -> None:
    expected = [tuple(r) for r in expected]
    if sorted(map(repr, got)) == sorted(map(repr, expected)) and got != expected:
        raise CheckFailed(f"{call_text} returned the right products in the wrong order: ids"
                          f" {[g[0] for g in got]}, expected {[e[0] for e in expected]}"
                          " (the check stored equal prices and rows out of id order).",
                          "order by price, then by id for products of equal price")
    def brief(rows):
        shown = ", ".join(f"{r[0]!r}: {r[3]!r}" for r in rows[:8])
        return f"{len(rows)} rows {{{shown}{', ...' if len(rows) > 8 else ''}}}"

    raise CheckFailed(f"{call_text} gave {brief(got)} (id: price){shape}; expected {brief(expected)}.",
                      "select id, sku, name, price of that category, ordered by price then id, at most limit rows"
                      if used else OWN_CONN_HINT)


def _judge_names(call_text: str, got: list, shape: str, factory: str) -> None:
    if any(v in FIELDS for g in got for v in g if isinstance(v, str)):
        first = next(g for g in got if any(v in FIELDS for v in g if isinstance(v, str)))
        raise CheckFailed(f"{call_text} built the rows from column names, not values (a row: {first!r}){shape}.",
                          f"let psycopg build them: conn.cursor(row_factory={factory})")


def _judge_prices(call_text: str, prices: Iterable) -> None:
    wrong = [p for p in prices if not isinstance(p, Decimal)]
    if wrong:
        raise CheckFailed(f"{call_text}: price arrived as {type(wrong[0]).__name__}, not Decimal",
                          "select the numeric column as it is: numeric becomes Decimal, exact as money must be")
