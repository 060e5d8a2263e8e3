"""Checks for lesson 06 (cursors and streaming): stream a large table in bounded memory, keyset pages.

The streaming checks (exercises 1 and 3) run the learner's function in a fresh Python process (its
source is shipped there with inspect.getsource, and run: never read) and measure that process's peak
resident memory, which, unlike tracemalloc, sees libpq's buffers. Around it they judge:

- a time limit on the child process (and on its pace: a function on course to take many minutes is
  stopped early); the learner's sessions, tagged with an application_name, are cancelled then;
- what the child printed or logged (any level): a secret in it fails the check; SystemExit, anything
  raised, and a process that ended itself get a verdict in the check's voice;
- physical order: the rows with the smallest ids are moved (an UPDATE that changes no value,
  committed once) to the end of `events`, so that a query without ORDER BY hands them over last;
- every row handle() receives: its shape (a row of four values), count, order and values;
- the server's own evidence of hidden cost while the function ran: temporary files (a cursor WITH
  HOLD materialises its whole result when its transaction commits) and the buffers read (OFFSET
  paging reads the skipped rows again for every page), both against the size of the table.

The paging check (exercise 2) calls the function in this process (`run`: time limit, captured output,
verdicts), on a table whose physical order follows neither the key nor id, with several page sizes
(0 included); it reads the statements the function sent (a libpq trace: a value written into the SQL
text fails) and counts the buffers a page costs against the reference keyset query in the same check.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from . import (
    CheckFailed,
    Trace,
    check_connect,
    database_url,
    learner_env,
    mask,
    new_tag,
    not_done,
    passed,
    run,
    secrets_in,
    stop_sessions,
    wait_for_sessions_to_end,
    with_params,
)

MEMORY_BOUND_MB = 64  # what a streamed answer may add; the events table as Python objects takes about 1 GB
KILL_MB = 400  # the child stops itself here, so that a fetchall answer does not take the machine's memory
STREAM_TIME_LIMIT = 120.0  # seconds; a streamed answer takes about ten (forty on a machine busy with other work)
PACE_AFTER = 20.0  # from then on, a child whose pace projects more than PACE_LIMIT seconds is stopped early
PACE_LIMIT = 480.0
TRIPS_PER_ROW = 0.1  # more round trips than one per 10 rows, on average, is one query or fetch per few rows
TEMP_MB = 32  # temporary files a streamed answer may make the server write (it needs none; WITH HOLD writes ~120 MB)
BUFFER_MARGIN = 4  # times the pages of events and its index: a streamed answer reads 1.6 to 2.1 times them
MOVED = 1000  # the rows with ids 1..MOVED sit physically at the end of events
REFERENCE = ("SELECT count(*), sum(id), sum(customer_id), sum((payload->>'ms')::int), min(id), max(id),"
             " (SELECT json_object_agg(kind, n) FROM (SELECT kind, count(*) AS n FROM events GROUP BY kind) k)"
             " FROM events")
STATS = ("SELECT temp_bytes, blks_hit + blks_read FROM pg_stat_database WHERE datname = current_database()")

CHILD = r'''
import asyncio, json, logging, os, sys, threading, time
from collections.abc import Callable
import asyncpg, psutil, psycopg

# A sequential scan may join another scan of the table midway (synchronize_seqscans), or start where an
# earlier scan stopped; off, an answer without ORDER BY meets the rows in their physical order every time.
SCAN_FROM_THE_START = "SET synchronize_seqscans = off"
_REPORT, _PROGRESS, _LOG, _KILL_MB = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
_seen = {"rows": 0, "sum_id": 0, "customers": 0, "ms": 0, "kinds": {}, "first": None, "last": None,
         "disorder": None, "shape": None}


def _write(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def _peak_mb():
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def _baseline_mb():
    try:  # Linux: reset the high-water mark, so that imports and connecting do not count
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    return _peak_mb()


def _watch():
    process = psutil.Process()
    start = process.memory_info().rss
    def loop():
        written = 0.0
        while True:
            grown = (process.memory_info().rss - start) / 2**20
            if grown > _KILL_MB:
                _write(_REPORT, {"killed_mb": grown})
                os._exit(3)
            if time.monotonic() - written > 0.5:
                _write(_PROGRESS, {"rows": _seen["rows"]})
                written = time.monotonic()
            time.sleep(0.02)
    threading.Thread(target=loop, daemon=True).start()


def _shape(row):
    text = repr(row)
    return f"{type(row).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def handle(row):
    try:
        if isinstance(row, (dict, str, bytes)) or len(row) != 4:
            raise TypeError
        event_id, customer_id, kind, payload = row
        payload = json.loads(payload) if isinstance(payload, (str, bytes)) else payload
        ms = payload["ms"]
        if not isinstance(event_id, int) or not isinstance(customer_id, int) or not isinstance(kind, str):
            raise TypeError
    except Exception:
        if _seen["shape"] is None:
            _seen["shape"] = _shape(row)
        return
    if _seen["last"] is not None and event_id <= _seen["last"] and _seen["disorder"] is None:
        _seen["disorder"] = [_seen["rows"], _seen["last"], event_id]
    if _seen["first"] is None:
        _seen["first"] = event_id
    _seen["last"] = event_id
    _seen["rows"] += 1
    _seen["sum_id"] += event_id
    _seen["customers"] += customer_id
    _seen["ms"] += ms
    _seen["kinds"][kind] = _seen["kinds"].get(kind, 0) + 1


class _LogFile(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.file = open(_LOG, "a")
    def emit(self, record):
        try:
            self.file.write(f"{record.name} {record.levelname} {record.getMessage()}\n")
            self.file.flush()
        except Exception:
            pass


def _capture_logging():
    root = logging.getLogger()
    root.addHandler(_LogFile())
    root.setLevel(logging.DEBUG)
    logging.disable(logging.NOTSET)


def _describe(exc):
    if isinstance(exc, SystemExit):
        return ["SystemExit", repr(exc.code)]
    text = str(exc).strip()
    return [type(exc).__name__, text.splitlines()[0] if text else ""]


def _finish(error, baseline):
    _write(_REPORT, {**_seen, "error": error, "growth_mb": _peak_mb() - baseline})
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)
'''

SYNC_BODY = """
_conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
_conn.execute(SCAN_FROM_THE_START)
_capture_logging()
_baseline = _baseline_mb()
_watch()
try:
    {name}(_conn, handle)
    _error = None
