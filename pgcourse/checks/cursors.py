"""Checks for lesson 06 (cursors and streaming): stream a large table in bounded memory, keyset pages.

The streaming checks run the learner's function in a fresh Python process (its source is shipped
there with inspect.getsource, and run: never read) and measure that process's peak resident memory,
which, unlike tracemalloc, sees libpq's buffers. The paging check compares pages with a reference and
counts the buffers the server touched per page (pg_stat_statements).
"""

from __future__ import annotations

import inspect
import json
import random
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import make_conninfo

from ..bench import measure_in_subprocess
from . import CheckFailed, NotDone, call, database_url, passed

MEMORY_BOUND_MB = 64  # what a streamed answer may add; the events table as Python objects takes about 1 GB
KILL_MB = 400  # the child stops itself here, so that a fetchall answer does not take the machine's memory
REFERENCE = "SELECT count(*), sum(customer_id), sum((payload->>'ms')::int), min(id), max(id) FROM events"

CHILD_SETUP = """
import asyncio, json, os, sys, threading, time
from collections.abc import Callable
import asyncpg, psutil, psycopg

def _watch(limit_mb):
    process = psutil.Process()
    start = process.memory_info().rss
    def run():
        while True:
            grown = (process.memory_info().rss - start) / 2**20
            if grown > limit_mb:
                sys.stderr.write(f"MEMORY_BOUND_EXCEEDED {grown:.0f}\\n")
                sys.stderr.flush()
                os._exit(3)
            time.sleep(0.02)
    threading.Thread(target=run, daemon=True).start()

_seen = {"rows": 0, "customers": 0, "ms": 0, "first": None, "last": None, "ordered": True, "shape": None}

def handle(row):
    event_id, customer_id, kind, payload = row
    if _seen["last"] is not None and event_id <= _seen["last"]:
        _seen["ordered"] = False
    if _seen["first"] is None:
        _seen["first"] = event_id
    _seen["last"] = event_id
    _seen["rows"] += 1
    _seen["customers"] += customer_id
    _seen["ms"] += (json.loads(payload) if isinstance(payload, str) else payload)["ms"]

def _report(error=None):
    print(json.dumps({**_seen, "error": error}))
"""

SYNC_BODY = """
_watch({kill})
conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
try:
    {name}(conn, handle)
    _report()
except Exception as exc:
    _report([type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""])
finally:
    conn.close()
"""

ASYNC_BODY = """
_watch({kill})
async def _main():
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        await {name}(conn, handle)
        _report()
    except Exception as exc:
        _report([type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""])
    finally:
        await conn.close()
asyncio.run(_main())
"""


