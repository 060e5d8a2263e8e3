"""Lesson 05's checks reject plausible wrong answers (values pasted into SQL, rows sent by INSERT,
Python-side parsing, constants, lost updates, leftovers, missing ORDER BY, hand-made quoting) and
accept every right answer the tasks allow (COPY into a staging table, write_row, validation in Python)."""

from __future__ import annotations

import csv
import os
import re
import sys
import tempfile
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

import nbformat
import psycopg
import pytest
from psycopg import sql

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import bulk_loading as checks

pytestmark = pytest.mark.usefixtures("checks_database")

COPY_CSV = "COPY products_import (sku, name, price, stock) FROM STDIN (FORMAT csv, HEADER)"
INSERT = "INSERT INTO products_import (sku, name, price, stock) VALUES (%s, %s, %s, %s)"
TRACED = sys.platform == "linux"  # where psycopg traces libpq, the checks also see what went through a temp table


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def _parsed(path):
    with open(path, newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))
    return [[None if value == "" else value for value in row] for row in rows[1:]]


def _rejects(check, fn, *said):
    with pytest.raises(CheckFailed) as caught:
        check(fn)
    message = str(caught.value)
    assert "Hint:" in message, message
    for part in said:
        assert re.search(part, message), f"{part!r} not in: {message}"
    assert "Traceback" not in message


# Exercise 1: load a CSV with COPY

def load_copy(conn, path):
    with conn.cursor() as cur, open(path, "rb") as source:
        with cur.copy(COPY_CSV) as copy:
            while block := source.read(1 << 16):
                copy.write(block)
        return cur.rowcount  # inside the cursor's block: a closed cursor reports -1


def load_whole_file(conn, path):  # one write of the whole file: right too
    with conn.cursor() as cur, open(path, "rb") as source:
        with cur.copy(COPY_CSV) as copy:
            copy.write(source.read())
        return cur.rowcount


def load_line_by_line(conn, path):  # the file's text written line by line: the server still parses it
    with conn.cursor() as cur, open(path, encoding="utf-8") as source:
        with cur.copy(COPY_CSV) as copy:
            for line in source:
                copy.write(line)
        return cur.rowcount


def load_csv_write_row(conn, path):  # Python parses, COPY carries: allowed, with '' turned into None
    with open(path, newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))[1:]
    with conn.cursor() as cur, cur.copy("COPY products_import (sku, name, price, stock) FROM STDIN") as copy:
        for sku, name, price, stock in rows:
            copy.write_row((sku, name, price or None, stock))
    return len(rows)


def load_via_temp_table(conn, path):  # COPY into a temp table, then INSERT ... SELECT: a valid alternative
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE incoming (sku text, name text, price text, stock text) ON COMMIT DROP")
        with open(path, "rb") as source, cur.copy("COPY incoming FROM STDIN (FORMAT csv, HEADER)") as copy:
            copy.write(source.read())
        cur.execute("INSERT INTO products_import SELECT sku, name, price::numeric, stock::integer FROM incoming")
        return cur.rowcount


def load_row_by_row(conn, path):  # right rows, one INSERT each
    with conn.transaction():
        for row in _parsed(path):
            conn.execute(INSERT, row)
    return len(_parsed(path))


def load_executemany(conn, path):  # pipelined INSERTs: fast-ish, but not COPY
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(INSERT, _parsed(path))
    return len(_parsed(path))


def load_multirow_fstring(conn, path):  # one multi-row VALUES, quotes escaped by hand
    rows = _parsed(path)
    if not rows:
        return 0

    def literal(value):
        return "NULL" if value is None else "'" + value.replace("'", "''") + "'"

    conn.execute("INSERT INTO products_import VALUES " + ", ".join(f"({', '.join(map(literal, r))})" for r in rows))
    return len(rows)


def load_multirow_params(conn, path):  # one multi-row VALUES with parameters: still not COPY
    rows = _parsed(path)
    if rows:
        conn.execute("INSERT INTO products_import VALUES " + ", ".join(["(%s, %s, %s, %s)"] * len(rows)),
                     [v for r in rows for v in r])
    return len(rows)


def load_client_side(conn, path):  # client-side binding: the values end up in the SQL text
    cur = psycopg.ClientCursor(conn)
    with conn.transaction():
        for row in _parsed(path):
            cur.execute(INSERT, row)
    return len(_parsed(path))


def load_executemany_via_temp(conn, path):  # INSERTs into a table of its own, then one INSERT ... SELECT
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE incoming (LIKE products_import) ON COMMIT DROP")
        cur.executemany("INSERT INTO incoming VALUES (%s, %s, %s, %s)", _parsed(path))
        cur.execute("INSERT INTO products_import SELECT * FROM incoming")
    return len(_parsed(path))


def load_copy_per_row(conn, path):  # COPY, but one COPY statement per row
    rows = _parsed(path)
    with conn.transaction(), conn.cursor() as cur:
        for row in rows:
            with cur.copy("COPY products_import FROM STDIN") as copy:
                copy.write_row(row)
    return len(rows)


def load_split_on_commas(conn, path):  # naive parsing: quoted commas and line breaks break it
    with conn.cursor() as cur, cur.copy("COPY products_import (sku, name, price, stock) FROM STDIN") as copy:
        for line in open(path, encoding="utf-8").read().splitlines()[1:]:
            fields = line.split(",")
            if len(fields) == 4:
                copy.write_row([None if f == "" else f for f in fields])
    return cur.rowcount


