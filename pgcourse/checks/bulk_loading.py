"""Checks for lesson 05 (bulk loading): load a CSV with COPY, upsert through staging, export with COPY.

The checks work in a schema `exercise05` that they create (committed) and drop again, and call the
learner's function several times, with files or statuses whose right answers differ, on connections
they open themselves (autocommit, `search_path` exercise05, public, tagged with their own
application_name, every call under a time limit). They judge what reached the server:

- the rows, against the check's own COPY of the same file, or its own export, byte for byte;
- how the data travelled: a statement-level trigger on the target table records the text (and for
  `prices` the kind) of every statement that wrote it, on every platform; where psycopg can trace libpq
  (Linux) the check also reads every message the learner's connection sent, so a value written into
  SQL text or sent as a parameter is seen even when it went through a table of the learner's own;
- the speed of a load: best of up to five turns against the check's own COPY of the same file;
- what is left behind: tables in exercise05 or public, temporary tables on the connection, an open
  transaction, a closed connection;
- for the export: `orders` is the check's copy of the course's orders, stored out of id order, with a
  few orders whose status holds quotes and a backslash, exported on connections with
  standard_conforming_strings on and off, so that only psycopg's own quoting gets every status right.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import pq, sql

from . import (
    CheckFailed,
    check_connect,
    database_url,
    disorder,
    learner_env,
    mask,
    new_tag,
    passed,
    run,
    secrets_in,
    with_params,
)

SCHEMA = "exercise05"  # also written literally in the SQL below
TABLES = """
DROP SCHEMA IF EXISTS exercise05 CASCADE;
CREATE SCHEMA exercise05;
CREATE TABLE exercise05.products_import (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2), stock integer NOT NULL);
CREATE TABLE exercise05.baseline (LIKE exercise05.products_import INCLUDING ALL);
CREATE TABLE exercise05.statements (op text NOT NULL, query text NOT NULL);
CREATE FUNCTION exercise05.record_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO exercise05.statements VALUES (TG_OP, current_query());
    RETURN NULL;
END $$;
CREATE TRIGGER record AFTER INSERT ON exercise05.products_import
    FOR EACH STATEMENT EXECUTE FUNCTION exercise05.record_statement();
CREATE TABLE exercise05.prices (sku text PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL CHECK (price > 0));
CREATE TRIGGER record AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON exercise05.prices
    FOR EACH STATEMENT EXECUTE FUNCTION exercise05.record_statement();
"""
TIME_LIMIT = 30  # seconds per call of the learner's function: row by row, 10,000 rows take a few seconds


@dataclass
class _Exercise:
    admin: psycopg.Connection
    workdir: Path
    tag: str
    url: str  # the tagged URL
    conns: list[psycopg.Connection] = field(default_factory=list)

    def learner(self, **settings: str) -> psycopg.Connection:
        """A connection for the learner's function: autocommit, search_path exercise05, public, tagged."""
        options = " ".join(f"-c {k}={v}" for k, v in {"search_path": f"{SCHEMA},public", **settings}.items())
        conn = psycopg.connect(with_params(self.url, options=options), autocommit=True)
        self.conns.append(conn)
        return conn

    def call(self, exercise: int, fn: Callable, conn: psycopg.Connection, *args, allowed=(), hint=None):
        return run(exercise, fn, conn, *args, timeout=TIME_LIMIT, tag=self.tag, allowed=allowed, hint=hint)


@contextmanager
def _exercise() -> Iterator[_Exercise]:
    """Fresh tables and a scratch directory, torn down again whatever happens."""
    url = database_url()
    tag = new_tag(5)
    workdir = Path(tempfile.mkdtemp(prefix="exercise05-"))
    try:
        with check_connect(url, autocommit=True) as admin:
            admin.execute("SET lock_timeout = '10s'")  # a session of the learner's own may still hold exercise05
            try:
                admin.execute(TABLES)
            except psycopg.errors.LockNotAvailable:
                raise CheckFailed("Another session holds a lock on the check's schema exercise05, so the check could not"
                                  " set it up.", "close the connections you opened to try your function by hand (or"
                                  " restart the kernel), then run the check again") from None
            ex = None
            try:
                with learner_env(tag, url) as tagged:
                    ex = _Exercise(admin, workdir, tag, tagged)
                    try:
                        yield ex
                    except psycopg.Error as exc:  # the learner's errors are judged where they happen: this is the check's
                        first = _first_line(exc)
                        raise CheckFailed(f"After your function ran, the check could not read its tables in exercise05"
                                          f" ({type(exc).__name__}: {first}).",
                                          "leave the exercise's tables as they are (no DROP or ALTER); the check builds"
                                          " them afresh on every run") from None
            finally:
                for conn in ex.conns if ex else ():
                    conn.close()
                with contextlib.suppress(psycopg.Error):
                    admin.execute("DROP SCHEMA IF EXISTS exercise05 CASCADE")
    finally:  # also when the set-up fails (a lock held on the schema): nothing left in the temp folder
        shutil.rmtree(workdir, ignore_errors=True)


