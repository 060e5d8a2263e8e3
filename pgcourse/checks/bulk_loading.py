"""Checks for lesson 05 (bulk loading): load a CSV with COPY, upsert from staging, export with COPY.

The checks work in a schema `exercise05` that they create and drop, give the learner's function an
autocommit connection whose search_path points there, and judge what reached the server: the rows,
the statements (a statement-level trigger records each one's text), the speed against a row-by-row
baseline the check runs itself, and the bytes of an exported file.
"""

from __future__ import annotations

import csv
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import CheckFailed, call, database_url, passed

SCHEMA = "exercise05"  # also written literally in the SQL below
TABLES = """
DROP SCHEMA IF EXISTS exercise05 CASCADE;
CREATE SCHEMA exercise05;
CREATE TABLE exercise05.products_import (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2), stock integer NOT NULL);
CREATE TABLE exercise05.baseline (LIKE exercise05.products_import INCLUDING ALL);
CREATE TABLE exercise05.statements (query text NOT NULL);
CREATE FUNCTION exercise05.record_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO exercise05.statements VALUES (current_query());
    RETURN NULL;
END $$;
CREATE TRIGGER record AFTER INSERT ON exercise05.products_import
    FOR EACH STATEMENT EXECUTE FUNCTION exercise05.record_statement();
CREATE TABLE exercise05.prices (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL CHECK (price > 0));
"""
LOAD_ROWS = 10_000
SPEED_CLASS = 5  # COPY loads tens of times faster than one INSERT per row; pipelined INSERTs a few times


@contextmanager
def _exercise() -> Iterator:
    """Fresh tables and a scratch directory; yields (learner connection, admin connection, directory)."""
    url = database_url()
    workdir = Path(tempfile.mkdtemp(prefix="exercise05-"))
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(TABLES)
        learner = psycopg.connect(make_conninfo(url, options=f"-c search_path={SCHEMA},public"), autocommit=True)
        try:
            yield learner, admin, workdir
        finally:
            learner.close()
            admin.execute("DROP SCHEMA exercise05 CASCADE")
            shutil.rmtree(workdir, ignore_errors=True)


def _product_rows(n: int = LOAD_ROWS, seed: int = 5) -> list[tuple]:
    """Products with the awkward values real files have: commas, quotes, accents, a line break, missing prices."""
    rng = random.Random(seed)
    names = ["Mug, large", 'The "best" pen', "Zoë's café blend", "naïve ☕ cup", "Notebook\nruled", "Plain box"]
    return [(f"SKU-{i:06d}", f"{rng.choice(names)} #{i}", None if i % 50 == 0 else Decimal(rng.randrange(100, 99_999)) / 100,
             rng.randrange(0, 500)) for i in range(1, n + 1)]


def _write_csv(path: Path, header: tuple, rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(["" if value is None else value for value in row] for row in rows)


def _fingerprint(admin: psycopg.Connection, table: str) -> tuple:
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY sku), '')) FROM {} AS t")
    return admin.execute(query.format(sql.Identifier(SCHEMA, table))).fetchone()