def load_empty_as_zero(conn, path):  # csv.reader + write_row, but an empty price becomes 0
    with open(path, newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))[1:]
    with conn.cursor() as cur, cur.copy("COPY products_import (sku, name, price, stock) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[0], row[1], row[2] or "0", row[3]])
    return cur.rowcount


def load_empty_as_empty_string(conn, path):  # '' sent as '' into a numeric column
    with open(path, newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))[1:]
    with conn.cursor() as cur, cur.copy("COPY products_import (sku, name, price, stock) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    return cur.rowcount


def load_header_as_data(conn, path):  # COPY without HEADER: the header line is data
    with conn.cursor() as cur, open(path, "rb") as source:
        with cur.copy("COPY products_import (sku, name, price, stock) FROM STDIN (FORMAT csv)") as copy:
            copy.write(source.read())
    return cur.rowcount


def load_returns_none(conn, path):
    load_copy(conn, path)


def load_returns_constant(conn, path):
    load_copy(conn, path)
    return 10_000


def load_returns_line_count(conn, path):  # a name with a line break makes lines and rows differ
    load_copy(conn, path)
    return len(open(path, encoding="utf-8").read().splitlines()) - 1


def load_rowcount_after_close(conn, path):  # the cursor is closed: rowcount says -1
    with conn.cursor() as cur, open(path, "rb") as source:
        with cur.copy(COPY_CSV) as copy:
            copy.write(source.read())
    return cur.rowcount if cur.rowcount >= 0 else None


def load_swallows(conn, path):  # an error hidden behind return 0
    try:
        return load_header_as_data(conn, path)
    except Exception:  # noqa: BLE001
        return 0


def load_exits(conn, path):
    sys.exit(1)


def load_prints_url(conn, path):
    print("loading with", os.environ["DATABASE_URL"])
    return load_copy(conn, path)


def load_closes_conn(conn, path):  # `with conn:` closes the caller's connection
    with conn, conn.cursor() as cur, open(path, "rb") as source:
        with cur.copy(COPY_CSV) as copy:
            copy.write(source.read())
        return cur.rowcount


def load_temp_left_behind(conn, path):  # a temp table that outlives the call: the next call cannot create it
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE incoming (LIKE products_import)")
        with open(path, "rb") as source, cur.copy("COPY incoming FROM STDIN (FORMAT csv, HEADER)") as copy:
            copy.write(source.read())
        cur.execute("INSERT INTO products_import SELECT * FROM incoming")
        return cur.rowcount


def load_drops_the_table(conn, path):  # the check's own queries then fail: a verdict, not its traceback
    load_copy(conn, path)
    conn.execute("DROP TABLE products_import CASCADE")
    return 5


def load_raises_with_url(conn, path):  # a database error whose message carries the URL
    raise psycopg.errors.RaiseException(f"could not load with {os.environ['DATABASE_URL']}")


def load_hangs(conn, path):
    conn.execute("SELECT pg_sleep(600)")


def load_open_transaction(conn, path):  # autocommit off, never committed
    conn.autocommit = False
    with conn.cursor() as cur, open(path, "rb") as source, cur.copy(COPY_CSV) as copy:
        copy.write(source.read())
    return cur.rowcount


LOAD_REJECTS = [
    (load_row_by_row, [r"as parameters of \d+ statement", "Hint: load with one COPY"]),
    (load_executemany, [r"as parameters of \d+ statement"]),
    (load_multirow_fstring, ["written into the SQL text", "never paste values"]),
    (load_multirow_params, [r"as parameters of \d+ statement"]),
    (load_client_side, ["written into the SQL text"]),
    (load_copy_per_row, [r"(statements that wrote the table|slower)"]),
    (load_split_on_commas, ["(holds|differ)"]),
    (load_empty_as_zero, [r"SKU-900002 was loaded as \(name 'The \"best\" pen', price 0(\.00)?\)", "NULL"]),
    (load_empty_as_empty_string, ["raised InvalidTextRepresentation", "must arrive as NULL"]),
    (load_header_as_data, ["raised InvalidTextRepresentation", "HEADER"]),
    (load_returns_none, ["returned None"]),
    (load_returns_constant, ["returned 10000; it loaded 5 rows"]),
    (load_returns_line_count, ["returned 6; it loaded 5 rows", "line break"]),
    (load_rowcount_after_close, ["returned None"]),
    (load_swallows, ["holds 0 rows"]),
    (load_exits, ["SystemExit"]),
    (load_prints_url, ["printed or logged a secret"]),
    (load_open_transaction, ["transaction still open"]),
    (load_temp_left_behind, ["DuplicateTable", "ON COMMIT DROP"]),
    (load_drops_the_table, ["could not read its tables", "no DROP"]),
    (load_raises_with_url, ["raised RaiseException: could not load with \\*{8}"]),
    (load_closes_conn, ["closed the connection it was given", "with conn:"]),
]
if TRACED:
    LOAD_REJECTS.append((load_executemany_via_temp, [r"as parameters of \d+ statement"]))


@pytest.mark.parametrize("fn, said", LOAD_REJECTS, ids=[fn.__name__ for fn, _ in LOAD_REJECTS])
def test_load_csv_rejects(fn, said):
    _rejects(checks.load_csv, fn, *said)


@pytest.mark.parametrize("fn", [load_copy, load_whole_file, load_line_by_line, load_csv_write_row, load_via_temp_table])
def test_load_csv_accepts(fn, capsys):
    checks.load_csv(fn)
    assert "Exercise 1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("check", [checks.load_csv, checks.upsert_prices, checks.export_orders])
def test_a_stub_is_not_done(check):
    with pytest.raises(NotDone):
        check(stub)


def test_a_hanging_load_gets_a_verdict_and_its_query_is_cancelled(monkeypatch):
    monkeypatch.setattr(checks, "TIME_LIMIT", 2)
    _rejects(checks.load_csv, load_hangs, "did not finish within 2 s")
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        for _ in range(100):  # a terminated backend leaves pg_stat_activity a moment later
            left = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                " AND query LIKE 'SELECT pg_sleep(600)%'"
                                " AND application_name LIKE 'pgcourse learner 5 %'").fetchall()
            if not left:
                break
            time.sleep(0.1)
        assert not left