class _Wire:
    """What a connection sent to the server while inside (a libpq trace), where psycopg can trace it
    (Linux). `available` is False elsewhere; the checks then judge by the server's evidence only."""

    def __init__(self, conn: psycopg.Connection):
        self.conn, self.available, self.sent = conn, False, []
        self.rows_received = 0  # DataRow messages: rows of query results sent to Python (COPY data is not rows)

    def __enter__(self) -> _Wire:
        try:
            self._file = tempfile.TemporaryFile()
            self._fd = os.dup(self._file.fileno())
            self.conn.pgconn.trace(self._fd)
            try:
                self.conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)  # one message per line, as parsed below
            except Exception:
                self.conn.pgconn.untrace()
                raise
            self.available = True
        except Exception:  # noqa: BLE001 - e.g. NotSupportedError where psycopg cannot trace (macOS): judge without
            self.available = False
            with contextlib.suppress(Exception):
                self._file.close()
        return self

    def __exit__(self, *exc) -> None:
        if not self.available:
            return
        with contextlib.suppress(Exception):
            self.conn.pgconn.untrace()  # flushes; libpq writes nothing more
        self._file.seek(0)
        for line in self._file.read().decode("ascii", "replace").splitlines():
            parts = line.split("\t", 3)
            if len(parts) == 4 and parts[0] == "F":  # libpq writes a byte it cannot print as \xNN: a space here
                self.sent.append((parts[2], re.sub(r"\\x[0-9a-fA-F]{2}", " ", parts[3])))
            elif len(parts) >= 3 and parts[0] == "B" and parts[2] == "DataRow":
                self.rows_received += 1
        self._file.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def carrying(self, pattern: re.Pattern) -> dict[str, int]:
        """How many messages of each kind (Query, Parse, Bind, CopyData...) carried a value matching pattern."""
        kinds: dict[str, int] = {}
        for kind, text in self.sent:
            if pattern.search(text):
                kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


def _how_values_travelled(wire: _Wire, statements: list[str], pattern: re.Pattern, what: str, rows: int,
                          hint_params: str, hint_many: str) -> CheckFailed | None:
    """A verdict when the file's values reached the server any other way than as COPY data.

    `statements` are the texts of the statements that wrote the target table (recorded by its trigger,
    on every platform); the wire, where available, also sees what went through tables of the learner's own.
    """
    pasted = [q for q in statements if pattern.search(q)]
    carried = wire.carrying(pattern) if wire.available else {}
    traced = bool(carried)  # the values went over this connection, and the trace saw how
    in_sql = carried.get("Query", 0) + carried.get("Parse", 0)
    if pasted or in_sql:
        return CheckFailed(f"The file's {what} reached the server written into the SQL text of"
                           f" {len(pasted) or in_sql} statement(s), not as COPY data.",
                           "never paste values into SQL (no f-strings, no quoting by hand): stream the file into"
                           " COPY ... FROM STDIN and let the server parse it")
    with_params = [q for q in statements if re.search(r"\$[0-9]", q)]
    if carried.get("Bind") or (with_params and not traced):
        n = carried.get("Bind") or len(with_params)
        return CheckFailed(f"The file's {what} reached the server as parameters of {n} statement execution(s)"
                           " (INSERT ... VALUES, executemany or arrays), not as COPY data.", hint_params)
    if len(statements) > max(10, rows // 100):
        return CheckFailed(f"The server received {len(statements)} statements that wrote the table, for {rows:,}"
                           f" {what}: one statement per row, or nearly.", hint_many)
    return None


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message, any password or URL in it masked."""
    return mask((str(exc).strip().splitlines() or [""])[0], secrets_in())


def _hint(exc: BaseException) -> str:
    """The hint for an error no exercise-specific hint explains."""
    if isinstance(exc, psycopg.errors.DuplicateTable):
        return ("a table your function created in its previous call is still there (the check calls it several"
                " times on one connection, and a temporary table lives as long as the connection): create it with"
                " ON COMMIT DROP inside `with conn.transaction():`, or drop it before returning")
    return "run your function on its own in a cell with the same arguments, and read the error"


def _learner_left_transaction(conn: psycopg.Connection, call_text: str) -> CheckFailed | None:
    """A verdict when the learner's function closed conn, or left a transaction open on it."""
    if conn.closed:
        return CheckFailed(f"{call_text} closed the connection it was given; the caller still needs it.",
                           "leave conn open: `with conn:` closes it when the block ends; use `with conn.cursor() as"
                           " cur:` or `with conn.transaction():`, which leave it open")
    status = conn.info.transaction_status
    if status == pq.TransactionStatus.IDLE:
        conn.autocommit = True
        return None
    with contextlib.suppress(psycopg.Error):
        conn.rollback()
    conn.autocommit = True
    return CheckFailed(f"{call_text} returned with a transaction still open on conn, so what it wrote was not"
                       " committed (the check rolled it back).",
                       "write inside `with conn.transaction():`, which commits when the block ends, or leave conn"
                       " in autocommit")


# --- Exercise 1 ----------------------------------------------------------------------------------

LOAD_ROWS = 10_000
SPEED_MARGIN = 8  # a COPY through Python (csv + write_row) runs 2x the check's COPY of the file in blocks on an idle
                  # machine, up to 4.5x on a 2-core machine with 3 CPU hogs; executemany runs 13-28x, multi-row VALUES
                  # with parameters about 11x, row by row 50x (those are caught by how the rows travelled anyway)
SPEED_RUNS = 5  # at most; the first run within the margin ends the measurement
SKU = re.compile(r"\bSKU-[0-9]{6}\b")
HEADER = ("sku", "name", "price", "stock")


def _product_rows(n: int = LOAD_ROWS, seed: int = 5) -> list[tuple]:
    """Products with the awkward values real files have: commas, quotes, accents, a line break, missing prices."""
    rng = random.Random(seed)
    names = ["Mug, large", 'The "best" pen', "Zoë's café blend", "naïve ☕ cup", "Notebook\nruled", "Plain box"]
    return [(f"SKU-{i:06d}", f"{rng.choice(names)} #{i}", None if i % 50 == 0 else Decimal(rng.randrange(100, 99_999)) / 100,
             rng.randrange(0, 500)) for i in range(1, n + 1)]


SMALL_ROWS = [
    ("SKU-900001", "Mug, large", Decimal("4.50"), 10),
    ("SKU-900002", 'The "best" pen', None, 0),  # unknown price: NULL, not 0 and not ''
    ("SKU-900003", "Zoë's café\nblend", Decimal("0.00"), 3),  # a line break inside a name; a price of zero is 0
    ("SKU-900004", "naïve ☕ cup", Decimal("12.00"), 500),
    ("SKU-900005", "Plain box", None, 1),
]


def _write_csv(path: Path, header: tuple, rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(["" if value is None else value for value in row] for row in rows)


def _fingerprint(admin: psycopg.Connection, table: str) -> tuple:
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY sku), '')) FROM {} AS t")
    return admin.execute(query.format(sql.Identifier(SCHEMA, table))).fetchone()