except BaseException as _exc:
    _error = _describe(_exc)
_finish(_error, _baseline)
"""

ASYNC_BODY = """
async def _main():
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    await conn.execute(SCAN_FROM_THE_START)
    _capture_logging()
    baseline = _baseline_mb()
    _watch()
    try:
        await {name}(conn, handle)
        error = None
    except BaseException as exc:
        error = _describe(exc)
    _finish(error, baseline)
try:
    asyncio.run(_main())
except BaseException as _exc:
    _finish(_describe(_exc), _baseline_mb())
"""

FRESH_PROCESS_HINT = ("the check runs your function in a new Python process: import what it needs inside the"
                      " function, and use no other notebook variables")


def _echo(text: str, stream, secrets: list[str], limit: int = 40) -> None:
    """Show the learner what their function printed (secrets masked, at most `limit` lines)."""
    lines = mask(text, secrets).splitlines()
    if lines:
        shown = lines[:limit] + ([f"... ({len(lines) - limit:,} more lines)"] if len(lines) > limit else [])
        stream.write("\n".join(shown) + "\n")


def _read(path: str, limit: int = 20_000_000) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")
    return ""


class RoundTrips:
    """A TCP forwarder between the learner's function and the server that counts round trips: each time
    the client speaks after the server has, one more. A cursor that fetches one row per trip makes one
    per row; a stream, COPY, or fetches of thousands make one per batch. Counting them tells the two
    apart on any machine, however fast its round trips (a fast one streams a million one-row fetches in
    under a minute, so their time alone cannot)."""

    def __init__(self, url: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        from ..netlab import _route

        self.url, self._closing, self._thread = url, False, None
        self._counts: list[list[int]] = []  # per link, written by its client-side pump alone: no lost count
        params = conninfo_to_dict(url)
        host, port = params.get("host") or "localhost", params.get("port") or "5432"
        # Counted where the URL names one TCP host in its authority and the server's certificate is not
        # checked against that name; elsewhere (a socket path, several hosts, verify-full) the time
        # limits alone judge, as before.
        if ("://" not in url or "host=" in url.partition("?")[2] or "," in host + port or host.startswith("/")
                or params.get("sslmode") == "verify-full"):
            return
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = _route(url, "127.0.0.1", self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="pgcourse round trips", daemon=True)

    def __enter__(self) -> RoundTrips:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._closing = True
            self._thread.join(5)
            self._listener.close()

    def _serve(self) -> None:
        """Accept clients; each gets two pumps, one per direction, so that one stalled direction (a client
        busy with a batch) never holds up another (its other connection's query)."""
        links: list[socket.socket] = []
        self._listener.settimeout(0.1)
        try:
            while not self._closing:
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                try:
                    server = socket.create_connection(self._target, timeout=10)
                except OSError:
                    client.close()
                    continue
                server_spoke, count = [True], [0]  # per link: did the server speak last? its round trips
                self._counts.append(count)
                for end in (client, server):
                    end.settimeout(None)
                    end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a small fetch goes at once
                    links.append(end)
                for source, sink, from_client in ((client, server, True), (server, client, False)):
                    threading.Thread(target=self._pump, args=(source, sink, from_client, server_spoke, count),
                                     name="pgcourse round trips", daemon=True).start()
        finally:
            for end in links:
                end.close()

    @property
    def trips(self) -> int:
        return sum(count[0] for count in self._counts)

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool, server_spoke: list,
              count: list) -> None:
        try:
            while data := source.recv(1 << 18):
                if from_client:
                    if server_spoke[0]:
                        count[0] += 1
                    server_spoke[0] = False
                else:
                    server_spoke[0] = True
                sink.sendall(data)
        except OSError:
            pass
        finally:  # one side ended: end the link
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def _run_in_child(fn, body: str, tag: str, rows: int) -> dict:
    """Run the learner's function in a fresh interpreter, within the time limit; what happened there."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        raise CheckFailed("The check could not find the source of your function to run it in a fresh process.",
                          "define it with `def` (or `async def`) in a notebook cell, and run that cell") from None
    script = CHILD + "\n" + source + "\n" + body.format(name=fn.__name__)
    with (learner_env(tag) as tagged, tempfile.TemporaryDirectory(prefix="pgcourse-check-") as tmp,
          RoundTrips(tagged) as trips):
        report, progress, log, out, err = (os.path.join(tmp, n) for n in ("report", "progress", "log", "out", "err"))
        env = {**os.environ, "DATABASE_URL": trips.url, "PGAPPNAME": tag}
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            child = subprocess.Popen([sys.executable, "-c", script, report, progress, log, str(KILL_MB)],
                                     stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env)
        started, stopped = time.monotonic(), None
        while True:
            try:
                child.wait(0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - started
            done = json.loads(_read(progress) or '{"rows": 0}')["rows"]
            if elapsed > STREAM_TIME_LIMIT:
                stopped = {"why": "limit", "rows": done, "seconds": elapsed}
            elif trips.trips > TRIPS_PER_ROW * rows:
                stopped = {"why": "trips", "rows": done, "seconds": elapsed, "trips": trips.trips}
            elif elapsed > PACE_AFTER and done and elapsed * rows / done > PACE_LIMIT:
                stopped = {"why": "pace", "rows": done, "seconds": elapsed, "projected": elapsed * rows / done}
            if stopped:
                child.kill()
                child.wait()
                stop_sessions(tag)
                break
        if not stopped and trips.trips > TRIPS_PER_ROW * rows:  # it finished before the counter was read
            stopped = {"why": "trips", "rows": rows, "seconds": time.monotonic() - started, "trips": trips.trips}
        return {"stopped": stopped, "returncode": child.returncode, "report": json.loads(_read(report) or "null"),
                "stdout": _read(out), "stderr": _read(err), "logged": _read(log), "url": trips.url}


def _moved_to_the_end(observer: psycopg.Connection) -> None:
    """Once per database: rewrite the rows with ids 1..MOVED without changing them, so that their new
    versions sit after the others and a query without ORDER BY returns them last (committed)."""
    row = observer.execute("SELECT (SELECT ctid FROM events WHERE id = 1) > (SELECT ctid FROM events WHERE id = %s)",
                           (MOVED + 1,)).fetchone()
    if row[0] is False:
        with observer.transaction():
            observer.execute("UPDATE events SET id = id WHERE id <= %s", (MOVED,))


def _stream(exercise: int, fn, body: str, transaction_hint: str) -> dict:
    tag, url = new_tag(exercise), database_url()
    secrets = sorted(set(secrets_in(url)) | set(secrets_in(with_params(url, application_name=tag))))
    with check_connect(url, autocommit=True) as observer:
        _moved_to_the_end(observer)
        rows, sum_id, customers, ms, first, last, kinds = observer.execute(REFERENCE).fetchone()
        pages = observer.execute("SELECT pg_total_relation_size('events') / current_setting('block_size')::int"
                                 ).fetchone()[0]
        temp_before, blocks_before = observer.execute(STATS).fetchone()
        got = _run_in_child(fn, body, tag, rows)
        secrets = sorted(set(secrets) | set(secrets_in(got["url"])))  # the URL it was given leads through the counter
        wait_for_sessions_to_end(observer, tag, 10)
        after = observer.execute(STATS).fetchone()
        for _ in range(10):  # a session's statistics reach the database's a moment after it ends
            time.sleep(0.2)
            now = observer.execute(STATS).fetchone()
            if now == after:
                break
            after = now
        temp_mb, blocks = (after[0] - temp_before) / 2**20, after[1] - blocks_before
    call_text = f"{getattr(fn, '__name__', 'your function')}(conn, handle)"
    _echo(got["stdout"], sys.stdout, secrets)
    _echo(got["stderr"], sys.stderr, secrets)
    stopped, seen = got["stopped"], got["report"]
    if stopped and stopped["why"] == "trips":
        raise CheckFailed(f"{call_text} made {stopped['trips']:,} round trips to the server, more than one per"
                          f" {1 / TRIPS_PER_ROW:.0f} rows of the table's {rows:,} ({TRIPS_PER_ROW * rows:,.0f}): the"
                          f" check stopped it there, when {stopped['rows']:,} rows had reached handle(). Every round"
                          " trip waits for the network: with the server across one, a row or a few per trip take"
                          " many minutes for a million rows.",
                          "fetch rows in batches of hundreds or thousands per round trip (itersize, prefetch),"
                          " not one at a time, and do not start a new query for each page")
    if stopped:
        done = f"it had handed {stopped['rows']:,} of {rows:,} rows to handle()"
        if stopped["rows"]:
            projected = stopped["seconds"] * rows / stopped["rows"]
            raise CheckFailed(f"{call_text} was stopped after {stopped['seconds']:.0f} s: {done}; at that pace it"
                              f" would take about {projected / 60:.0f} minutes (the check allows"
                              f" {STREAM_TIME_LIMIT:.0f} s; a streamed answer takes seconds).",
                              "fetch rows in batches of hundreds or thousands per round trip (itersize, prefetch),"
                              " not one at a time, and do not start a new query for each page")
        raise CheckFailed(f"{call_text} did not finish within {STREAM_TIME_LIMIT:.0f} s ({done}); the check stopped"
                          " it and cancelled its queries.",
                          "look for a loop that never ends, a query that waits, or one query per small page")
    text = "\n".join([got["stdout"], got["stderr"], got["logged"]])
    leak = next((s for s in secrets if s in text), None)
    if leak is not None:
        raise CheckFailed(f"{call_text} printed or logged a secret"
                          f" ({'the connection URL' if '://' in leak else 'the password'}).",
                          "never print or log a URL with its password in it; log the host and database name,"
                          " or the URL with the password masked")
    if seen is None:
        last_line = (got["stderr"].strip().splitlines() or [""])[-1]
        if "NameError" in last_line or "ImportError" in last_line or "ModuleNotFoundError" in last_line:
            raise CheckFailed(f"Your function failed in a fresh process: {mask(last_line, secrets)}",
                              FRESH_PROCESS_HINT)
        raise CheckFailed(f"{call_text} ended its Python process (exit code {got['returncode']}) before returning.",
                          "return from the function, or raise an exception that says what went wrong; never call"
                          " os._exit() or end the process")
    if "killed_mb" in seen:
        raise CheckFailed(f"Your function's process grew by more than {KILL_MB} MB before the check stopped it:"
                          " the whole table was coming into memory.",
                          "do not fetchall() or fetch(); stream the rows with a server-side cursor and hand each to"
                          " handle() as it arrives")
    if seen["error"]:
        name, message = seen["error"]
        if name == "NotImplementedError":
            raise not_done(exercise)
        if name == "SystemExit":
            raise CheckFailed(f"{call_text} tried to end the program (SystemExit({message})) instead of returning"
                              " or raising.", "raise an exception that says what went wrong; never call"
                              " sys.exit() or exit() in a function")
        error = mask(f"{name}: {message}" if message else name, secrets)
        hint = (transaction_hint if "transaction" in error.lower() else
                FRESH_PROCESS_HINT if name in ("NameError", "ImportError", "ModuleNotFoundError") else
                "run your function on its own in a cell with a connection and print as handle, and read the error")
        raise CheckFailed(f"{call_text} raised {error}", hint)
    if seen["shape"]:
        raise CheckFailed(f"handle() received {seen['shape']}: not a row of four values (id, customer_id, kind,"
                          " payload).", "pass each row as the driver returns it (a tuple, or asyncpg's Record),"
                          " one handle(row) call per row, with the columns id, customer_id, kind, payload")
    if seen["rows"] != rows:
        raise CheckFailed(f"handle() received {seen['rows']:,} rows; the events table has {rows:,}.",
                          "pass every row of SELECT id, customer_id, kind, payload FROM events ORDER BY id to"
                          " handle(), one call per row")
    if seen["disorder"] or (seen["first"], seen["last"]) != (first, last):
        if seen["first"] != first:
            detail = f": the first row had id {seen['first']:,}"
        elif seen["disorder"]:
            position, before, then = seen["disorder"]
            detail = f": row {position + 1:,} had id {then:,}, after id {before:,}"
        else:
            detail = f": the last row had id {seen['last']:,}"
        raise CheckFailed(f"The rows did not arrive in id order{detail} (in this database the rows with the"
                          f" smallest ids sit physically at the end of the table).",
                          "without ORDER BY the server returns rows in whatever order it finds them: say the order")
    if (seen["sum_id"], seen["customers"], seen["ms"], seen["kinds"]) != (sum_id, customers, ms, kinds):
        raise CheckFailed("The rows handed to handle() differ from the table's (id, customer_id, kind or payload).",
                          "select id, customer_id, kind, payload, in that order, and pass each row unchanged")
    if seen["growth_mb"] > MEMORY_BOUND_MB:
        raise CheckFailed(f"Your function's process grew by {seen['growth_mb']:,.0f} MB while streaming (the bound"
                          f" is {MEMORY_BOUND_MB} MB).", "a client-side cursor receives the whole result before the"
                          " first row, even if you iterate it: use a server-side cursor (inside a transaction),"
                          " and keep no list of rows")
    if temp_mb > TEMP_MB:
        raise CheckFailed(f"While your function ran, the server wrote {temp_mb:,.0f} MB of temporary files (the"
                          f" check allows {TEMP_MB} MB; the whole result is about {pages * 8 // 1024:,} MB): it stored"
                          " the whole result on disk before or after handing it over.",
                          "a cursor WITH HOLD is copied in full when its transaction commits; declare the cursor"
                          " without hold, inside a transaction that lasts while you read it")
    if blocks > BUFFER_MARGIN * pages:
        raise CheckFailed(f"While your function ran, the server read {blocks:,} pages (8 kB each) in this database;"
                          f" events and its index take {pages:,}, and a streamed answer reads about twice that"
                          f" (the check allows {BUFFER_MARGIN}×).",
                          "OFFSET makes the server read and throw away every earlier row again for each page:"
                          " run one query and fetch its rows in batches from a server-side cursor")
    return seen


def stream_events(fn) -> None:
    """Exercise 1: fn(conn, handle) passes every event, in id order, to handle() within the memory bound."""
    seen = _stream(1, fn, SYNC_BODY, "a named cursor needs a transaction: open one with `with conn.transaction():`"
                   " (the connection is in autocommit mode)")
    passed(1, f"{seen['rows']:,} events streamed in id order, and the process grew by less than {MEMORY_BOUND_MB} MB.")


def stream_events_async(fn) -> None:
    """Exercise 3: async fn(conn, handle) with asyncpg passes every event, in id order, within the memory bound."""
    seen = _stream(3, fn, ASYNC_BODY, "asyncpg cursors live inside a transaction: `async with conn.transaction():`")
    passed(3, f"{seen['rows']:,} events streamed with asyncpg in id order, and the process grew by less than"
              f" {MEMORY_BOUND_MB} MB.")


# --- exercise 2: keyset pages ---------------------------------------------------------------------

SCHEMA = "exercise06"  # also written literally in the SQL below
READINGS = """
DROP SCHEMA IF EXISTS exercise06 CASCADE;
CREATE SCHEMA exercise06;
CREATE TABLE exercise06.readings (id int PRIMARY KEY, sensor int NOT NULL, taken_at timestamptz NOT NULL,
                                  value int NOT NULL);