def test_a_lock_held_on_the_schema_gets_a_verdict_not_a_frozen_cell(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the check's scratch folder goes here, nobody else's
    with psycopg.connect(os.environ["DATABASE_URL"]) as holder:
        holder.execute("CREATE SCHEMA IF NOT EXISTS exercise05")
        holder.execute("CREATE TABLE IF NOT EXISTS exercise05.mine (x int)")
        holder.commit()
        holder.execute("LOCK exercise05.mine")
        _rejects(checks.load_csv, load_copy, "holds a lock on the check's schema exercise05")
        assert not list(tmp_path.iterdir()), "the check left its scratch folder"
        holder.rollback()
        holder.execute("DROP SCHEMA exercise05 CASCADE")
        holder.commit()


def test_load_csv_judges_speed_against_its_own_copy(monkeypatch):
    monkeypatch.setattr(checks, "SPEED_MARGIN", 0.01)  # nothing is 100x faster than the check's own COPY
    _rejects(checks.load_csv, load_copy, r"× slower, and the check allows 0.01×", "in blocks")


# Exercise 2: upsert through a staging table

PRICE = r"^[0-9]+([.][0-9]{1,2})?$"
VALID = (f"coalesce(sku, '') <> '' AND coalesce(name, '') <> '' AND CASE WHEN price ~ '{PRICE}'"
         " THEN price::numeric > 0 AND price::numeric < 100000000 ELSE false END")


def _stage(cur, path, temp=True, name="staging"):
    cur.execute(f"CREATE {'TEMP' if temp else ''} TABLE {name} (line integer GENERATED ALWAYS AS IDENTITY,"
                " sku text, name text, price text)" + (" ON COMMIT DROP" if temp == "drop" else ""))
    with open(path, "rb") as source, cur.copy(f"COPY {name} (sku, name, price) FROM STDIN (FORMAT csv, HEADER)") as copy:
        copy.write(source.read())


def upsert(conn, path, *, valid=VALID, action="UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price",
           order="line DESC", temp=True, drop=True, offset=0, distinct=True, reported=None):
    with conn.transaction(), conn.cursor() as cur:
        _stage(cur, path, temp)
        rejected = [line + 1 + offset for (line,) in
                    cur.execute(f"SELECT line FROM staging WHERE NOT coalesce({reported or valid}, false) ORDER BY line")]
        cur.execute(f"INSERT INTO prices SELECT {'DISTINCT ON (sku)' if distinct else ''} sku, name, price::numeric"
                    f" FROM staging WHERE {valid} ORDER BY sku, {order} ON CONFLICT (sku) DO {action}")
        if drop:
            cur.execute("DROP TABLE staging")
    return rejected


def upsert_on_commit_drop(conn, path):
    return upsert(conn, path, temp="drop", drop=False)


def upsert_permanent_dropped(conn, path):  # a permanent staging table, dropped at the end: fine
    return upsert(conn, path, temp=False)


def upsert_window(conn, path):  # row_number() instead of DISTINCT ON, pg_input_is_valid for the range
    valid = (f"coalesce(sku, '') <> '' AND coalesce(name, '') <> '' AND price ~ '{PRICE}'"
             " AND pg_input_is_valid(price, 'numeric(10,2)') AND price::numeric > 0")
    with conn.transaction(), conn.cursor() as cur:
        _stage(cur, path, "drop")
        cur.execute(f"CREATE TEMP VIEW checked AS SELECT *, coalesce(CASE WHEN {valid} THEN true END, false) AS ok"
                    " FROM staging")
        rejected = [line + 1 for (line,) in cur.execute("SELECT line FROM checked WHERE NOT ok ORDER BY line")]
        cur.execute("""INSERT INTO prices (sku, name, price)
                       SELECT sku, name, price::numeric FROM (
                           SELECT *, row_number() OVER (PARTITION BY sku ORDER BY line DESC) AS nth
                           FROM checked WHERE ok) AS last WHERE nth = 1
                       ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price""")
        cur.execute("DROP VIEW checked")
    return rejected


def _valid_in_python(sku, name, price):
    if not sku or not name or not re.fullmatch(PRICE, price):
        return False
    try:
        return 0 < Decimal(price) < 100_000_000
    except InvalidOperation:
        return False


def _upsert_checked_in_python(conn, path, ok):  # ok(sku, name, price) decides in Python; COPY carries the valid rows
    with open(path, newline="", encoding="utf-8") as source:
        lines = list(enumerate(csv.reader(source), start=1))[1:]
    rejected = [n for n, row in lines if not ok(*row)]
    last = {row[0]: row for n, row in lines if n not in rejected}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE incoming (sku text, name text, price numeric) ON COMMIT DROP")
        with cur.copy("COPY incoming FROM STDIN") as copy:
            for row in last.values():
                copy.write_row(row)
        cur.execute("INSERT INTO prices SELECT * FROM incoming"
                    " ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price")
    return rejected


def upsert_validated_in_python(conn, path):  # allowed: Python decides, COPY carries, the server upserts
    return _upsert_checked_in_python(conn, path, _valid_in_python)


def upsert_do_nothing(conn, path):
    return upsert(conn, path, action="NOTHING")


def upsert_first_line_wins(conn, path):
    return upsert(conn, path, order="line")


def upsert_leaves_permanent_staging(conn, path):
    return upsert(conn, path, temp=False, drop=False)


def upsert_leaves_temp_staging(conn, path):  # a TEMP table without ON COMMIT DROP, never dropped
    return upsert(conn, path, drop=False)


def upsert_zero_based_lines(conn, path):
    return upsert(conn, path, offset=-1)


def upsert_without_distinct(conn, path):  # the duplicate sku makes ON CONFLICT DO UPDATE fail
    return upsert(conn, path, distinct=False, order="line")


def upsert_unbounded_regex(conn, path):  # 123456789.50 passes the regex and overflows numeric(10,2)
    return upsert(conn, path, valid=VALID.replace(" AND price::numeric < 100000000", ""))


def upsert_three_decimals(conn, path):  # 12.505 is kept (and rounded)
    return upsert(conn, path, valid=VALID.replace("{1,2}", "+").replace(" AND price::numeric < 100000000", "")
                  .replace("THEN price::numeric > 0", "THEN price::numeric > 0 AND length(price) < 12"))


def upsert_cast_validation(conn, path):  # "does it cast?": accepts 1e3, ' 12.50 ', 12.505, +5.00
    valid = ("coalesce(sku, '') <> '' AND coalesce(name, '') <> '' AND pg_input_is_valid(price, 'numeric(10,2)')"
             " AND CASE WHEN pg_input_is_valid(price, 'numeric(10,2)') THEN price::numeric(10,2) > 0 END")
    return upsert(conn, path, valid=valid)


def upsert_null_price_slips_through(conn, path):  # `price ~ ...` is NULL for an empty field: not reported
    return upsert(conn, path, reported=VALID.replace("coalesce(name, '') <> '' AND CASE WHEN price ~",
                                                     "coalesce(name, '') <> '' AND CASE WHEN price IS NULL THEN true"
                                                     " WHEN price ~"))


def upsert_name_not_checked(conn, path):  # an empty name reaches NOT NULL
    return upsert(conn, path, valid=VALID.replace("coalesce(name, '') <> '' AND ", ""))


def upsert_null_only_for_sku_and_name(conn, path):  # a quoted empty field ("") is '' in COPY, not NULL
    return upsert(conn, path, valid=VALID.replace("coalesce(sku, '') <> ''", "sku IS NOT NULL")
                  .replace("coalesce(name, '') <> ''", "name IS NOT NULL"))


def upsert_last_line_even_invalid(conn, path):  # an invalid last line hides an earlier valid one
    with conn.transaction(), conn.cursor() as cur:
        _stage(cur, path)
        rejected = [line + 1 for (line,) in cur.execute(f"SELECT line FROM staging WHERE NOT ({VALID}) ORDER BY line")]
        cur.execute(f"""INSERT INTO prices SELECT sku, name, price::numeric FROM (
                            SELECT DISTINCT ON (sku) * FROM staging ORDER BY sku, line DESC) AS last
                        WHERE {VALID} ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price""")
        cur.execute("DROP TABLE staging")
    return rejected


CONVERTS = """CREATE OR REPLACE FUNCTION pg_temp.converts(value text, type {}) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SELECT %L::%s', value, type);
    RETURN true;
EXCEPTION WHEN others THEN
    RETURN false;
END $$"""


def _upsert_with_converts(conn, path, type_):  # the lesson's first edition: "does the text convert to the type?"
    conn.execute(CONVERTS.format(type_))
    valid = ("pg_temp.converts(sku, 'text') AND pg_temp.converts(name, 'text') AND CASE WHEN price ~ '^[0-9]+([.][0-9]{1,2})?$'"
             " AND pg_temp.converts(price, 'numeric(10,2)') THEN price::numeric > 0 ELSE false END")
    return upsert(conn, path, valid=valid)


def upsert_converts_regtype(conn, path):  # regtype drops the (10,2), and a NULL converts to anything
    return _upsert_with_converts(conn, path, "regtype")


def upsert_converts_keeps_typmod(conn, path):  # the type as text keeps the (10,2); a NULL still converts
    return _upsert_with_converts(conn, path, "text")


def upsert_typmod_but_not_null(conn, path):  # range right, but `sku <> ''` is NULL for an empty field: dropped silently
    valid = VALID.replace("coalesce(sku, '') <> ''", "sku <> ''").replace("coalesce(name, '') <> ''", "name <> ''")
    with conn.transaction(), conn.cursor() as cur:
        _stage(cur, path, "drop")
        rejected = [line + 1 for (line,) in cur.execute(f"SELECT line FROM staging WHERE NOT ({valid}) ORDER BY line")]
        cur.execute(f"INSERT INTO prices SELECT DISTINCT ON (sku) sku, name, price::numeric FROM staging WHERE {valid}"
                    " ORDER BY sku, line DESC ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price")
    return rejected


def upsert_returns_none_when_clean(conn, path):
    return upsert(conn, path) or None


def upsert_returns_strings(conn, path):
    return [str(n) for n in upsert(conn, path)]


def upsert_row_by_row(conn, path):  # validated in Python, then one INSERT ... ON CONFLICT per line
    with open(path, newline="", encoding="utf-8") as source:
        lines = list(enumerate(csv.reader(source), start=1))[1:]
    rejected = [n for n, row in lines if not _valid_in_python(*row)]
    with conn.transaction():
        for n, row in lines:
            if n not in rejected:
                conn.execute("INSERT INTO prices VALUES (%s, %s, %s) ON CONFLICT (sku) DO UPDATE"
                             " SET name = EXCLUDED.name, price = EXCLUDED.price", row)
    return rejected


def upsert_fstring(conn, path):  # validated in Python, then VALUES pasted into one statement
    with open(path, newline="", encoding="utf-8") as source:
        lines = list(enumerate(csv.reader(source), start=1))[1:]
    rejected = [n for n, row in lines if not _valid_in_python(*row)]
    last = {row[0]: row for n, row in lines if n not in rejected}
    if last:
        values = ", ".join("('{}', '{}', {})".format(s, nm.replace("'", "''"), p) for s, nm, p in last.values())
        conn.execute(f"INSERT INTO prices VALUES {values} ON CONFLICT (sku) DO UPDATE"
                     " SET name = EXCLUDED.name, price = EXCLUDED.price")
    return rejected


def upsert_per_line_from_staging(conn, path):  # staging, but one INSERT ... SELECT per line
    with conn.transaction(), conn.cursor() as cur:
        _stage(cur, path, "drop")
        rejected = [line + 1 for (line,) in cur.execute(f"SELECT line FROM staging WHERE NOT ({VALID}) ORDER BY line")]
        for (line,) in cur.execute(f"SELECT line FROM staging WHERE {VALID} ORDER BY line").fetchall():
            cur.execute("INSERT INTO prices SELECT sku, name, price::numeric FROM staging WHERE line = %s"
                        " ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price", (line,))
    return rejected


def upsert_rewrites_the_table(conn, path):  # merge in Python, TRUNCATE, COPY everything back
    with open(path, newline="", encoding="utf-8") as source:
        lines = list(enumerate(csv.reader(source), start=1))[1:]
    rejected = [n for n, row in lines if not _valid_in_python(*row)]
    merged = {sku: (sku, name, price) for sku, name, price in conn.execute("SELECT sku, name, price FROM prices")}
    merged.update({row[0]: tuple(row) for n, row in lines if n not in rejected})
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("TRUNCATE prices")
        with cur.copy("COPY prices (sku, name, price) FROM STDIN") as copy:
            for row in merged.values():
                copy.write_row(row)
    return rejected


def upsert_copy_straight_in(conn, path):  # validated in Python, then COPY into prices itself
    with open(path, newline="", encoding="utf-8") as source:
        lines = list(enumerate(csv.reader(source), start=1))[1:]
    rejected = [n for n, row in lines if not _valid_in_python(*row)]
    with conn.cursor() as cur, cur.copy("COPY prices (sku, name, price) FROM STDIN") as copy:
        for n, row in lines:
            if n not in rejected:
                copy.write_row(row)
    return rejected


def upsert_update_then_insert(conn, path):  # two statements from staging instead of ON CONFLICT: fine
    with conn.transaction(), conn.cursor() as cur:
        _stage(cur, path, "drop")
        rejected = [line + 1 for (line,) in cur.execute(f"SELECT line FROM staging WHERE NOT ({VALID}) ORDER BY line")]
        cur.execute(f"CREATE TEMP TABLE last ON COMMIT DROP AS SELECT DISTINCT ON (sku) sku, name, price::numeric AS price"
                    f" FROM staging WHERE {VALID} ORDER BY sku, line DESC")
        cur.execute("UPDATE prices p SET name = l.name, price = l.price FROM last l WHERE p.sku = l.sku")
        cur.execute("INSERT INTO prices SELECT * FROM last l WHERE NOT EXISTS (SELECT FROM prices p WHERE p.sku = l.sku)")
    return rejected


def upsert_leaves_temp_and_fails_next_time(conn, path):  # CREATE TEMP TABLE without ON COMMIT DROP, never dropped
    with conn.cursor() as cur:
        _stage(cur, path)
        rejected = [line + 1 for (line,) in cur.execute(f"SELECT line FROM staging WHERE NOT ({VALID}) ORDER BY line")]
        cur.execute(f"INSERT INTO prices SELECT DISTINCT ON (sku) sku, name, price::numeric FROM staging WHERE {VALID}"
                    " ORDER BY sku, line DESC ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price")
    return rejected


def upsert_swallows(conn, path):
    try:
        return upsert_unbounded_regex(conn, path)
    except Exception:  # noqa: BLE001
        return []


def upsert_digit_count_regex(conn, path):  # `[0-9]{1,8}` for the range: refuses a valid 000000012.50
    return upsert(conn, path, valid=VALID.replace("[0-9]+", "[0-9]{1,8}").replace(" AND price::numeric < 100000000", ""))


def upsert_loose_point(conn, path):  # digits and a point each optional: takes '7.' and '.5' (both cast)
    return upsert(conn, path, valid=VALID.replace("^[0-9]+([.][0-9]{1,2})?$", "^[0-9]*[.]?[0-9]{0,2}$")
                  .replace("THEN price::numeric > 0", "THEN price NOT IN ('', '.') AND price::numeric > 0"))


def _upsert_python_checked(conn, path, pattern, match):  # decided in Python, valid rows sent by write_row
    def ok(sku, name, price):
        return bool(sku and name and match(pattern, price)) and 0 < Decimal(price) < 100_000_000
    return _upsert_checked_in_python(conn, path, ok)


def upsert_python_dollar(conn, path):  # re.match with `$`: '12.50\n' passes (`$` matches before a final newline)
    return _upsert_python_checked(conn, path, r"^[0-9]+([.][0-9]{1,2})?$", re.match)


def upsert_python_backslash_d(conn, path):  # \d takes other scripts' digits, which Decimal reads and the server does not
    return _upsert_python_checked(conn, path, r"\d+([.]\d{1,2})?", re.fullmatch)


def upsert_on_commit_drop_in_autocommit(conn, path):  # no transaction: the staging table is gone once CREATE ends
    with conn.cursor() as cur:
        _stage(cur, path, "drop")
        rejected = [line + 1 for (line,) in cur.execute(f"SELECT line FROM staging WHERE NOT ({VALID}) ORDER BY line")]
        cur.execute(f"INSERT INTO prices SELECT DISTINCT ON (sku) sku, name, price::numeric FROM staging WHERE {VALID}"
                    " ORDER BY sku, line DESC ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price")
    return rejected


def upsert_without_positive(conn, path):  # no `> 0`: prices' CHECK refuses '0' and '0.00'
    return upsert(conn, path, valid=VALID.replace("price::numeric > 0 AND ", ""))


def upsert_reports_nothing(conn, path):  # upserts right, reports no line
    upsert(conn, path)
    return []


UPSERT_REJECTS = [
    (upsert_do_nothing, ["P0001 is", "DO UPDATE"]),
    (upsert_first_line_wins, ["P0002 is", "last valid line wins"]),
    (upsert_leaves_permanent_staging, ["left exercise05.staging behind", "ON COMMIT DROP"]),
    (upsert_leaves_temp_staging, ["left temporary staging behind"]),
    (upsert_zero_based_lines, ["as the rejected lines", "one less than the right one", "off by one",
                                "header is line 1"]),
    (upsert_without_distinct, ["CardinalityViolation", "DISTINCT ON"]),
    (upsert_unbounded_regex, ["NumericValueOutOfRange", "below 100,000,000"]),
    (upsert_three_decimals, ["rejected lines", "price '12.505'"]),
    (upsert_cast_validation, ["rejected lines", r"price '(1e3|12\.505| 12\.50 |\+5\.00)'"]),
    (upsert_null_price_slips_through, ["rejected lines", r"[Ll]ine 14 \(price\) has an empty field, which COPY reads as NULL",
                                       "reject it explicitly"]),
    (upsert_name_not_checked, ["NotNullViolation", "decide which are valid before casting"]),
    (upsert_last_line_even_invalid, ["P0003 is", "last valid line wins"]),
    (upsert_null_only_for_sku_and_name, ["rejected lines"]),
    (upsert_converts_regtype, ["NumericValueOutOfRange", r"lines 49 and 53 hold prices too large for numeric\(10,2\)"
                               r" \('123456789\.50', '12345678901\.5'\)", r"line 23 \(sku\)", r"line 57 \(name\)",
                               "empty fields, which COPY reads as NULL", "test the range yourself", "below 100,000,000"]),
    (upsert_converts_keeps_typmod, ["NotNullViolation", r"line 23 \(sku\)", r"line 57 \(name\)",
                                    "empty fields, which COPY reads as NULL", "reject it explicitly"]),
    (upsert_typmod_but_not_null, ["rejected lines", r"missing \[23, 57\]", r"[Ll]ine 23 \(sku\) and line 57 \(name\)"
                                  " have empty fields, which COPY reads as NULL", "neither moved nor reported",
                                  "reject it explicitly"]),
    (upsert_returns_none_when_clean, ["returned None", "an empty list"]),
    (upsert_returns_strings, ["list of int"]),
    (upsert_row_by_row, [r"as parameters of \d+ statement", "staging table"]),
    (upsert_fstring, ["written into the SQL text"]),
    (upsert_per_line_from_staging, [r"received \d+ statements that wrote the table", "one statement per row",
                                     "one INSERT ... SELECT"]),
    (upsert_rewrites_the_table, ["removed rows from prices \\(TRUNCATE\\)", "ON CONFLICT"]),
    (upsert_copy_straight_in, ["UniqueViolation", "COPY only inserts"]),
    (upsert_leaves_temp_and_fails_next_time, ["left temporary staging behind"]),
    (upsert_swallows, ["returned \\[\\] as the rejected lines", "prices was not changed",
                       "catch an exception and hide it"]),
    (upsert_digit_count_regex, [r"valid, yet reported: \[7\]", "'000000012.50'", "leading zeros"]),
    (upsert_loose_point, [r"missing \[8, 9\]", "price '7.'", "a digit on each side of the point"]),
    (upsert_python_dollar, [r"missing \[11\]", r"price '12\.50\\n'", "re.fullmatch"]),
    (upsert_python_backslash_d, ["InvalidTextRepresentation", "digits 0 to 9", r"\[0-9\]"]),
    (upsert_on_commit_drop_in_autocommit, ["UndefinedTable", "ON COMMIT DROP", "autocommit",
                                           "with conn.transaction"]),
    (upsert_without_positive, ["CheckViolation", r"lines 28 and 32 hold prices of zero \('0', '0.00'\)",
                               "above 0"]),
    (upsert_reports_nothing, [r"missing \[5, 10, 14, 19, 23\] and 11 more"]),
]


@pytest.mark.parametrize("fn, said", UPSERT_REJECTS, ids=[fn.__name__ for fn, _ in UPSERT_REJECTS])
def test_upsert_prices_rejects(fn, said):
    _rejects(checks.upsert_prices, fn, *said)


@pytest.mark.parametrize("fn", [upsert, upsert_on_commit_drop, upsert_permanent_dropped, upsert_window,
                                upsert_validated_in_python, upsert_update_then_insert])
def test_upsert_prices_accepts(fn, capsys):
    checks.upsert_prices(fn)
    assert "Exercise 2 passed" in capsys.readouterr().out


def _solution(name):
    """The answer as the solutions notebook writes it (its cell defining `name`), run here as the learner runs it."""
    notebook = Path(__file__).resolve().parents[1] / "solutions" / "05_bulk_loading_exercises.ipynb"
    source = next(c.source for c in nbformat.read(notebook, as_version=4).cells if c.source.startswith(f"def {name}("))
    namespace = {"psycopg": psycopg}
    exec(source, namespace)  # noqa: S102 - the course's own solution cell
    return namespace[name]


def test_upsert_prices_accepts_the_solutions_notebook_answer(capsys):
    """Its validation catches both kinds of line a cast lets through, without pg_input_is_valid (16+)."""
    answer = _solution("upsert_prices")
    checks.upsert_prices(answer)
    assert "Exercise 2 passed" in capsys.readouterr().out
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE prices (sku text PRIMARY KEY, name text NOT NULL,"
                     " price numeric(10,2) NOT NULL CHECK (price > 0))")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "traps.csv"
            path.write_text('sku,name,price\nP1,ok,99999999.99\nP2,too large,123456789.50\n,no sku,1.00\nP3,,1.00\n'
                            'P4,no price,\nP5,"",1.00\n', encoding="utf-8")
            assert answer(conn, str(path)) == [3, 4, 5, 6, 7]
        assert conn.execute("SELECT sku, price FROM prices").fetchall() == [("P1", Decimal("99999999.99"))]


# Exercise 3: export a query to CSV

EXPORT = ("COPY (SELECT id, customer_id, status, created_at FROM orders WHERE status = %s ORDER BY id)"
          " TO STDOUT (FORMAT csv, HEADER)")


def _export(conn, path, query, params=None):
    with conn.cursor() as cur, open(path, "wb") as out:
        with cur.copy(query, params) as copy:
            for block in copy:
                out.write(block)
        return cur.rowcount


def export_filtered_in_python(conn, path, status):  # every order sent to Python, chosen and written there
    rows = [r for r in conn.execute("SELECT id, customer_id, status, created_at::text FROM orders ORDER BY id")
            if r[2] == status]
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "customer_id", "status", "created_at"])
        writer.writerows(rows)
    return len(rows)