def _copy_file(conn: psycopg.Connection, table: str, path: Path) -> None:
    """The check's own load: COPY the file in blocks (the reference for rows and for speed)."""
    query = sql.SQL("COPY {} (sku, name, price, stock) FROM STDIN (FORMAT csv, HEADER)").format(sql.Identifier(SCHEMA, table))
    with conn.cursor() as cur, open(path, "rb") as source, cur.copy(query) as copy:
        while block := source.read(1 << 16):
            copy.write(block)


def _load_hint(exc: BaseException) -> str:
    text = str(exc)
    if any(f'"{word}"' in text for word in HEADER):
        return "the file's first line is its header: COPY ... (FORMAT csv, HEADER) skips it"
    if isinstance(exc, psycopg.errors.BadCopyFileFormat) or "unterminated CSV" in text or "extra data" in text:
        return "let the server parse the file as CSV (FORMAT csv): quoted fields may hold commas, quotes and line breaks"
    if isinstance(exc, psycopg.errors.InvalidTextRepresentation) and "numeric" in text:
        return "an empty price is unknown: it must arrive as NULL (COPY's CSV format makes an empty unquoted field NULL)"
    return _hint(exc)


def load_csv(fn) -> None:
    """Exercise 1: fn(conn, path) loads the CSV into products_import with COPY and returns the row count."""
    with _exercise() as ex:
        conn, admin = ex.learner(), ex.admin
        files = [("small.csv", SMALL_ROWS), ("empty.csv", []), ("products.csv", _product_rows())]
        for name, rows in files:
            path = ex.workdir / name
            _write_csv(path, HEADER, rows)
            admin.execute("TRUNCATE exercise05.products_import, exercise05.baseline, exercise05.statements")
            _copy_file(admin, "baseline", path)
            call_text = f"{getattr(fn, '__name__', 'your function')}(conn, {str(path)!r})"
            with _Wire(conn) as wire:
                try:
                    returned = ex.call(1, fn, conn, str(path), allowed=(psycopg.Error,))
                except psycopg.Error as exc:
                    first = _first_line(exc)
                    raise CheckFailed(f"{call_text} raised {type(exc).__name__}: {first}", _load_hint(exc)) from None
            if left := _learner_left_transaction(conn, call_text):
                raise left
            statements = [q for (q,) in admin.execute("SELECT query FROM exercise05.statements")]
            verdict = _how_values_travelled(
                wire, statements, SKU, "rows", len(rows),
                "load with one COPY: cur.copy(\"COPY products_import ... FROM STDIN (FORMAT csv, HEADER)\") and"
                " write the file into it",
                "open one COPY for the whole file and write the file into it in blocks")
            if verdict:
                raise verdict
            got, want = _fingerprint(admin, "products_import"), _fingerprint(admin, "baseline")
            if got[0] != want[0]:
                raise CheckFailed(f"After {call_text}, products_import holds {got[0]:,} rows; the file has {want[0]:,}"
                                  " products (one per CSV record; a quoted name may span two lines).",
                                  "COPY ... FROM STDIN (FORMAT csv, HEADER) reads the header as a header and every"
                                  " record as one row")
            if got != want:
                sample = admin.execute(
                    "SELECT p.sku, p.name, p.price, b.name, b.price FROM exercise05.products_import p"
                    " FULL JOIN exercise05.baseline b USING (sku) WHERE (p.name, p.price, p.stock) IS DISTINCT FROM"
                    " (b.name, b.price, b.stock) ORDER BY sku LIMIT 1").fetchone()
                raise CheckFailed(f"After {call_text}, the rows differ from the file: {sample[0]} was loaded as"
                                  f" (name {sample[1]!r}, price {sample[2]}) instead of ({sample[3]!r}, {sample[4]}).",
                                  "let the server parse the CSV (FORMAT csv): an empty unquoted field is NULL, and"
                                  " quoted fields may hold commas, quotes and line breaks")
            if type(returned) is not int or returned != len(rows):
                raise CheckFailed(f"{call_text} returned {returned!r}; it loaded {len(rows):,} rows.",
                                  "return the number of rows COPY loaded: cur.rowcount after the copy block, read"
                                  " inside the cursor's block (a closed cursor reports -1); a file's lines are not"
                                  " its rows when a name holds a line break")
        _judge_speed(ex, fn, conn, path, call_text)