INSERT INTO exercise06.readings
SELECT i, i % 37, timestamptz '2025-01-01 00:00:00+00' + make_interval(mins => (i * 7919) % 20000), (i * 31) % 1000
FROM generate_series(1, 100000) AS i ORDER BY md5(i::text);
CREATE INDEX ON exercise06.readings (taken_at);
ANALYZE exercise06.readings;
"""
ORDER = "SELECT id, sensor, taken_at, value FROM exercise06.readings ORDER BY taken_at, id"
REFERENCE_PAGE = ("SELECT id, sensor, taken_at, value FROM exercise06.readings WHERE (taken_at, id) > (%s, %s)"
                  " ORDER BY taken_at, id LIMIT %s")
WORK = ("SELECT coalesce(sum(shared_blks_hit + shared_blks_read), 0)::bigint FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE '%pg_stat_statements%'")
PAGE_MARGIN, PAGE_SLACK = 3, 30  # a page may touch 3× the reference keyset page's buffers, plus 30
PAGE_TIME_LIMIT = 30.0
NOT_SQL = ("FETCH", "MOVE", "CLOSE", "BEGIN", "COMMIT", "ROLLBACK", "START", "SAVEPOINT", "RELEASE")


def _pasted(statements: list[str], after, size: int) -> tuple[str, str] | None:
    """(what, statement) for the first input value written into an SQL statement's text, else None."""
    numbers = {str(size): f"the page size {size}"} if size >= 2 else {}
    if after is not None and after[1] >= 2:
        numbers[str(after[1])] = f"the id {after[1]}"
    for statement in statements:
        if statement.lstrip().upper().startswith(NOT_SQL):
            continue
        literals = re.findall(r"'(?:[^']|'')*'", statement)
        if after is not None and any(re.search(r"\d{4}-\d\d-\d\d", s) for s in literals):
            return "the timestamp", statement
        bare = re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", " ", statement)
        for token in re.findall(r"(?<![\w$.])\d+(?![\w.])", bare):
            if token in numbers:
                return numbers[token], statement
    return None