def _run_in_child(exercise: int, fn, body: str) -> tuple[dict, float]:
    """Run the learner's function in a fresh interpreter; return what it handed over and its memory growth (MB)."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        raise CheckFailed("The check could not find the source of your function to run it in a fresh process.",
                          "define it with `def` (or `async def`) in a notebook cell, and run that cell") from None
    setup = CHILD_SETUP + "\n" + source
    try:
        figures = measure_in_subprocess(body.format(kill=KILL_MB, name=fn.__name__), setup=setup)
    except RuntimeError as exc:
        if "MEMORY_BOUND_EXCEEDED" in str(exc):
            raise CheckFailed(f"Your function's process grew by more than {KILL_MB} MB before the check stopped it:"
                              " the whole table was coming into memory.",
                              "do not fetchall(); stream the rows with a server-side cursor and hand each to"
                              " handle() as it arrives") from None
        if "NameError" in str(exc) or "ImportError" in str(exc):
            raise CheckFailed(f"Your function failed in a fresh process: {str(exc).splitlines()[-1]}",
                              "the check runs your function in a new Python process: import what it needs inside"
                              " the function, and use no other notebook variables") from None
        raise
    seen = json.loads(figures["stdout"].strip().splitlines()[-1])
    if seen["error"]:
        name, message = seen["error"]
        if name == "NotImplementedError":
            raise NotDone(f"Exercise {exercise} is not done yet: replace the `raise NotImplementedError` line"
                          " with your code, run that cell, then run this check again.")
        seen["error_text"] = f"{name}: {message}"
    return seen, figures["growth_mb"]


def _judge_stream(exercise: int, seen: dict, growth_mb: float, transaction_hint: str) -> None:
    if seen["error"]:
        text = seen["error_text"]
        hint = (transaction_hint if "transaction" in text else
                "the check runs your function in a new Python process: import what it needs inside the function,"
                " and use no other notebook variables" if text.startswith("NameError") else
                "read the error, fix the function, and run the check again")
        raise CheckFailed(f"Your function raised {text}", hint)
    with psycopg.connect(database_url()) as conn:
        rows, customers, ms, first, last = conn.execute(REFERENCE).fetchone()
    if seen["rows"] != rows:
        raise CheckFailed(f"handle() received {seen['rows']:,} rows; the events table has {rows:,}.",
                          "pass every row of SELECT id, customer_id, kind, payload FROM events ORDER BY id to handle(),"
                          " one call per row")
    if not seen["ordered"] or (seen["first"], seen["last"]) != (first, last):
        raise CheckFailed("The rows did not arrive in id order.", "add ORDER BY id to the query")
    if (seen["customers"], seen["ms"]) != (customers, ms):
        raise CheckFailed("The rows handed to handle() differ from the table's (customer_id or payload).",
                          "select id, customer_id, kind, payload, in that order, and pass each row unchanged")
    if growth_mb > MEMORY_BOUND_MB:
        raise CheckFailed(f"Your function's process grew by {growth_mb:,.0f} MB while streaming (the bound is"
                          f" {MEMORY_BOUND_MB} MB).", "a client-side cursor receives the whole result before the"
                          " first row, even if you iterate it: use a server-side cursor (conn.cursor(name=...)"
                          " inside a transaction) or cursor.stream(), and keep no list of rows")


def stream_events(fn) -> None:
    """Exercise 1: fn(conn, handle) passes every event, in id order, to handle() within the memory bound."""
    seen, growth = _run_in_child(1, fn, SYNC_BODY)
    _judge_stream(1, seen, growth, "a named cursor needs a transaction: open one with `with conn.transaction():`"
                  " (the connection is in autocommit mode)")
    passed(1, f"{seen['rows']:,} events streamed in id order, and the process grew by less than {MEMORY_BOUND_MB} MB.")


def stream_events_async(fn) -> None:
    """Exercise 3: async fn(conn, handle) with asyncpg passes every event, in id order, within the memory bound."""
    seen, growth = _run_in_child(3, fn, ASYNC_BODY)
    _judge_stream(3, seen, growth, "asyncpg cursors live inside a transaction: `async with conn.transaction():`")
    passed(3, f"{seen['rows']:,} events streamed with asyncpg in id order, and the process grew by less than"
              f" {MEMORY_BOUND_MB} MB.")


SCHEMA = "exercise06"  # also written literally in the SQL below
READINGS = """
DROP SCHEMA IF EXISTS exercise06 CASCADE;
CREATE SCHEMA exercise06;
CREATE TABLE exercise06.readings (id int PRIMARY KEY, sensor int NOT NULL, taken_at timestamptz NOT NULL,
                                  value int NOT NULL);