def _judge_speed(ex: _Exercise, fn, conn: psycopg.Connection, path: Path, call_text: str) -> None:
    """Best of up to SPEED_RUNS runs each, the check's COPY and the learner's load taking turns."""
    admin = ex.admin
    reference, learner = float("inf"), float("inf")
    for _ in range(SPEED_RUNS):
        admin.execute("TRUNCATE exercise05.baseline")
        started = time.perf_counter()
        _copy_file(admin, "baseline", path)
        reference = min(reference, time.perf_counter() - started)
        admin.execute("TRUNCATE exercise05.products_import")
        started = time.perf_counter()
        ex.call(1, fn, conn, str(path))
        learner = min(learner, time.perf_counter() - started)
        if learner <= reference * SPEED_MARGIN:
            break
    if learner > reference * SPEED_MARGIN:
        raise CheckFailed(f"{call_text} took {learner:.2f} s at best ({SPEED_RUNS} runs); the check's own COPY of"
                          f" the same file took {reference:.3f} s at best: yours is {learner / reference:.0f}× slower,"
                          f" and the check allows {SPEED_MARGIN}×.",
                          "stream the file with copy.write() in blocks, inside one COPY, and let the server parse it")
    passed(1, f"three files ({LOAD_ROWS:,}, {len(SMALL_ROWS)} and 0 rows) loaded right by COPY; {LOAD_ROWS:,} rows in"
              f" {learner * 1000:.0f} ms, {learner / reference:.1f}× the check's own COPY (allowed: {SPEED_MARGIN}×)")


# --- Exercise 2 ----------------------------------------------------------------------------------

PRICE_ROWS = 100
PRICE_SKU = re.compile(r"\bP[0-9]{4}\b")


def _initial_prices() -> dict[str, tuple[str, Decimal]]:
    rng = random.Random(17)
    return {f"P{i:04d}": (f"item {i}", Decimal(rng.randrange(100, 9_999)) / 100) for i in range(1, PRICE_ROWS + 1)}


def _price_files() -> list[tuple[str, list[tuple[str, str, str, bool]]]]:
    """Import files: (name, [(sku, name, price text, valid)]), whose right answers differ."""
    rng = random.Random(23)

    def price() -> str:
        return f"{rng.randrange(100, 9_999) / 100:.2f}"

    first: list[tuple[str, str, str, bool]] = []
    first += [(f"P{i:04d}", f"item {i} (new)", price(), True) for i in range(1, 31)]  # updates
    first += [(f"P{i:04d}", f"item {i}", price(), True) for i in range(PRICE_ROWS + 1, PRICE_ROWS + 31)]  # new
    bad = [("P0031", "item 31", "n/a"), ("P0032", "item 32", "-1.00"), ("P0033", "item 33", ""),
           ("P0034", "item 34", "1,50"), ("", "no sku", "2.00"), ("P0035", "item 35", "0"),
           ("P0036", "item 36", "0.00"), ("P0037", "item 37", "12.505"), ("P0038", "item 38", "1e3"),
           ("P0039", "item 39", " 12.50 "), ("P0040", "item 40", "123456789.50"), ("P0041", "item 41", "12345678901.5"),
           ("P0042", "", "5.00"), ("P0043", "item 43", "+5.00"), ("P0131", "new but wrong", "abc")]
    good = [("P0044", "item 44 (largest price)", "99999999.99"), ("P0045", "item 45 (smallest)", "0.01"),
            ("P0046", "item 46", "7"), ("P0047", "item 47", "7.5")]
    for position, row in zip(range(3, 3 + 4 * len(bad), 4), bad, strict=False):
        first.insert(position, (*row, False))
    for position, row in zip(range(5, 5 + 9 * len(good), 9), good, strict=False):
        first.insert(position, (*row, True))
    first += [("P0002", "item 2 (last line wins)", "12.34", True),
              ("P0003", "item 3 (invalid last line)", "-5", False),  # the last *valid* line for P0003 wins
              ("P0132", "new, first line", "1.00", True), ("P0132", "new, last line", "2.00", True)]

    second = [(f"P{i:04d}", f"item {i} (second import)", price(), True) for i in range(50, 71)]
    second += [(f"P{i:04d}", f"item {i}, \"quoted\"", price(), True) for i in range(201, 211)]
    second += [("P0060", "item 60 (last line wins)", "60.60", True)]

    third = [("P0070", "item 70", "free", False), ("", "", "", False), ("P0301", "item 301", "-0.01", False),
             (QUOTED_EMPTY, "a quoted empty sku", "3.00", False), ("P0302", QUOTED_EMPTY, "3.00", False)]
    # appended, so that the lines above keep their numbers: leading zeros are digits; a point needs a digit on
    # each side; [0-9] only (Python's \d also takes other scripts' digits); nothing after the price, not even a
    # line break (Python's `$` matches before a final newline). The line break is the file's last record, so
    # numbering records and numbering a text editor's lines agree on every line.
    third += [("P0303", "item 303 (leading zeros)", "000000012.50", True), ("P0304", "item 304", "7.", False),
              ("P0305", "item 305", ".5", False), ("P0306", "item 306", "\uff11\uff12.50", False),
              ("P0307", "item 307", "12.50\n", False)]
    return [("prices-1.csv", first), ("prices-2.csv", second), ("prices-3.csv", third)]