class _Pager:
    """Calls the learner's function on the handed connection: traced, timed, judged."""

    def __init__(self, fn, conn: psycopg.Connection, admin: psycopg.Connection, tag: str, secrets: list[str]):
        self.fn, self.conn, self.admin, self.tag, self.secrets = fn, conn, admin, tag, secrets

    def page(self, after, size: int) -> list[tuple]:
        trace = Trace(self.conn)
        try:
            got = run(2, self.fn, self.conn, after, size, timeout=PAGE_TIME_LIMIT, tag=self.tag,
                      stop_pids=[self.conn.info.backend_pid], secrets=self.secrets)
        finally:
            statements = trace.statements()
        call_text = f"{self.fn.__name__}(conn, {after!r}, {size})"
        pasted = _pasted(statements, after, size)
        if pasted:
            what, statement = pasted
            shown = statement if len(statement) <= 160 else statement[:157] + "..."
            raise CheckFailed(f"{call_text} sent SQL with {what} written into its text: {shown}",
                              "pass every value as a query parameter (a %s placeholder in the SQL, the value in the"
                              " tuple after it); the check reads the statements the server received")
        if isinstance(got, (str, bytes, dict)) or not hasattr(got, "__iter__"):
            raise CheckFailed(f"{call_text} returned {got!r:.80}, not a list of rows.", "return cursor.fetchall()")
        rows = list(got)
        for row in rows:
            if isinstance(row, (dict, str, bytes)) or not hasattr(row, "__len__") or len(row) != 4:
                raise CheckFailed(f"{call_text} returned a row {row!r:.80}: not a row of four values"
                                  " (id, sensor, taken_at, value).",
                                  "select id, sensor, taken_at, value and return the rows as the cursor gives them"
                                  " (tuples)")
        return [tuple(row) for row in rows]

    def buffers(self, after, size: int) -> int:
        """The fewest buffers one of two calls made the server touch (after a warm-up call)."""
        self.page(after, size)
        best = None
        for _ in range(2):
            before = self.admin.execute(WORK).fetchone()[0]
            self.page(after, size)
            used = self.admin.execute(WORK).fetchone()[0] - before
            best = used if best is None else min(best, used)
        return best

    def reference_buffers(self, after, size: int) -> int:
        self.admin.execute(REFERENCE_PAGE, (*after, size)).fetchall()
        before = self.admin.execute(WORK).fetchone()[0]
        self.admin.execute(REFERENCE_PAGE, (*after, size)).fetchall()
        return self.admin.execute(WORK).fetchone()[0] - before