def export_copy(conn, path, status):
    return _export(conn, path, EXPORT, (status,))


def export_literal(conn, path, status):  # sql.Literal: psycopg quotes it for this connection
    query = sql.SQL("COPY (SELECT id, customer_id, status, created_at FROM orders WHERE status = {} ORDER BY id)"
                    " TO STDOUT (FORMAT csv, HEADER)").format(sql.Literal(status))
    return _export(conn, path, query)


def export_named_param(conn, path, status):
    return _export(conn, path, EXPORT.replace("%s", "%(status)s"), {"status": status})


def export_server_setting(conn, path, status):  # the status as a real server-side parameter
    conn.execute("SELECT set_config('export.status', %s, false)", (status,))
    return _export(conn, path, EXPORT.replace("%s", "current_setting('export.status')"))


def export_fstring(conn, path, status):
    return _export(conn, path, EXPORT.replace("%s", f"'{status}'"))


def export_hand_escaped(conn, path, status):
    return _export(conn, path, EXPORT.replace("%s", "'" + status.replace("'", "''") + "'"))


def export_hand_escaped_backslashes(conn, path, status):  # right where backslashes escape, wrong where they do not
    escaped = status.replace("\\", "\\\\").replace("'", "''")
    return _export(conn, path, EXPORT.replace("%s", f"'{escaped}'"))