QUOTED_EMPTY = "@@quoted-empty@@"
"""Written to the file as `""`: COPY reads it as an empty string, not NULL, so `IS NOT NULL` does not catch it."""


def _expected(lines: list[tuple[str, str, str, bool]]) -> tuple[dict[str, tuple[str, Decimal]], list[int]]:
    final = _initial_prices()
    for sku, name, price, ok in lines:
        if ok:
            final[sku] = (name, Decimal(price))
    rejected = [number for number, line in enumerate(lines, start=2) if not line[3]]  # line 1 is the header
    return final, rejected


def _reset_prices(admin: psycopg.Connection) -> None:
    with admin.transaction():
        admin.execute("TRUNCATE exercise05.prices")
        with admin.cursor() as cur, cur.copy("COPY exercise05.prices (sku, name, price) FROM STDIN") as copy:
            for sku, (name, price) in _initial_prices().items():
                copy.write_row((sku, name, price))
        admin.execute("TRUNCATE exercise05.statements")


def _left_behind(admin: psycopg.Connection, conn: psycopg.Connection) -> list[str]:
    tables = [f"{s}.{n}" for s, n in admin.execute(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('exercise05', 'public')"
        " UNION ALL SELECT schemaname, viewname FROM pg_views WHERE schemaname IN ('exercise05', 'public')")]
    try:
        temp = [f"temporary {n}" for (n,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relkind IN ('r', 'v', 'm', 'p')"
            " ORDER BY relname")]
    except psycopg.Error:
        temp = []
    return sorted(tables) + temp


def _product(row: tuple[str, Decimal] | None) -> str:
    return "missing" if row is None else f"({row[0]!r}, {row[1]})"


PRICE_FORMAT = re.compile(r"[0-9]+([.][0-9]{1,2})?")  # the task's rule for how a price is written


def _trap(line: tuple[str, str, str, bool]) -> tuple[str, str] | None:
    """(kind, what) for an invalid line that a cast lets through yet prices refuses; None for any other line.

    Two kinds: "range", a price written right but too large for numeric(10,2) (a cast to plain numeric, or
    through regtype, which drops the (10,2), accepts it); "null", an empty required field (COPY's CSV format
    reads an unquoted empty field as NULL, a NULL passes every cast, and `x <> ''` is then NULL).
    """
    sku, name, price, ok = line
    if ok:
        return None
    empty = [field for field, value in (("sku", sku), ("name", name), ("price", price)) if value == ""]
    if empty:
        return "null", ", ".join(empty[:-1]) + " and " + empty[-1] if len(empty) > 1 else empty[0]
    if PRICE_FORMAT.fullmatch(price) and Decimal(price) >= 100_000_000:
        return "range", repr(price)
    if PRICE_FORMAT.fullmatch(price) and Decimal(price) == 0:
        return "zero", repr(price)
    return None


def _lines(numbers: list[int]) -> str:
    return (f"line {numbers[0]}" if len(numbers) == 1 else
            f"lines {', '.join(map(str, numbers[:-1]))} and {numbers[-1]}")


def _traps(lines: list[tuple[str, str, str, bool]], numbers: list[int] | None = None,
           kinds: tuple[str, ...] = ("range", "null")) -> str:
    """The lines (all, or those numbered) that look valid to a cast yet prices refuses, grouped by kind, each
    kind with what to do; '' when there are none."""
    found: dict[str, list[tuple[int, str]]] = {"range": [], "null": [], "zero": []}
    for n, line in enumerate(lines, start=2):
        if (numbers is None or n in numbers) and (trap := _trap(line)) and trap[0] in kinds:
            found[trap[0]].append((n, trap[1]))
    parts = []
    if found["range"]:
        ns, prices = [n for n, _ in found["range"]], [p for _, p in found["range"]]
        parts.append(f"{_lines(ns)} {'holds a price' if len(ns) == 1 else 'hold prices'} too large for numeric(10,2)"
                     f" ({', '.join(prices)}), which a cast to plain numeric, or through a regtype (it drops the"
                     " (10,2)), accepts: test the range yourself (below 100,000,000)")
    if found["zero"]:
        ns, prices = [n for n, _ in found["zero"]], [p for _, p in found["zero"]]
        parts.append(f"{_lines(ns)} {'holds a price' if len(ns) == 1 else 'hold prices'} of zero ({', '.join(prices)}),"
                     " written right and castable, but the task (and prices' CHECK) wants a price above 0: test"
                     " price::numeric > 0 too")
    if found["null"]:
        empty = [f"line {n} ({fields})" for n, fields in found["null"]]
        field = found["null"][0][1].split(",")[0].split(" ")[0]  # the first line's first empty field, as an example
        parts.append(f"{', '.join(empty[:-1]) + ' and ' + empty[-1] if len(empty) > 1 else empty[0]}"
                     f" {'has an empty field' if len(empty) == 1 else 'have empty fields'}, which COPY reads as NULL: a"
                     f" NULL passes any cast, and a test such as `{field} <> ''` is then NULL, neither true nor false (the"
                     f" line is neither moved nor reported): reject it explicitly, e.g. coalesce({field}, '') <> ''")
    return "; ".join(parts)


