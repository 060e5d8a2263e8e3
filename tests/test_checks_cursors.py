"""Lesson 06's checks reject plausible wrong answers: whole results in memory, OFFSET pages, broken tie-breaking."""

from __future__ import annotations

import os

import psycopg
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


def stream_no_order_by(conn, handle):  # physical order: the rows with the smallest ids come last
    with conn.transaction(), conn.cursor(name="events_stream") as cur:
        cur.execute("SELECT id, customer_id, kind, payload FROM events")
        for row in cur:
            handle(row)


def stream_with_hold(conn, handle):  # autocommit: the whole result is stored on the server at DECLARE
    with conn.cursor(name="events_stream", withhold=True) as cur:
        cur.itersize = 2000
        cur.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
        for row in cur:
            handle(row)


def stream_one_row_per_trip(conn, handle):  # right, but a million round trips: many minutes
    with conn.transaction(), conn.cursor(name="events_stream") as cur:
        cur.itersize = 1
        cur.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
        for row in cur:
            handle(row)


def stream_keyset_tiny_pages(conn, handle):  # by key, but one row per query: a million queries
    last = 0
    while rows := conn.execute("SELECT id, customer_id, kind, payload FROM events WHERE id > %s ORDER BY id LIMIT 1",
                               (last,)).fetchall():
        handle(rows[0])
        last = rows[0][0]


def stream_offset_pages(conn, handle):  # bounded memory, but every page reads all the earlier rows again
    offset = 0
    while rows := conn.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id LIMIT 25000"
                               " OFFSET %s", (offset,)).fetchall():
        for row in rows:
            handle(row)
        offset += len(rows)


def stream_dicts(conn, handle):
    from psycopg.rows import dict_row

    with conn.transaction(), conn.cursor(name="events_stream", row_factory=dict_row) as cur:
        cur.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
        for row in cur:
            handle(row)


def stream_kind_made_up(conn, handle):
    for row in conn.cursor().stream("SELECT id, customer_id, 'page_view', payload FROM events ORDER BY id"):
        handle(row)


def stream_exits(conn, handle):
    import sys

    sys.exit("no rows for you")


def stream_ends_the_process(conn, handle):
    import os

    os._exit(0)


def stream_hangs(conn, handle):
    conn.execute("SELECT pg_sleep(600)")


