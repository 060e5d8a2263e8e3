"""Lesson 05's checks reject plausible wrong answers: slow loads, Python-side parsing, lost updates, leaks."""

from __future__ import annotations

import csv
import re

import psycopg
import pytest

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import bulk_loading as checks

pytestmark = pytest.mark.usefixtures("checks_database")

COPY_CSV = "COPY products_import (sku, name, price, stock) FROM STDIN (FORMAT csv, HEADER)"
INSERT = "INSERT INTO products_import (sku, name, price, stock) VALUES (%s, %s, %s, %s)"


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def _parsed(path):
    with open(path, newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))
    return [[None if value == "" else value for value in row] for row in rows[1:]]


# Exercise 1: load a CSV with COPY

def load_copy(conn, path):
    with conn.cursor() as cur, open(path, "rb") as source:
        with cur.copy(COPY_CSV) as copy:
            while block := source.read(1 << 16):
                copy.write(block)
        return cur.rowcount  # inside the cursor's block: a closed cursor reports -1


def load_row_by_row(conn, path):  # right rows, one INSERT each
    with conn.transaction():
        for row in _parsed(path):
            conn.execute(INSERT, row)
    return len(_parsed(path))


def load_executemany(conn, path):  # pipelined INSERTs: fast-ish, but not COPY
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(INSERT, _parsed(path))
    return cur.rowcount


def load_split_on_commas(conn, path):  # naive parsing: quoted commas and line breaks break it
    with conn.cursor() as cur, cur.copy("COPY products_import (sku, name, price, stock) FROM STDIN") as copy:
        for line in open(path, encoding="utf-8").read().splitlines()[1:]:
            fields = line.split(",")
            if len(fields) == 4:
                copy.write_row([None if f == "" else f for f in fields])
    return cur.rowcount


def load_empty_strings(conn, path):  # csv.reader + write_row, but '' stays '' (so price can't be NULL)
    with open(path, newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))[1:]
    with conn.cursor() as cur, cur.copy(COPY_CSV.replace(" (FORMAT csv, HEADER)", "")) as copy:
        for row in rows:
            copy.write_row([row[0], row[1], row[2] or "0", row[3]])
    return cur.rowcount


def load_header_as_data(conn, path):  # COPY without HEADER on a text column table: the header fails or loads
    with conn.cursor() as cur, open(path, "rb") as source:
        with cur.copy("COPY products_import (sku, name, price, stock) FROM STDIN (FORMAT csv)") as copy:
            copy.write(source.read())
    return cur.rowcount


def load_wrong_count(conn, path):
    load_copy(conn, path)
    return None


@pytest.mark.parametrize("fn, message", [
    (load_row_by_row, "and no COPY"),
    (load_executemany, "and no COPY"),
    (load_split_on_commas, "rows"),
    (load_empty_strings, "differ"),
    (load_wrong_count, "returned None"),
])
def test_load_csv_rejects(fn, message):
    with pytest.raises(CheckFailed, match=re.escape(message)):
        checks.load_csv(fn)


def test_load_csv_surfaces_a_failing_copy_and_accepts_the_answer(capsys):
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        checks.load_csv(load_header_as_data)  # the learner sees the server's own error
    with pytest.raises(NotDone):
        checks.load_csv(stub)
    checks.load_csv(load_copy)
    assert "Exercise 1 passed" in capsys.readouterr().out


# Exercise 2: upsert from staging

VALID = """coalesce(sku, '') <> '' AND CASE WHEN price ~ '^[0-9]{1,8}([.][0-9]{1,2})?$' THEN price::numeric > 0
           ELSE false END"""


def _stage(cur, path, temp=True):
    cur.execute(f"CREATE {'TEMP' if temp else ''} TABLE staging (line integer GENERATED ALWAYS AS IDENTITY,"
                " sku text, name text, price text)")
    with open(path, "rb") as source, cur.copy("COPY staging (sku, name, price) FROM STDIN (FORMAT csv, HEADER)") as copy:
        copy.write(source.read())
    return [line + 1 for (line,) in cur.execute(f"SELECT line FROM staging WHERE NOT ({VALID}) ORDER BY line")]


def upsert(conn, path, *, action="UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price", order="line DESC",
           temp=True, offset=0):
    with conn.transaction(), conn.cursor() as cur:
        rejected = _stage(cur, path, temp)
        cur.execute(f"INSERT INTO prices SELECT DISTINCT ON (sku) sku, name, price::numeric FROM staging"
                    f" WHERE {VALID} ORDER BY sku, {order} ON CONFLICT (sku) DO {action}")
        if temp:
            cur.execute("DROP TABLE staging")
    return [line + offset for line in rejected]