def _shown(value: str) -> str:
    """A field of the file as the learner sees it: the quoted empty field written `""`, not the marker."""
    return '""' if value == QUOTED_EMPTY else repr(value)


def _upsert_hint(exc: BaseException) -> str:
    if isinstance(exc, psycopg.errors.CardinalityViolation):
        return ("a sku that appears on several lines must reach ON CONFLICT once: keep its last valid line"
                " (DISTINCT ON (sku) ... ORDER BY sku, line DESC)")
    if isinstance(exc, psycopg.errors.NumericValueOutOfRange):
        return "a price must also fit the column numeric(10,2), below 100,000,000: reject the line before any cast"
    if isinstance(exc, psycopg.errors.CheckViolation) and "price" in str(exc):
        return "a price must be above 0 (the task's rule, and prices' CHECK): reject 0 and 0.00 before the INSERT"
    if isinstance(exc, psycopg.errors.InvalidTextRepresentation) and not str(exc).isascii():
        return ("a price is written with the digits 0 to 9 only: \\d (Python's, and a PostgreSQL regex's under some"
                " collations) and str.isdigit also match other scripts' digits, which the server does not"
                " read as numbers; write [0-9]")
    if isinstance(exc, (psycopg.errors.InvalidTextRepresentation, psycopg.errors.NotNullViolation,
                        psycopg.errors.CheckViolation)):
        return ("stage the raw lines as text, decide which are valid before casting anything, and move only those"
                " (a cast of a bad line fails the whole statement)")
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return ("if your function created that table ON COMMIT DROP: in autocommit every statement is a transaction"
                " of its own, so the table is dropped as soon as its CREATE ends; do the whole import inside"
                " `with conn.transaction():`")
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return ("COPY only inserts: load into a staging table, then INSERT ... SELECT ... ON CONFLICT (sku) DO UPDATE"
                " updates the products that exist")
    return _hint(exc)


def _first(numbers: list[int], n: int = 5) -> str:
    """The first n numbers, and how many more there are."""
    more = f" and {len(numbers) - n} more" if len(numbers) > n else ""
    return f"[{', '.join(map(str, numbers[:n]))}]{more}"


LINES_HINT = ("number the file's records as lines, the header being line 1 and the first product line 2, and apply"
              " every rule of the task: a price is the digits 0 to 9, optionally a point and one or two digits (a"
              " digit on each side of the point, nothing before or after), above 0 and below 100,000,000; sku and"
              " name must not be empty")


def _why(price: str) -> str:
    """What makes a price the task's rule decides, yet a common test gets wrong; '' for any other price."""
    if price.endswith("\n"):
        return (" (a line break after the price: Python's `$` also matches just before a final line break, so"
                " re.match(r'^...$') takes it; use re.fullmatch, and [0-9])")
    if not price.isascii():
        return " (digits of another script: \\d may take them, in Python always, in SQL under some collations; [0-9] does not)"
    if re.fullmatch(r"[0-9]+[.]|[.][0-9]+", price):
        return " (a point needs a digit on each side)"
    if re.fullmatch(r"0+[1-9][0-9]*([.][0-9]{1,2})?", price) and Decimal(price) < 100_000_000:
        return " (leading zeros are digits too: the price is valid however many digits it is written with)"
    return ""


def _wrong_lines(call_text: str, returned: list[int], rejected: list[int], lines: list[tuple[str, str, str, bool]],
                 statements: list[str]) -> CheckFailed:
    """The verdict when the returned line numbers are not the invalid lines: what differs, in the learner's terms."""
    said = f"{call_text} returned {returned} as the rejected lines; they are {rejected}"
    for shift in (-1, 1):
        if returned and [n - shift for n in returned] == rejected:
            return CheckFailed(f"{said}: every number you returned is one {'less' if shift < 0 else 'more'} than the"
                               " right one, so your lines are off by one.",
                               "the header is line 1, so the first product is line 2: with a staging column"
                               " GENERATED ALWAYS AS IDENTITY (1 for the first product) report line + 1")
    if not returned and not statements and rejected:
        return CheckFailed(f"{said}, and prices was not changed: nothing wrote it. Did your function catch an"
                           " exception and hide it?",
                           "let errors propagate (no bare `except:` or `except Exception:` returning []): the"
                           " check tells you what the error means")
    missed, extra = sorted(set(rejected) - set(returned)), sorted(set(returned) - set(rejected))
    # every missed line a cast lets through is named with what to do; else the first line that differs
    others = [n for n in missed + extra if 2 <= n < len(lines) + 2 and not (n in missed and _trap(lines[n - 2]))]
    detail = "; ".join([*(f"line {n} is sku {_shown(s)}, name {_shown(nm)}, price {_shown(p)}{_why(p)}"
                          for n in others[:1] for s, nm, p, _ in [lines[n - 2]]),
                        *filter(None, [_traps(lines, missed, kinds=("range", "null", "zero"))])])
    return CheckFailed(said + (f" (missing {_first(missed)})" if missed else "")
                       + (f" (valid, yet reported: {_first(extra)})" if extra else "")
                       + (f". {detail[0].upper()}{detail[1:]}." if detail else "."), LINES_HINT)