def stream_prints_the_url(conn, handle):
    import os

    print("streaming from", os.environ["DATABASE_URL"])
    for row in conn.cursor().stream("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
        handle(row)


def stream_logs_the_password(conn, handle):
    import logging

    logging.getLogger("mine").debug("password %s", conn.info.password)
    for row in conn.cursor().stream("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
        handle(row)


def stream_hold_in_transaction(conn, handle):  # WITH HOLD, but closed before the commit: nothing is stored
    with conn.transaction(), conn.cursor(name="events_stream", withhold=True) as cur:
        cur.itersize = 5000
        cur.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
        for row in cur:
            handle(row)


def stream_with_lookups_on_a_second_connection(conn, handle):  # queries while the stream's rows wait unread
    import os

    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as other:
        for n, row in enumerate(conn.cursor().stream("SELECT id, customer_id, kind, payload FROM events ORDER BY id")):
            if n % 100_000 == 0:
                other.execute("SELECT 1").fetchone()
            handle(row)


def stream_keyset_pages(conn, handle):  # pages by key: bounded, and each page is found by the index
    last = 0
    while rows := conn.execute("SELECT id, customer_id, kind, payload FROM events WHERE id > %s ORDER BY id"
                               " LIMIT 10000", (last,)).fetchall():
        for row in rows:
            handle(row)
        last = rows[-1][0]


def stream_copy(conn, handle):  # COPY of the ordered query, typed rows
    with conn.cursor().copy("COPY (SELECT id, customer_id, kind, payload FROM events ORDER BY id) TO STDOUT") as copy:
        copy.set_types(["int8", "int4", "text", "jsonb"])
        for row in copy.rows():
            handle(row)


def stream_own_connection_namedtuples(conn, handle):  # its own connection from DATABASE_URL, namedtuple rows
    import os

    from psycopg.rows import namedtuple_row

    with psycopg.connect(os.environ["DATABASE_URL"]) as own, own.cursor(name="s", row_factory=namedtuple_row) as cur:
        cur.execute("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
        for row in cur:
            handle(row)


def test_stream_passes_named_cursors_and_stream_and_stops_the_stub(capsys):
    checks.stream_events(stream_named)
    checks.stream_events(stream_stream)
    assert capsys.readouterr().out.count("Exercise 1 passed") == 2
    with pytest.raises(NotDone):
        checks.stream_events(stub)


@pytest.mark.parametrize("right", [stream_hold_in_transaction, stream_keyset_pages, stream_copy,
                                   stream_own_connection_namedtuples, stream_with_lookups_on_a_second_connection])
def test_stream_accepts(right, capsys):
    checks.stream_events(right)
    assert "Exercise 1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, says", [
    (stream_fetchall, "MB"),
    (stream_client_iterate, "grew by"),
    (stream_client_fetchmany, "grew by"),
    (stream_named_no_transaction, "transaction"),
    (stream_unordered, "id order"),
    (stream_misses_the_last_row, "rows"),
    (stream_uses_notebook_global, "new Python process"),
    (stream_with_hold, "temporary files"),
    # Counted, not timed: on a fast machine a million one-row fetches finish within the time limits.
    (stream_one_row_per_trip, r"made 1\d\d,\d{3} round trips to the server, more than one per 10 rows of the"
                              r" table's 1,000,000 \(100,000\): the check stopped it there"),
    (stream_keyset_tiny_pages, r"made 1\d\d,\d{3} round trips to the server, more than one per 10 rows"),
    (stream_offset_pages, "pages"),
    (stream_dicts, "handle\\(\\) received dict"),
    (stream_kind_made_up, "differ"),
    (stream_exits, "SystemExit"),
    (stream_ends_the_process, "ended its Python process"),
    (stream_prints_the_url, "secret"),
    (stream_logs_the_password, "secret"),
])
def test_stream_rejects(wrong, says):
    with pytest.raises(CheckFailed, match=says) as caught:
        checks.stream_events(wrong)
    assert "Hint:" in str(caught.value)


def test_stream_without_order_by_meets_the_physical_order_even_after_a_scan_stopped_midway():
    # A scan that stops partway leaves its position for the next scan of the table (synchronize_seqscans):
    # the check's connection must start at the first page, or the message would name a random id.
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn, conn.cursor(name="partway") as cur:
        cur.execute("SELECT id FROM events")
        cur.fetchmany(600_000)
    with pytest.raises(CheckFailed, match="id order: the first row had id 1,001") as caught:
        checks.stream_events(stream_no_order_by)
    assert "Hint:" in str(caught.value)


def test_stream_stops_a_function_that_hangs_and_cancels_its_query(monkeypatch):
    monkeypatch.setattr(checks, "STREAM_TIME_LIMIT", 8)
    with pytest.raises(CheckFailed, match="did not finish within 8 s") as caught:
        checks.stream_events(stream_hangs)
    assert "Hint:" in str(caught.value)
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        assert not conn.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(600)%'"
                                " AND pid <> pg_backend_pid()").fetchall()


# Exercise 3: the same with asyncpg.


async def astub(conn, handle):
    raise NotImplementedError("Exercise 3: write your code here")


async def astream_cursor(conn, handle):
    async with conn.transaction():
        async for row in conn.cursor("SELECT id, customer_id, kind, payload FROM events ORDER BY id", prefetch=1000):
            handle(row)


async def astream_default_prefetch(conn, handle):  # asyncpg fetches 50 rows a round trip unless told
    async with conn.transaction():
        async for row in conn.cursor("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
            handle(row)


async def astream_fetch(conn, handle):  # asyncpg's fetch() returns the whole result
    for row in await conn.fetch("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
        handle(row)


async def astream_no_transaction(conn, handle):
    async for row in conn.cursor("SELECT id, customer_id, kind, payload FROM events ORDER BY id"):
        handle(row)


async def astream_huge_prefetch(conn, handle):  # one "batch" of the whole table
    async with conn.transaction():
        async for row in conn.cursor("SELECT id, customer_id, kind, payload FROM events ORDER BY id",
                                     prefetch=1_000_000):
            handle(row)


async def astream_no_order_by(conn, handle):
    async with conn.transaction():
        async for row in conn.cursor("SELECT id, customer_id, kind, payload FROM events", prefetch=1000):
            handle(row)


async def astream_exits(conn, handle):
    raise SystemExit(0)


async def astream_cursor_fetch_batches(conn, handle):  # a cursor object, fetched in batches by hand
    async with conn.transaction():
        cur = await conn.cursor("SELECT id, customer_id, kind, payload FROM events ORDER BY id")
        while rows := await cur.fetch(5000):
            for row in rows:
                handle(row)


def test_async_stream_passes_a_cursor_and_stops_the_stub(capsys):
    checks.stream_events_async(astream_cursor)
    checks.stream_events_async(astream_cursor_fetch_batches)
    checks.stream_events_async(astream_default_prefetch)  # 50 rows a fetch: 20,000 round trips, under the limit
    assert capsys.readouterr().out.count("Exercise 3 passed") == 3
    with pytest.raises(NotDone):
        checks.stream_events_async(astub)


@pytest.mark.parametrize("wrong, says", [
    (astream_fetch, "MB"),
    (astream_no_transaction, "transaction"),
    (astream_huge_prefetch, "MB"),
    (astream_no_order_by, "id order"),
    (astream_exits, "SystemExit"),
])
def test_async_stream_rejects(wrong, says):
    with pytest.raises(CheckFailed, match=says) as caught:
        checks.stream_events_async(wrong)
    assert "Hint:" in str(caught.value)


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


def page_order_without_tie_breaker(conn, after, size):  # right comparison, but ties in whatever order the index has
    if after is None:
        return conn.execute("SELECT id, sensor, taken_at, value FROM readings ORDER BY taken_at LIMIT %s",
                            (size,)).fetchall()
    return conn.execute("SELECT id, sensor, taken_at, value FROM readings WHERE (taken_at, id) > (%s, %s)"
                        " ORDER BY taken_at LIMIT %s", (*after, size)).fetchall()


def page_only_id(conn, after, size):  # compares the id alone
    if after is None:
        return page_keyset(conn, None, size)
    return conn.execute("SELECT id, sensor, taken_at, value FROM readings WHERE id > %s"
                        " ORDER BY taken_at, id LIMIT %s", (after[1], size)).fetchall()


def page_f_string_after(conn, after, size):  # the key pasted into the SQL text
    if after is None:
        return page_keyset(conn, None, size)
    return conn.execute(f"SELECT id, sensor, taken_at, value FROM readings WHERE (taken_at, id) > ('{after[0]}',"
                        f" {after[1]}) ORDER BY taken_at, id LIMIT %s", (size,)).fetchall()


def page_f_string_limit(conn, after, size):  # LIMIT {size}
    if after is None:
        return conn.execute(f"SELECT id, sensor, taken_at, value FROM readings ORDER BY taken_at, id LIMIT {size}"
                            ).fetchall()
    return conn.execute(f"SELECT id, sensor, taken_at, value FROM readings WHERE (taken_at, id) > (%s, %s)"
                        f" ORDER BY taken_at, id LIMIT {size}", after).fetchall()


def page_fetchmany(conn, after, size):  # no LIMIT: the server sends every later row; fetchmany(0) is not empty
    if after is None:
        cur = conn.execute("SELECT id, sensor, taken_at, value FROM readings ORDER BY taken_at, id")
    else:
        cur = conn.execute("SELECT id, sensor, taken_at, value FROM readings WHERE (taken_at, id) > (%s, %s)"
                           " ORDER BY taken_at, id", after)
    return cur.fetchmany(size)


def page_fetchmany_guarded(conn, after, size):  # size 0 handled, still no LIMIT
    return page_fetchmany(conn, after, size) if size else []


def page_constant_size(conn, after, size):
    return page_keyset(conn, after, 20)


def page_exits(conn, after, size):
    raise SystemExit(1)


def page_prints_the_url(conn, after, size):
    import os

    print("paging", os.environ["DATABASE_URL"])
    return page_keyset(conn, after, size)


def page_named_cursor(conn, after, size):  # a server-side cursor fetches only the page: cheap without LIMIT
    where, params = ("", ()) if after is None else ("WHERE (taken_at, id) > (%s, %s)", after)
    with conn.transaction(), conn.cursor(name="page") as cur:
        cur.execute(f"SELECT id, sensor, taken_at, value FROM readings {where} ORDER BY taken_at, id", params)
        return cur.fetchmany(size) if size else []


def page_expanded_comparison(conn, after, size):  # the row comparison written out, FETCH FIRST instead of LIMIT
    if after is None:
        return conn.execute("SELECT id, sensor, taken_at, value FROM readings ORDER BY taken_at, id"
                            " FETCH FIRST %s ROWS ONLY", (size,)).fetchall()
    return conn.execute("SELECT id, sensor, taken_at, value FROM readings WHERE taken_at > %(t)s"
                        " OR (taken_at = %(t)s AND id > %(id)s) ORDER BY taken_at, id FETCH FIRST %(n)s ROWS ONLY",
                        {"t": after[0], "id": after[1], "n": size}).fetchall()


@pytest.mark.parametrize("right", [page_named_cursor, page_expanded_comparison])
def test_keyset_accepts(right, capsys):
    checks.keyset_page(right)
    assert "Exercise 2 passed" in capsys.readouterr().out


def test_keyset_passes_the_solution_and_stops_the_stub(capsys):
    checks.keyset_page(page_keyset)
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.keyset_page(page_stub)


@pytest.mark.parametrize("wrong, says", [
    (page_offset, "buffers"),
    (page_in_python, "buffers"),
    (page_ties_skipped, "skipped|another order"),
    (page_order_without_tie_breaker, "another order"),
    (page_only_id, "expected"),
    (page_f_string_after, "the timestamp written into its text"),
    (page_f_string_limit, "the page size 20 written into its text"),
    (page_fetchmany, "0 rows"),
    (page_fetchmany_guarded, "buffers"),
    (page_constant_size, "expected"),
    (page_exits, "SystemExit"),
    (page_prints_the_url, "secret"),
    (page_greater_or_equal, "repeated"),
    (page_and_instead_of_row, "skipped"),
    (page_off_by_one_limit, "expected"),
])
def test_keyset_rejects(wrong, says):
    with pytest.raises(CheckFailed, match=says) as caught:
        checks.keyset_page(wrong)
    assert "Hint:" in str(caught.value)


def page_hangs(conn, after, size):
    conn.execute("SELECT pg_sleep(600)")


def test_keyset_stops_a_page_that_hangs(monkeypatch):
    monkeypatch.setattr(checks, "PAGE_TIME_LIMIT", 3)
    with pytest.raises(CheckFailed, match="did not finish within 3 s") as caught:
        checks.keyset_page(page_hangs)
    assert "Hint:" in str(caught.value)


def test_round_trips_are_counted_only_where_the_url_leads_through_the_counter():
    url = "postgresql://learner:pw@db.example.com:5432/course?sslmode=verify-full"
    with checks.RoundTrips(url) as trips:  # a certificate checked against the name: not rerouted
        assert trips.url == url and trips.trips == 0
    with checks.RoundTrips("postgresql://learner:pw@/course?host=/run/postgresql") as trips:  # a socket
        assert trips.url.endswith("host=/run/postgresql")
    with checks.RoundTrips(os.environ["DATABASE_URL"]) as trips, psycopg.connect(trips.url, autocommit=True) as conn:
        before = trips.trips
        for _ in range(5):
            conn.execute("SELECT 1").fetchone()
        assert trips.trips - before == 5  # one per query the client waited for
        rows = conn.execute("SELECT g FROM generate_series(1, 200000) g").fetchall()  # many reads, one trip
        assert len(rows) == 200_000 and trips.trips - before == 6