def load_csv(fn) -> None:
    """Exercise 1: fn(conn, path) loads the CSV into products_import with COPY and returns the row count."""
    with _exercise() as (learner, admin, workdir):
        rows = _product_rows()
        path = workdir / "products.csv"
        _write_csv(path, ("sku", "name", "price", "stock"), rows)
        started = time.perf_counter()
        with admin.transaction():  # the baseline: one INSERT per row, in one transaction
            for row in rows:
                admin.execute("INSERT INTO exercise05.baseline VALUES (%s, %s, %s, %s)", row)
        baseline = time.perf_counter() - started

        started = time.perf_counter()
        returned = call(1, fn, learner, str(path))
        took = time.perf_counter() - started
        got, want = _fingerprint(admin, "products_import"), _fingerprint(admin, "baseline")
        if got[0] != want[0]:
            raise CheckFailed(f"products_import holds {got[0]} rows; the file has {want[0]} data lines.",
                              "COPY ... FROM STDIN (FORMAT csv, HEADER) reads the header line as a header, not data")
        if got != want:
            sample = admin.execute("SELECT p.sku, p.name, p.price, b.name, b.price FROM exercise05.products_import p "
                                   "JOIN exercise05.baseline b USING (sku) WHERE (p.name, p.price) IS DISTINCT FROM "
                                   "(b.name, b.price) ORDER BY sku LIMIT 1").fetchone()
            raise CheckFailed(f"The rows differ from the file: {sample[0]} was loaded as ({sample[1]!r}, {sample[2]})"
                              f" instead of ({sample[3]!r}, {sample[4]}).",
                              "let the server parse the CSV (FORMAT csv): an empty unquoted field is NULL, and quoted"
                              " fields may hold commas, quotes and line breaks")
        statements = [q for (q,) in admin.execute("SELECT query FROM exercise05.statements")]
        if not any(q.lstrip().upper().startswith("COPY") for q in statements):
            raise CheckFailed(f"The server received {len(statements)} INSERT statement(s) and no COPY.",
                              "open cur.copy(\"COPY products_import FROM STDIN (FORMAT csv, HEADER)\") and write"
                              " the file into it in blocks")
        if returned != len(rows):
            raise CheckFailed(f"Your function returned {returned!r}; it loaded {len(rows)} rows.",
                              "read cur.rowcount after the copy block but inside the cursor's block (a closed"
                              " cursor reports -1)")
        if took * SPEED_CLASS > baseline:
            raise CheckFailed(f"Your load took {took:.2f} s; one INSERT per row took {baseline:.2f} s here, only"
                              f" {baseline / took:.1f}× slower.", "stream the file with copy.write() and let the server parse it:"
                              f" a COPY should be at least {SPEED_CLASS}× faster than row-by-row INSERTs")
        passed(1, f"{len(rows):,} rows in one COPY, {baseline / took:.0f}× faster than one INSERT per row")


PRICE_ROWS = 100


def _price_file(path: Path) -> tuple[dict[str, tuple[str, Decimal]], list[int]]:
    """Write the import file; return the table the upsert must leave and the rejected file lines."""
    rng = random.Random(17)
    final = {f"P{i:04d}": (f"item {i}", Decimal(rng.randrange(100, 9_999)) / 100) for i in range(1, PRICE_ROWS + 1)}
    lines: list[tuple] = []
    for i in range(1, 31):  # 30 updates of existing products
        final[f"P{i:04d}"] = (f"item {i} (new)", Decimal(rng.randrange(100, 9_999)) / 100)
        lines.append((f"P{i:04d}", *final[f"P{i:04d}"]))
    for i in range(PRICE_ROWS + 1, PRICE_ROWS + 31):  # 30 new products
        final[f"P{i:04d}"] = (f"item {i}", Decimal(rng.randrange(100, 9_999)) / 100)
        lines.append((f"P{i:04d}", *final[f"P{i:04d}"]))
    bad = [("P0031", "item 31", "n/a"), ("P0032", "item 32", "-1.00"), ("P0033", "item 33", ""),
           ("P0034", "item 34", "1,50"), ("", "no sku", "2.00"), ("P0035", "item 35", "0")]
    positions = [5, 17, 33, 41, 50, 58]
    for position, row in zip(positions, bad, strict=True):
        lines.insert(position, row)
    final["P0002"] = ("item 2 (last line wins)", Decimal("12.34"))
    lines.append(("P0002", *final["P0002"]))
    _write_csv(path, ("sku", "name", "price"), lines)
    rejected = sorted(index + 2 for index, line in enumerate(lines) if line in bad)  # line 1 is the header
    return final, rejected


