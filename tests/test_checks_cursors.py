"""Lesson 06's checks reject plausible wrong answers: whole results in memory, OFFSET pages, broken tie-breaking."""

from __future__ import annotations

import pytest

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import cursors as checks

pytestmark = pytest.mark.usefixtures("checks_database")

# Exercise 1: stream the events table. The functions run in a fresh process, so each imports what it needs.


def stub(conn, handle):
    raise NotImplementedError("Exercise 1: write your code here")


def stream_named(conn, handle):
    with conn.transaction(), conn.cursor(name="events_stream") as cur:
        cur.itersize = 2000
        cur.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
        for row in cur:
            handle(row)


def stream_stream(conn, handle):
    for row in conn.cursor().stream("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
        handle(row)


def stream_fetchall(conn, handle):  # the whole table as Python objects: about 1 GB
    for row in conn.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id").fetchall():
        handle(row)


def stream_client_iterate(conn, handle):  # no list in Python, but libpq holds the whole result
    for row in conn.cursor().execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
        handle(row)


def stream_client_fetchmany(conn, handle):  # looks bounded, and tracemalloc agrees; the resident set does not
    cur = conn.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
    while batch := cur.fetchmany(1000):
        for row in batch:
            handle(row)


def stream_named_no_transaction(conn, handle):  # autocommit: DECLARE fails
    with conn.cursor(name="events_stream") as cur:
        cur.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
        for row in cur:
            handle(row)


def stream_unordered(conn, handle):
    with conn.transaction(), conn.cursor(name="events_stream") as cur:
        cur.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY customer_id, id")
        for row in cur:
            handle(row)


def stream_misses_the_last_row(conn, handle):  # an off-by-one range (< instead of <=)
    with conn.transaction(), conn.cursor(name="events_stream") as cur:
        cur.execute("SELECT id, customer_id, kind, payload FROM events WHERE id < 1000000 ORDER BY id")
        for row in cur:
            handle(row)


def stream_uses_notebook_global(conn, handle):
    for row in conn.cursor().stream(QUERY_FROM_THE_NOTEBOOK):  # noqa: F821 (a name the fresh process lacks)
        handle(row)


def test_stream_passes_named_cursors_and_stream_and_stops_the_stub(capsys):
    checks.stream_events(stream_named)
    checks.stream_events(stream_stream)
    assert capsys.readouterr().out.count("Exercise 1 passed") == 2
    with pytest.raises(NotDone):
        checks.stream_events(stub)


@pytest.mark.parametrize("wrong, says", [
    (stream_fetchall, "MB"),
    (stream_client_iterate, "grew by"),
    (stream_client_fetchmany, "grew by"),
    (stream_named_no_transaction, "transaction"),
    (stream_unordered, "id order"),
    (stream_misses_the_last_row, "rows"),
    (stream_uses_notebook_global, "new Python process"),
])
def test_stream_rejects(wrong, says):
    with pytest.raises(CheckFailed, match=says):
        checks.stream_events(wrong)


# Exercise 3: the same with asyncpg.


async def astub(conn, handle):
    raise NotImplementedError("Exercise 3: write your code here")


async def astream_cursor(conn, handle):
    async with conn.transaction():
        async for row in conn.cursor("SELECT id, customer_id, kind, payload FROM events ORDER BY id", prefetch=1000):
            handle(row)


async def astream_fetch(conn, handle):  # asyncpg's fetch() returns the whole result
    for row in await conn.fetch("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
        handle(row)


async def astream_no_transaction(conn, handle):
    async for row in conn.cursor("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
        handle(row)


def test_async_stream_passes_a_cursor_and_stops_the_stub(capsys):
    checks.stream_events_async(astream_cursor)
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.stream_events_async(astub)


@pytest.mark.parametrize("wrong, says", [(astream_fetch, "MB"), (astream_no_transaction, "transaction")])
def test_async_stream_rejects(wrong, says):
    with pytest.raises(CheckFailed, match=says):
        checks.stream_events_async(wrong)


# Exercise 2: keyset pages of readings ordered by (taken_at, id); taken_at has ties.


def page_stub(conn, after, size):
    raise NotImplementedError("Exercise 2: write your code here")


def page_keyset(conn, after, size):
    if after is None:
        return conn.execute("SELECT id, sensor, taken_at, value FROM readings ORDER BY taken_at, id LIMIT %s",
                            (size,)).fetchall()
    return conn.execute("SELECT id, sensor, taken_at, value FROM readings WHERE (taken_at, id) > (%s, %s)"
                        " ORDER BY taken_at, id LIMIT %s", (*after, size)).fetchall()


def page_offset(conn, after, size):  # right pages, but the server counts past every earlier row
    skip = 0 if after is None else conn.execute(
        "SELECT count(*) FROM readings WHERE (taken_at, id) <= (%s, %s)", after).fetchone()[0]
    return conn.execute("SELECT id, sensor, taken_at, value FROM readings ORDER BY taken_at, id OFFSET %s LIMIT %s",
                        (skip, size)).fetchall()


def page_in_python(conn, after, size):  # right pages, reads the whole table every time
    rows = conn.execute("SELECT id, sensor, taken_at, value FROM readings ORDER BY taken_at, id").fetchall()
    rows = [r for r in rows if after is None or (r[2], r[0]) > after]
    return rows[:size]


def page_ties_skipped(conn, after, size):  # ORDER BY the non-unique column only: skips the rest of a tie
    if after is None:
        return conn.execute("SELECT id, sensor, taken_at, value FROM readings ORDER BY taken_at LIMIT %s",
                            (size,)).fetchall()
    return conn.execute("SELECT id, sensor, taken_at, value FROM readings WHERE taken_at > %s"
                        " ORDER BY taken_at LIMIT %s", (after[0], size)).fetchall()


def page_greater_or_equal(conn, after, size):  # >= repeats the last row of the previous page
    if after is None:
        return page_keyset(conn, None, size)
    return conn.execute("SELECT id, sensor, taken_at, value FROM readings WHERE (taken_at, id) >= (%s, %s)"
                        " ORDER BY taken_at, id LIMIT %s", (*after, size)).fetchall()


def page_and_instead_of_row(conn, after, size):  # taken_at >= x AND id > y drops later rows with smaller ids
    if after is None:
        return page_keyset(conn, None, size)
    return conn.execute("SELECT id, sensor, taken_at, value FROM readings WHERE taken_at >= %s AND id > %s"
                        " ORDER BY taken_at, id LIMIT %s", (*after, size)).fetchall()


def page_off_by_one_limit(conn, after, size):
    return page_keyset(conn, after, size - 1)


def test_keyset_passes_the_solution_and_stops_the_stub(capsys):
    checks.keyset_page(page_keyset)
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.keyset_page(page_stub)


@pytest.mark.parametrize("wrong, says", [
    (page_offset, "buffers"),
    (page_in_python, "buffers"),
    (page_ties_skipped, "skipped"),
    (page_greater_or_equal, "repeated"),
    (page_and_instead_of_row, "skipped"),
    (page_off_by_one_limit, "expected"),
])
def test_keyset_rejects(wrong, says):
    with pytest.raises(CheckFailed, match=says):
        checks.keyset_page(wrong)