def upsert_prices(fn) -> None:
    """Exercise 2: fn(conn, path) upserts the valid lines into prices and returns the rejected line numbers."""
    with _exercise() as ex:
        conn, admin = ex.learner(), ex.admin
        before = _left_behind(admin, conn)
        totals = [0, 0]
        for name, lines in _price_files():
            path = ex.workdir / name
            text = io.StringIO(newline="")
            writer = csv.writer(text)
            writer.writerow(("sku", "name", "price"))
            writer.writerows(line[:3] for line in lines)
            path.write_text(text.getvalue().replace(QUOTED_EMPTY, '""'), encoding="utf-8", newline="")
            final, rejected = _expected(lines)
            _reset_prices(admin)
            call_text = f"{getattr(fn, '__name__', 'your function')}(conn, {str(path)!r})"
            with _Wire(conn) as wire:
                try:
                    returned = ex.call(2, fn, conn, str(path), allowed=(psycopg.Error,))
                except psycopg.Error as exc:
                    first = _first_line(exc)
                    traps = (_traps(lines, kinds=("zero",)) if isinstance(exc, psycopg.errors.CheckViolation)
                             else _traps(lines) if isinstance(exc, (psycopg.errors.NumericValueOutOfRange,
                                                                     psycopg.errors.NotNullViolation)) else "")
                    raise CheckFailed(f"{call_text} raised {type(exc).__name__}: {first}"
                                      + (f". Lines of this file that a cast lets through but the task (and prices)"
                                         f" refuses: {traps}."
                                         if traps else ""),
                                      _upsert_hint(exc)) from None
            if left := _learner_left_transaction(conn, call_text):
                raise left
            recorded = admin.execute("SELECT op, query FROM exercise05.statements").fetchall()
            removed = sorted({op for op, _ in recorded if op in ("DELETE", "TRUNCATE")})
            if removed:
                raise CheckFailed(f"{call_text} removed rows from prices ({' and '.join(removed)}), then wrote them"
                                  " again: an upsert leaves alone the products the file does not name.",
                                  "insert and update in place from the staging table: INSERT ... SELECT ... ON CONFLICT"
                                  " (sku) DO UPDATE SET ...")
            statements = [q for op, q in recorded if op in ("INSERT", "UPDATE")]
            verdict = _how_values_travelled(
                wire, statements, PRICE_SKU, "lines", len(lines),
                "COPY the file into a staging table, then move the valid lines with one INSERT ... SELECT ... ON CONFLICT",
                "move all the valid lines from the staging table with one INSERT ... SELECT ... ON CONFLICT")
            if verdict:
                raise verdict
            if not isinstance(returned, (list, tuple)) or not all(type(n) is int for n in returned):
                raise CheckFailed(f"{call_text} returned {returned!r}; it should return the rejected line numbers as a"
                                  " list of int" + (" (an empty list when every line is valid)." if not rejected else "."),
                                  "collect the line numbers into a list, e.g. [line for (line,) in cur.execute(...)]")
            if sorted(returned) != rejected:
                raise _wrong_lines(call_text, sorted(returned), rejected, lines, statements)
            got = {sku: (nm, price) for sku, nm, price in admin.execute("SELECT * FROM exercise05.prices ORDER BY sku")}
            wrong = [sku for sku in sorted(set(final) | set(got)) if got.get(sku) != final.get(sku)]
            if wrong:
                sku = wrong[0]
                raise CheckFailed(f"After {call_text}, {sku} is {_product(got.get(sku))}; it should be"
                                  f" {_product(final.get(sku)) if sku in final else 'absent (only an invalid line names it)'}"
                                  f" ({len(wrong)} product(s) differ).",
                                  "insert new skus and update existing ones (ON CONFLICT (sku) DO UPDATE SET name ="
                                  " EXCLUDED.name, price = EXCLUDED.price); when a sku appears on several lines, its"
                                  " last valid line wins")
            after = _left_behind(admin, conn)
            if after != before:
                raise CheckFailed(f"{call_text} left {', '.join(sorted(set(after) - set(before)))} behind.",
                                  "create the staging table as TEMP ... ON COMMIT DROP inside `with conn.transaction():`,"
                                  " or drop it (and any view on it) before returning")
            totals[0] += len(set(final) - set(_initial_prices()))
            totals[1] += len(rejected)
        passed(2, f"three imports upserted right ({totals[0]} new products, last valid line wins), {totals[1]} invalid"
                  " lines reported, nothing left behind")


# --- Exercise 3 ----------------------------------------------------------------------------------

EXPORT_QUERY = ("COPY (SELECT id, customer_id, status, created_at FROM exercise05.orders WHERE status = %s ORDER BY id)"
                " TO STDOUT (FORMAT csv, HEADER)")
TRICKY_STATUS = "on hold \\ 'ask Bob'"  # a backslash and quotes; orders with it exist in the check's copy
INJECTION = "paid' OR ''='"  # no order has it


def _orders_copy(admin: psycopg.Connection) -> None:
    """exercise05.orders: the course's orders plus a few with TRICKY_STATUS, stored out of id order."""
    admin.execute("CREATE TABLE exercise05.orders AS SELECT id, customer_id, status, created_at FROM public.orders")
    admin.execute("INSERT INTO exercise05.orders SELECT m.top + 4 - g, o.customer_id, %s, o.created_at"
                  " FROM (SELECT max(id) AS top FROM public.orders) AS m, generate_series(1, 3) AS g"
                  " JOIN LATERAL (SELECT * FROM public.orders ORDER BY id LIMIT 1 OFFSET g) AS o ON true",
                  (TRICKY_STATUS,))
    disorder(admin, "orders", key="id", where="status IN ('shipped', 'cancelled')")