def upsert_do_nothing(conn, path):
    return upsert(conn, path, action="NOTHING")


def upsert_first_line_wins(conn, path):
    return upsert(conn, path, order="line")


def upsert_leaves_staging(conn, path):
    return upsert(conn, path, temp=False)


def upsert_zero_based_lines(conn, path):
    return upsert(conn, path, offset=-1)


def upsert_null_price_slips_through(conn, path):  # `price ~ ...` is NULL for an empty field: neither kept nor reported
    with conn.transaction(), conn.cursor() as cur:
        _stage(cur, path)
        rejected = [line + 1 for (line,) in cur.execute(
            "SELECT line FROM staging WHERE NOT (coalesce(sku, '') <> '' AND price ~ '^[0-9]+([.][0-9]{1,2})?$'"
            " AND price::numeric > 0) ORDER BY line")]
        cur.execute(f"INSERT INTO prices SELECT DISTINCT ON (sku) sku, name, price::numeric FROM staging"
                    f" WHERE {VALID} ORDER BY sku, line DESC ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name,"
                    " price = EXCLUDED.price")
        cur.execute("DROP TABLE staging")
    return rejected


def upsert_without_distinct(conn, path):  # the duplicate sku makes ON CONFLICT DO UPDATE fail
    with conn.transaction(), conn.cursor() as cur:
        _stage(cur, path)
        cur.execute(f"INSERT INTO prices SELECT sku, name, price::numeric FROM staging WHERE {VALID}"
                    " ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price")
    return []


@pytest.mark.parametrize("fn, message", [
    (upsert_do_nothing, "after the import"),
    (upsert_first_line_wins, "last line"),
    (upsert_leaves_staging, "left these tables behind"),
    (upsert_zero_based_lines, "rejected lines"),
    (upsert_null_price_slips_through, "rejected lines"),
])
def test_upsert_prices_rejects(fn, message):
    with pytest.raises(CheckFailed, match=re.escape(message)):
        checks.upsert_prices(fn)


def test_upsert_prices_surfaces_duplicates_and_accepts_the_answer(capsys):
    with pytest.raises(psycopg.errors.CardinalityViolation):
        checks.upsert_prices(upsert_without_distinct)
    checks.upsert_prices(upsert)
    assert "Exercise 2 passed" in capsys.readouterr().out


# Exercise 3: export a query to CSV

EXPORT = ("COPY (SELECT id, customer_id, status, created_at FROM orders WHERE status = %s ORDER BY id)"
          " TO STDOUT (FORMAT csv, HEADER)")


def export_copy(conn, path, status):
    with conn.cursor() as cur, open(path, "wb") as out:
        with cur.copy(EXPORT, (status,)) as copy:
            for block in copy:
                out.write(block)
        return cur.rowcount


def export_fstring(conn, path, status):  # the quote in the status widens the WHERE clause
    query = ("COPY (SELECT id, customer_id, status, created_at FROM orders WHERE status = '" + status
             + "' ORDER BY id) TO STDOUT (FORMAT csv, HEADER)")
    with conn.cursor() as cur, open(path, "wb") as out:
        with cur.copy(query) as copy:
            for block in copy:
                out.write(block)
        return cur.rowcount


def export_csv_writer(conn, path, status):  # Python formats timestamps differently from COPY
    rows = conn.execute("SELECT id, customer_id, status, created_at FROM orders WHERE status = %s ORDER BY id",
                        (status,)).fetchall()
    with open(path, "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "customer_id", "status", "created_at"])
        writer.writerows(rows)
    return len(rows)


def export_no_header(conn, path, status):
    with conn.cursor() as cur, open(path, "wb") as out:
        with cur.copy(EXPORT.replace(", HEADER", ""), (status,)) as copy:
            for block in copy:
                out.write(block)
    return cur.rowcount


def export_counts_lines(conn, path, status):
    export_copy(conn, path, status)
    return len(open(path).read().splitlines())  # includes the header


@pytest.mark.parametrize("fn, message", [
    (export_csv_writer, "COPY writes"),
    (export_no_header, "COPY writes"),
    (export_counts_lines, "your function returned"),
])
def test_export_orders_rejects(fn, message):
    with pytest.raises(CheckFailed, match=re.escape(message)):
        checks.export_orders(fn)


def test_export_orders_rejects_an_injectable_query_and_accepts_the_answer(capsys):
    with pytest.raises(CheckFailed, match=re.escape("paid' OR ''='")):
        checks.export_orders(export_fstring)
    checks.export_orders(export_copy)
    assert "Exercise 3 passed" in capsys.readouterr().out