def _describe(rows: list[tuple]) -> str:
    return ", ".join(f"id {r[0]}" for r in rows[:4]) + (" ..." if len(rows) > 4 else "") if rows else "no rows"


@contextmanager
def _readings(tag: str) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    url = database_url()
    with check_connect(url, autocommit=True) as admin:
        admin.execute(READINGS)
        try:
            conn = psycopg.connect(with_params(url, application_name=tag, options=f"-c search_path={SCHEMA}"),
                                   autocommit=True)
            try:
                with learner_env(tag, url):
                    yield conn, admin
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
        finally:
            admin.execute("DROP SCHEMA IF EXISTS exercise06 CASCADE")


def keyset_page(fn) -> None:
    """Exercise 2: fn(conn, after, size) returns the page after key (taken_at, id), cheaply at any depth."""
    tag, url = new_tag(2), database_url()
    secrets = sorted(set(secrets_in(url)) | set(secrets_in(with_params(url, application_name=tag))))
    with _readings(tag) as (conn, admin):
        pager = _Pager(fn, conn, admin, tag, secrets)
        reference = [tuple(r) for r in admin.execute(ORDER).fetchall()]
        position = {r[0]: i for i, r in enumerate(reference)}
        n = len(reference)
        cases = [(None, 20), (0, 20), (1, 20), (2, 7), (3, 20), (4, 1), (5, 20), (6, 0), (997, 20), (5000, 20),
                 (n - 21, 20), (n - 7, 20), (n - 1, 20), (None, 0), (None, 7)]
        ties = [i for i in range(1, 400) if reference[i][2] == reference[i + 1][2]]  # the last row shown has a twin after it
        cases += [(i, 20) for i in random.Random(6).sample(ties, 6)]
        for start, size in cases:
            after = None if start is None else (reference[start][2], reference[start][0])
            expected = reference[0 if start is None else start + 1:][:size]
            got = pager.page(after, size)
            if got != expected:
                where = "the first page" if start is None else f"the page after (taken_at, id) = {after}"
                missing = [r for r in expected if r not in got]
                repeated = [r for r in got if r[0] in position and start is not None and position[r[0]] <= start]
                same_rows = sorted(got) == sorted(expected)
                detail = (f"; it repeated {_describe(repeated)}" if repeated else
                          f"; it skipped {_describe(missing)}" if missing else
                          "; the same rows in another order: rows with the same taken_at came in another order"
                          " than their ids" if same_rows else "")
                raise CheckFailed(f"For {where} ({size} rows) your function returned {len(got)} rows: {_describe(got)};"
                                  f" expected {len(expected)}: {_describe(expected)}{detail}.",
                                  "order by (taken_at, id), a unique key, and take the rows strictly after the last"
                                  " one shown; rows with the same taken_at need id to tell them apart, in the"
                                  " comparison and in the order")
        for start in (1, n - 50):
            after = (reference[start][2], reference[start][0])
            reference_cost = pager.reference_buffers(after, 20)
            cost = pager.buffers(after, 20)
            allowed = PAGE_MARGIN * reference_cost + PAGE_SLACK
            if cost > allowed:
                where = "near the start" if start < n // 2 else "near the end"
                raise CheckFailed(f"A page of 20 rows {where} of the table made the server touch {cost:,} buffers"
                                  f" (the fewest of two runs); the keyset query touches {reference_cost:,}, and the"
                                  f" check allows {PAGE_MARGIN}× that plus {PAGE_SLACK}.",
                                  "let the server find the page: no OFFSET, no filtering or slicing in Python, and a"
                                  " LIMIT so that it stops after the page")
        walked, after = [], None
        while len(walked) <= n:
            page = pager.page(after, 1000)
            if not page:
                break
            walked += page
            after = (page[-1][2], page[-1][0])
        if walked != reference:
            raise CheckFailed(f"Walking every page of 1,000 rows gave {len(walked):,} rows, not the table's"
                              f" {n:,} in order.", "each page starts strictly after the previous page's"
                              " last (taken_at, id)")
    passed(2, f"pages match the reference at {len(cases)} positions and sizes (0 included), ties included, all"
              f" {n:,} rows walked once, values sent as parameters, and a page costs the server about what the"
              " keyset query costs, near the start and near the end.")