def export_no_order(conn, path, status):
    return _export(conn, path, EXPORT.replace(" ORDER BY id", ""), (status,))


def export_csv_writer(conn, path, status):  # Python formats timestamps differently from COPY
    rows = conn.execute("SELECT id, customer_id, status, created_at FROM orders WHERE status = %s ORDER BY id",
                        (status,)).fetchall()
    with open(path, "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "customer_id", "status", "created_at"])
        writer.writerows(rows)
    return len(rows)


def export_no_header(conn, path, status):
    return _export(conn, path, EXPORT.replace(", HEADER", ""), (status,))


def export_counts_lines(conn, path, status):
    export_copy(conn, path, status)
    return len(open(path).read().splitlines())  # includes the header


def export_skips_empty(conn, path, status):  # writes nothing when no order has the status
    rows = conn.execute("SELECT count(*) FROM orders WHERE status = %s", (status,)).fetchone()[0]
    return export_copy(conn, path, status) if rows else 0


def export_rowcount_after_close(conn, path, status):
    with conn.cursor() as cur, open(path, "wb") as out, cur.copy(EXPORT, (status,)) as copy:
        for block in copy:
            out.write(block)
    return cur.rowcount


def export_refuses_odd_statuses(conn, path, status):  # a whitelist: refuses statuses it does not know
    if status not in ("pending", "paid", "shipped", "cancelled"):
        raise ValueError(f"unknown status {status!r}")
    return export_copy(conn, path, status)


def export_fstring_swallowed(conn, path, status):  # an error hidden behind return 0
    try:
        return export_fstring(conn, path, status)
    except Exception:  # noqa: BLE001
        return 0


def export_logs_url(conn, path, status):
    import logging

    logging.getLogger("export").debug("exporting from %s", os.environ["DATABASE_URL"])
    return export_copy(conn, path, status)


def export_old_syntax(conn, path, status):  # WITH CSV HEADER, SELECT *: the same bytes
    return _export(conn, path, "COPY (SELECT * FROM orders WHERE status = %s ORDER BY id) TO STDOUT WITH CSV HEADER",
                   (status,))


def export_text_mode(conn, path, status):  # decoded and written as text: the same bytes here
    with conn.cursor() as cur, open(path, "w", encoding="utf-8", newline="") as out:
        with cur.copy(EXPORT, (status,)) as copy:
            while block := copy.read():
                out.write(bytes(block).decode())
        return cur.rowcount


def export_order_by_created_at(conn, path, status):
    return _export(conn, path, EXPORT.replace("ORDER BY id", "ORDER BY created_at"), (status,))


def export_public_orders(conn, path, status):  # another table than the one it is given: public.orders
    return _export(conn, path, EXPORT.replace("FROM orders", "FROM public.orders"), (status,))


EXPORT_REJECTS = [
    *([(export_filtered_in_python, ["rows to Python for a file", "COPY \\(SELECT"])] if sys.platform == "linux" else []),
    (export_fstring, ["paid' OR ''='", "pasted into the SQL", "sql.Literal"]),
    (export_hand_escaped, ["pasted into the SQL", "never build the quotes yourself"]),
    (export_hand_escaped_backslashes, ["pasted into the SQL"]),
    (export_no_order, ["same lines, in another order", "ORDER BY id"]),
    (export_csv_writer, ["Only created_at is written differently", "csv module"]),
    (export_no_header, ["HEADER"]),
    (export_counts_lines, ["returned 17", "header is not a row"]),
    (export_skips_empty, ["wrote no file", "header line only"]),
    (export_rowcount_after_close, ["returned -1"]),
    (export_refuses_odd_statuses, ["raised ValueError", "no error: your file then holds the header line only"]),
    (export_fstring_swallowed, ["pasted into the SQL"]),
    (export_logs_url, ["printed or logged a secret"]),
    (export_order_by_created_at, ["COPY writes"]),
    (export_public_orders, ["pasted into the SQL|COPY writes"]),
]


@pytest.mark.parametrize("fn, said", EXPORT_REJECTS, ids=[fn.__name__ for fn, _ in EXPORT_REJECTS])
def test_export_orders_rejects(fn, said):
    _rejects(checks.export_orders, fn, *said)


@pytest.mark.parametrize("fn", [export_copy, export_literal, export_named_param, export_server_setting,
                                export_old_syntax, export_text_mode])
def test_export_orders_accepts(fn, capsys):
    checks.export_orders(fn)
    assert "Exercise 3 passed" in capsys.readouterr().out


def test_the_checks_leave_nothing_behind():
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'exercise05'").fetchone()[0] == 0


UNTRACED = [(checks.load_csv, load_row_by_row), (checks.load_csv, load_executemany),
            (checks.load_csv, load_multirow_fstring), (checks.load_csv, load_multirow_params),
            (checks.load_csv, load_client_side), (checks.upsert_prices, upsert_row_by_row),
            (checks.upsert_prices, upsert_fstring), (checks.upsert_prices, upsert_per_line_from_staging)]


@pytest.mark.parametrize("check, fn", UNTRACED, ids=[fn.__name__ for _, fn in UNTRACED])
def test_where_libpq_cannot_be_traced_the_servers_evidence_still_rejects(check, fn, monkeypatch):
    """On macOS psycopg cannot trace libpq: the statements recorded by the target table's trigger
    (their text, their parameters, their number) still catch these."""
    monkeypatch.setattr(checks._Wire, "__enter__", lambda self: self)
    _rejects(check, fn, "(SQL text|parameters|statements that wrote)")


def test_where_libpq_cannot_be_traced_the_alternatives_still_pass(monkeypatch, capsys):
    monkeypatch.setattr(checks._Wire, "__enter__", lambda self: self)
    checks.load_csv(load_via_temp_table)
    checks.upsert_prices(upsert_validated_in_python)
    assert capsys.readouterr().out.count("passed") == 2


def test_right_answers_pass_while_the_notebook_holds_other_connections(capsys):
    url = os.environ["DATABASE_URL"]
    with psycopg.connect(url) as idle, psycopg.connect(url) as busy:
        busy.execute("SELECT count(*) FROM orders")  # a transaction left open, as a notebook cell may leave it
        checks.upsert_prices(upsert)
        checks.export_orders(export_copy)
        assert idle.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert capsys.readouterr().out.count("passed") == 2