INSERT INTO exercise06.readings
SELECT i, i % 37, timestamptz '2025-01-01 00:00:00+00' + make_interval(mins => (i * 7919) % 20000), (i * 31) % 1000
FROM generate_series(1, 100000) AS i;
CREATE INDEX ON exercise06.readings (taken_at, id);
ANALYZE exercise06.readings;
"""
ORDER = "SELECT id, sensor, taken_at, value FROM exercise06.readings ORDER BY taken_at, id"
WORK = ("SELECT coalesce(sum(shared_blks_hit + shared_blks_read), 0)::bigint FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE '%pg_stat_statements%'")
DEEP_PAGE_BUFFERS = 120  # a keyset page of 20 rows touches about 25; a page reached by OFFSET or a scan, thousands


@contextmanager
def _readings() -> Iterator:
    url = database_url()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(READINGS)
        conn = psycopg.connect(make_conninfo(url, options=f"-c search_path={SCHEMA}"), autocommit=True)
        try:
            yield conn, admin
        finally:
            conn.close()
            admin.execute("DROP SCHEMA exercise06 CASCADE")


def _page(fn, conn, after, size) -> list[tuple]:
    got = call(2, fn, conn, after, size)
    try:
        return [tuple(row) for row in got]
    except TypeError:
        raise CheckFailed(f"Your function returned {got!r}, not a list of rows.", "return cursor.fetchall()") from None


def _describe(rows: list[tuple]) -> str:
    return ", ".join(f"id {r[0]}" for r in rows[:4]) + (" ..." if len(rows) > 4 else "") if rows else "no rows"


def keyset_page(fn) -> None:
    """Exercise 2: fn(conn, after, size) returns the page after key (taken_at, id), cheaply at any depth."""
    with _readings() as (conn, admin):
        reference = [tuple(r) for r in admin.execute(ORDER).fetchall()]
        position = {r[0]: i for i, r in enumerate(reference)}
        starts = [None, 0, 1, 2, 3, 4, 5, 6, 997, 5000, len(reference) - 21, len(reference) - 7, len(reference) - 1]
        ties = [i for i in range(1, 400) if reference[i][2] == reference[i + 1][2]]  # the last row shown has a twin after it
        starts += random.Random(6).sample(ties, 6)
        for start in starts:
            after = None if start is None else (reference[start][2], reference[start][0])
            expected = reference[0 if start is None else start + 1:][:20]
            got = _page(fn, conn, after, 20)
            if got != expected:
                where = "the first page" if start is None else f"the page after (taken_at, id) = {after}"
                missing = [r for r in expected if r not in got]
                repeated = [r for r in got if r[0] in position and start is not None and position[r[0]] <= start]
                detail = (f"; it repeated {_describe(repeated)}" if repeated else
                          f"; it skipped {_describe(missing)}" if missing else "")
                raise CheckFailed(f"For {where} (20 rows) your function returned {_describe(got)}, expected"
                                  f" {_describe(expected)}{detail}.",
                                  "order by (taken_at, id), a unique key, and take the rows strictly after the last"
                                  " one: WHERE (taken_at, id) > (%s, %s); rows with the same taken_at need id to tell"
                                  " them apart")
        deep = (reference[-50][2], reference[-50][0])
        _page(fn, conn, deep, 20)  # once to warm the caches and the plan
        before = admin.execute(WORK).fetchone()[0]
        _page(fn, conn, deep, 20)
        buffers = admin.execute(WORK).fetchone()[0] - before
        if buffers > DEEP_PAGE_BUFFERS:
            raise CheckFailed(f"A page of 20 rows near the end of the table made the server touch {buffers:,} buffers;"
                              f" a keyset page touches a few dozen at any depth.",
                              "do not skip rows with OFFSET or filter in Python: let an index find the first row"
                              " with WHERE (taken_at, id) > (%s, %s) ORDER BY taken_at, id LIMIT %s")
        walked, after = [], None
        while len(walked) <= len(reference):
            page = _page(fn, conn, after, 1000)
            if not page:
                break
            walked += page
            after = (page[-1][2], page[-1][0])
        if walked != reference:
            raise CheckFailed(f"Walking every page of 1,000 rows gave {len(walked):,} rows, not the table's"
                              f" {len(reference):,} in order.", "each page starts strictly after the previous page's"
                              " last (taken_at, id)")
    passed(2, f"pages match the reference at {len(starts)} positions, ties included, all {len(reference):,} rows"
              " walked once, and a deep page costs the server as little as the first.")