def upsert_prices(fn) -> None:
    """Exercise 2: fn(conn, path) upserts the valid lines into prices and returns the rejected line numbers."""
    with _exercise() as (learner, admin, workdir):
        path = workdir / "prices.csv"
        rng = random.Random(17)
        for i in range(1, PRICE_ROWS + 1):
            admin.execute("INSERT INTO exercise05.prices VALUES (%s, %s, %s)",
                          (f"P{i:04d}", f"item {i}", Decimal(rng.randrange(100, 9_999)) / 100))
        final, rejected = _price_file(path)
        tables_before = _tables(admin)
        returned = call(2, fn, learner, str(path))
        got = {sku: (name, price) for sku, name, price in admin.execute("SELECT * FROM exercise05.prices ORDER BY sku")}
        missing_updates = [sku for sku in sorted(final) if sku in got and got[sku] != final[sku]]
        if len(got) != len(final):
            raise CheckFailed(f"prices holds {len(got)} rows; after the import it should hold {len(final)}.",
                              "insert the lines whose sku is new, update the ones that exist (ON CONFLICT (sku) DO"
                              " UPDATE), and skip invalid lines")
        if missing_updates:
            sku = missing_updates[0]
            raise CheckFailed(f"{sku} is {got[sku]} after the import; the file's last line for it says {final[sku]}.",
                              "update existing rows (DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price), and"
                              " when a sku appears twice keep the last line (DISTINCT ON (sku) ... ORDER BY sku, line DESC)")
        if sorted(returned or []) != rejected:
            raise CheckFailed(f"Your function returned {returned!r} as the rejected lines; they are {rejected}.",
                              "number lines as a text editor does (the header is line 1), and reject a line whose"
                              " sku is empty or whose price is not a positive number")
        if _tables(admin) != tables_before:
            raise CheckFailed(f"The import left these tables behind: {sorted(_tables(admin) - tables_before)}.",
                              "stage into a TEMP table (CREATE TEMP TABLE ... ON COMMIT DROP), or drop it afterwards")
        passed(2, f"{len(final) - PRICE_ROWS} inserted, 30 updated, {len(rejected)} lines rejected")


def _tables(admin: psycopg.Connection) -> set[str]:
    return {name for (name,) in admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'exercise05'")}


EXPORT_QUERY = ("COPY (SELECT id, customer_id, status, created_at FROM public.orders WHERE status = %s ORDER BY id)"
                " TO STDOUT (FORMAT csv, HEADER)")


def _reference_export(admin: psycopg.Connection, status: str) -> bytes:
    with admin.cursor() as cur, cur.copy(EXPORT_QUERY, (status,)) as copy:
        return b"".join(copy)


def export_orders(fn) -> None:
    """Exercise 3: fn(conn, path, status) writes the orders with that status as CSV and returns how many."""
    with _exercise() as (learner, admin, workdir):
        for status in ("shipped", "cancelled", "paid' OR ''='"):
            path = workdir / "orders.csv"
            path.unlink(missing_ok=True)
            returned = call(3, fn, learner, str(path), status)
            want = _reference_export(admin, status)
            rows = want.count(b"\n") - 1
            if not path.exists():
                raise CheckFailed(f"export_orders(conn, {str(path)!r}, {status!r}) wrote no file.",
                                  "open the path for writing in binary mode and write every block the copy yields")
            got = path.read_bytes()
            if got != want:
                first = next((i for i, (a, b) in enumerate(zip(got.splitlines(), want.splitlines(), strict=False))
                              if a != b), min(len(got.splitlines()), len(want.splitlines())))
                seen = got.splitlines()[first] if first < len(got.splitlines()) else b"(end of file)"
                expected = want.splitlines()[first] if first < len(want.splitlines()) else b"(end of file)"
                raise CheckFailed(f"For status {status!r}, line {first + 1} of your file is {seen.decode()!r};"
                                  f" COPY writes {expected.decode()!r} ({len(got.splitlines())} lines against"
                                  f" {len(want.splitlines())}).",
                                  "let the server write the CSV: COPY (SELECT ... WHERE status = %s ORDER BY id) TO STDOUT"
                                  " (FORMAT csv, HEADER), with the status passed as a parameter")
            if returned != rows:
                raise CheckFailed(f"For status {status!r} your function returned {returned!r}; the file has {rows} rows.",
                                  "count the data rows: cur.rowcount after the copy block, read before the cursor"
                                  " closes")
        passed(3, "the files match what COPY writes, and a quote in the status is just a character")