def _reference_export(admin: psycopg.Connection, status: str) -> bytes:
    with admin.cursor() as cur, cur.copy(EXPORT_QUERY, (status,)) as copy:
        return b"".join(copy)


def _export_difference(status: str, got: bytes, want: bytes) -> tuple[str, str]:
    """What differs between the learner's file and COPY's, in the learner's terms, and one hint."""
    mine, theirs = got.splitlines(), want.splitlines()
    first = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs)))
    seen = mine[first].decode("utf-8", "replace") if first < len(mine) else "(end of file)"
    expected = theirs[first].decode("utf-8", "replace") if first < len(theirs) else "(end of file)"
    observed = (f"For status {status!r}, line {first + 1} of your file is {seen!r}; COPY writes {expected!r}"
                f" ({len(mine)} lines against {len(theirs)}).")
    if theirs and mine and mine[0] != theirs[0] and mine[0] == (theirs[1] if len(theirs) > 1 else None):
        return observed, "the first line must be the header: add HEADER to COPY's options"
    if sorted(mine) == sorted(theirs):
        return (observed + " The same lines, in another order.",
                "order the rows in the COPY's query (ORDER BY id): without it they come in the order the table"
                " happens to store them")
    if first < len(mine) and first < len(theirs) and mine[first].split(b",")[:3] == theirs[first].split(b",")[:3]:
        return (observed + " Only created_at is written differently.",
                "write the bytes COPY ... TO STDOUT (FORMAT csv) sends, as they come: Python's csv module formats"
                " timestamps differently from PostgreSQL")
    return observed, ("let the server write the CSV: COPY (SELECT ... WHERE status = %s ORDER BY id) TO STDOUT"
                      " (FORMAT csv, HEADER), and write each block it yields to the file")


def export_orders(fn) -> None:
    """Exercise 3: fn(conn, path, status) writes the orders with that status as CSV and returns how many."""
    with _exercise() as ex:
        admin = ex.admin
        _orders_copy(admin)
        standard, escaping = ex.learner(), ex.learner()
        try:
            escaping.execute("SET standard_conforming_strings = off")
        except psycopg.Error:  # a server that no longer allows it: judge with the standard setting only
            escaping = standard
        quoted = {TRICKY_STATUS, INJECTION}
        calls = [("shipped", standard), ("returned", escaping), (INJECTION, standard), (TRICKY_STATUS, escaping),
                 (TRICKY_STATUS, standard), ("cancelled", escaping)]
        for number, (status, conn) in enumerate(calls, start=1):
            path = ex.workdir / f"orders-{number}.csv"
            call_text = f"{getattr(fn, '__name__', 'your function')}(conn, {str(path)!r}, {status!r})"
            want = _reference_export(admin, status)
            rows = want.count(b"\n") - 1

            def pasted(what: str, status: str = status, rows: int = rows) -> CheckFailed:
                return CheckFailed(
                    f"For status {status!r} (it has {rows} order(s)), {what}: the status was pasted into the SQL"
                    " text, where its quote or backslash changed the query.",
                    "let psycopg quote it: pass it as a parameter, cur.copy(query, (status,)), or compose it with"
                    " sql.Literal(status); never build the quotes yourself (on a connection where"
                    " standard_conforming_strings is off, a backslash escapes a quote)")
            hint = ("any text is a status to look for, and a status no order has is no error: your file then holds"
                    " the header line only, and you return 0") if status in quoted or rows == 0 else None
            with _Wire(conn) as wire:
                try:
                    returned = ex.call(3, fn, conn, str(path), status, allowed=(psycopg.Error,), hint=hint)
                except psycopg.Error as exc:
                    first = _first_line(exc)
                    if status in quoted:
                        raise pasted(f"your function raised {type(exc).__name__}: {first}") from None
                    raise CheckFailed(f"{call_text} raised {type(exc).__name__}: {first}", _hint(exc)) from None
            if wire.rows_received > rows + 10:
                raise CheckFailed(f"{call_text} had the server send {wire.rows_received:,} rows to Python for a file"
                                  f" of {rows:,} order(s): the rows were chosen (or written) in Python.",
                                  "let the server choose and format the rows: COPY (SELECT ... WHERE status = ..."
                                  " ORDER BY id) TO STDOUT, and write the blocks it yields")
            if left := _learner_left_transaction(conn, call_text):
                raise left
            if not path.exists():
                raise CheckFailed(f"{call_text} wrote no file" + (" (no order has that status: the file should hold"
                                                                  " the header line only)." if rows == 0 else "."),
                                  "open the path for writing in binary mode and write every block the copy yields")
            got = path.read_bytes()
            if got != want:
                if status in quoted:
                    n = max(len(got.splitlines()) - 1, 0)
                    raise pasted(f"your file holds {n} line(s) after the header")
                raise CheckFailed(*_export_difference(status, got, want))
            if type(returned) is not int or returned != rows:
                raise CheckFailed(f"{call_text} returned {returned!r}; the file has {rows} data row(s)"
                                  " (the header is not a row).",
                                  "return the number of rows COPY wrote: cur.rowcount after the copy block, read"
                                  " inside the cursor's block")
        passed(3, "six exports match what COPY writes, byte for byte, in id order; quotes and backslashes in a"
                  " status are just characters")

