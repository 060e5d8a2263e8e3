"""Exercise checks, one module per lesson. A check runs the learner's code against the real
database and judges what it did: results, rows, sessions left open, what hostile input does.
It never reads the learner's source. Success prints one line; failure raises CheckFailed
(what was observed, and a hint); an exercise not yet written raises NotDone.

What every check shares lives here, so that a new lesson's checks get it by using it:

- `run` / `arun` call the learner's function with a time limit, its output captured (and scanned
  for secrets), anything it raises (SystemExit included) turned into a verdict in the check's voice;
- `learner_env` tags every session the learner's code opens from `DATABASE_URL`
  (`application_name`), and `check_connect` tags the check's own; `sessions_of` and
  `process_sessions` find them, so other notebooks open on the same database change nothing;
- `disorder` moves rows so that their physical order differs from the order a check expects;
- `best_time` / `slower_than` judge speed as the best of several runs against a reference
  measured in the same check;
- every public function of a check module is wrapped, when the module is imported, so that its
  outcome (passed, failed with what was observed, not done, or the check's own error) is recorded
  on the progress board (`pgcourse.board`), with the lesson and exercise whose cell calls it.

`CONTRIBUTING.md` ("Writing a check") says how to use them, and how to write the wrong-answer tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import io
import logging
import os
import re
import secrets as _secrets
import sys
import tempfile
import threading
import time
import types
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
import psycopg.sql

from ..sessions import client_ports

TIME_LIMIT = 60.0
"""Seconds a learner's function may run in one call before the check stops waiting for it."""

CHECK_APP = "pgcourse check"
"""application_name of the sessions a check opens for itself."""

LEARNER_APP = "pgcourse learner"
"""Prefix of the application_name given to the sessions the learner's code opens during a check."""


class _Message(Exception):
    """Renders in a notebook as its message only: the learner's problem, not our traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {line}" if i == 0 else line for i, line in enumerate(str(self).splitlines())]


class NotDone(_Message):
    """The exercise still raises NotImplementedError: there is nothing to check yet."""


class CheckFailed(_Message, AssertionError):
    """The learner's code ran, and did something other than what the exercise asks."""

    def __init__(self, observed: str, hint: str):
        self.observed, self.hint = observed, hint
        super().__init__(f"{observed}\nHint: {hint}")


class _TimeLimit(BaseException):
    """Raised inside the learner's thread when its time is up (never seen by the learner)."""


def query_text(query, cur) -> str:
    """The SQL text a cursor was given (a string, bytes, or a psycopg.sql composition), for a verdict."""
    if isinstance(query, psycopg.sql.Composable):
        with contextlib.suppress(Exception):
            return query.as_string(cur)
    if isinstance(query, (bytes, bytearray, memoryview)):
        return bytes(query).decode("utf-8", "replace")
    return str(query)

def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise NotDone("DATABASE_URL is not set: start JupyterLab with `make lab`.")
    return url


def not_done(exercise: int) -> NotDone:
    _outcome_seen["exercise"] = exercise
    return NotDone(f"Exercise {exercise} is not done yet: replace the `raise NotImplementedError` line"
                   " with your code, run that cell, then run this check again.")


def passed(exercise: int, what: str) -> None:
    _outcome_seen.update(exercise=exercise, passed=what)
    print(f"Exercise {exercise} passed: {what}")


# --- sessions: tagging, and finding the learner's own ------------------------------------------

def with_params(url: str, **params: str) -> str:
    """The URL (or key=value conninfo) with these connection parameters set; every driver reads them.

    asyncpg passes unknown URL parameters such as application_name on as server settings, libpq and
    SQLAlchemy read them as connection parameters, so a URL tagged here tags the session whatever
    the driver.
    """
    if "://" not in url:
        return psycopg.conninfo.make_conninfo(url, **params)
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


def new_tag(exercise: int | str) -> str:
    """A fresh application_name for the learner's sessions in one check run."""
    return f"{LEARNER_APP} {exercise} {_secrets.token_hex(3)}"


def check_connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    """A psycopg connection for the check itself, tagged so that it is never taken for the learner's."""
    kwargs.setdefault("application_name", CHECK_APP)
    return psycopg.connect(url or database_url(), **kwargs)


@contextlib.contextmanager
def learner_env(tag: str, url: str | None = None) -> Iterator[str]:
    """While inside, DATABASE_URL (and PGAPPNAME) name `tag`: every session the learner's code opens
    from the environment is tagged. Yields the tagged URL, to hand to functions that take one."""
    url = url or database_url()
    tagged = with_params(url, application_name=tag)
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "PGAPPNAME")}
    os.environ["DATABASE_URL"], os.environ["PGAPPNAME"] = tagged, tag
    try:
        yield tagged
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def sessions_of(observer: psycopg.Connection, tag: str) -> list[dict]:
    """The sessions whose application_name is `tag` (pid, state, query, xact_start), oldest first."""
    cur = observer.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT pid, state, query, xact_start, wait_event_type FROM pg_stat_activity"
                       " WHERE application_name = %s AND backend_type = 'client backend' ORDER BY backend_start, pid",
                       (tag,)).fetchall()


def process_sessions(observer: psycopg.Connection, *, exclude: Iterable[int] = ()) -> list[dict] | None:
    """This process's client sessions in the observer's database (matched by client port), or None when
    the sessions cannot be told apart (a Unix socket, or sockets that cannot be read)."""
    ports = client_ports()
    if ports is None:
        return None
    cur = observer.cursor(row_factory=psycopg.rows.dict_row)
    rows = cur.execute("SELECT pid, state, query, application_name, client_port FROM pg_stat_activity"
                       " WHERE datname = current_database() AND backend_type = 'client backend'"
                       " AND pid <> pg_backend_pid()").fetchall()
    if rows and all(r["client_port"] in (None, -1) for r in rows):
        return None
    excluded = set(exclude)
    return [r for r in rows if r["client_port"] in ports and r["pid"] not in excluded]


def wait_for_sessions_to_end(observer: psycopg.Connection, tag: str, wait: float = 5.0) -> list[dict]:
    """The tagged sessions still there after up to `wait` seconds (a closed connection's server
    process ends a moment after the client lets go)."""
    deadline = time.monotonic() + wait
    while True:
        left = sessions_of(observer, tag)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def last_query_of(conn: psycopg.Connection | int, observer: psycopg.Connection) -> str:
    """The text of the last statement a session sent, as the server saw it (from pg_stat_activity)."""
    pid = conn if isinstance(conn, int) else conn.info.backend_pid
    row = observer.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row[0] if row else ""


def stop_sessions(tag: str | None = None, pids: Iterable[int] = ()) -> None:
    """Cancel, then end, the learner's sessions: what a check does when the learner's code hangs."""
    targets = set(pids)
    with contextlib.suppress(psycopg.Error), check_connect(autocommit=True) as admin:
        if tag:
            targets |= {r["pid"] for r in sessions_of(admin, tag)}
        for pid in targets:
            admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
        time.sleep(0.5)
        for pid in targets:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


# --- output capture and secrets ------------------------------------------------------------------

def secrets_in(url: str | None = None) -> list[str]:
    """The forms in which the password of a URL (default DATABASE_URL) could leak: as written in the
    URL, decoded, and the whole URL."""
    url = url if url is not None else os.environ.get("DATABASE_URL", "")
    if not url:
        return []
    found: set[str] = set()
    if "://" in url:
        raw = urllib.parse.urlsplit(url)
        if raw.password:
            found |= {raw.password, urllib.parse.unquote(raw.password), url}
    else:
        with contextlib.suppress(psycopg.ProgrammingError):
            password = psycopg.conninfo.conninfo_to_dict(url).get("password")
            if password:
                found |= {str(password), url}
    return sorted(s for s in found if len(s) >= 4)


class Captured:
    """What the learner's code printed (stdout, stderr) and logged, while a check ran it."""

    def __init__(self):
        self.stdout, self.stderr, self.logged = io.StringIO(), io.StringIO(), []
        self._ids: set[int] = set()

    @property
    def text(self) -> str:
        return "\n".join([self.stdout.getvalue(), self.stderr.getvalue(), *self.logged])

    def leaked(self, secrets: Iterable[str]) -> str | None:
        """The first secret found in what was printed or logged, else None."""
        text = self.text
        return next((s for s in secrets if s and s in text), None)


_lock = threading.RLock()
_sinks: dict[int, Captured] = {}
_installed: dict[str, Any] = {}


def _sink_for_thread() -> Captured | None:
    sink = _sinks.get(threading.get_ident())
    if sink is None and len(set(map(id, _sinks.values()))) == 1:
        sink = next(iter(_sinks.values()))  # a thread the learner's code started
    return sink


class _Handler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)

    def emit(self, record: logging.LogRecord) -> None:
        sink = _sink_for_thread()
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.logged.append(f"{record.name} {record.levelname} {record.getMessage()}")


class _Tee(io.TextIOBase):
    """Writes from a thread being captured go to its capture; other threads' writes pass through."""

    def __init__(self, original, which: str):
        self.original, self.which = original, which

    def write(self, s: str) -> int:
        sink = _sink_for_thread()
        if sink is not None:
            return getattr(sink, self.which).write(s)
        return self.original.write(s)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self.original.flush()

    def __getattr__(self, name):
        return getattr(self.original, name)


def _loggers() -> list[tuple[str, logging.Logger]]:
    return [("", logging.getLogger())] + [(n, lg) for n, lg in list(logging.root.manager.loggerDict.items())
                                         if isinstance(lg, logging.Logger)]


QUIET_DEBUG = ("sqlalchemy",)
"""Loggers captured from INFO up, not DEBUG: SQLAlchemy logs every row it fetches at DEBUG (a check that
reads 150,000 rows took five times as long), and its statements and parameters come at INFO."""


def _install() -> None:
    """Route stdout, stderr and every log record (any level, any logger) to the captures."""
    for name in QUIET_DEBUG:
        logging.getLogger(name)  # exists before the levels are saved, so that uninstall restores it
    saved = {"stdout": sys.stdout, "stderr": sys.stderr, "disable": logging.root.manager.disable,
             "loggers": {n: (lg.level, lg.handlers[:], lg.propagate) for n, lg in _loggers()},
             "handler": _Handler()}
    sys.stdout, sys.stderr = _Tee(saved["stdout"], "stdout"), _Tee(saved["stderr"], "stderr")
    for _name, lg in _loggers():
        lg.handlers, lg.propagate = [], True
        lg.setLevel(logging.NOTSET)
    for name in QUIET_DEBUG:
        logging.getLogger(name).setLevel(logging.INFO)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    root.addHandler(saved["handler"])
    logging.disable(logging.NOTSET)
    _installed.update(saved)


def _uninstall() -> None:
    sys.stdout, sys.stderr = _installed["stdout"], _installed["stderr"]
    logging.disable(_installed["disable"])
    known = _installed["loggers"]
    for name, lg in _loggers():
        if name in known:
            lg.level, lg.handlers, lg.propagate = known[name]
        else:  # a logger created while we captured
            lg.handlers = [h for h in lg.handlers if h is not _installed["handler"]]
    _installed.clear()


@contextlib.contextmanager
def captured(thread_ids: Iterable[int] | None = None) -> Iterator[Captured]:
    """Capture what the given threads (default: this one) print and log while inside.

    Log records are captured even where the logger's level would drop them: a secret in a debug
    message leaks on the day someone turns debug logging on. Captures nest, and run in several
    threads at once (a check that calls the learner's function from eight threads).
    Add a thread to a running capture with `capture_thread(cap)`.
    """
    cap = Captured()
    ids = set(thread_ids) if thread_ids is not None else {threading.get_ident()}
    with _lock:
        if not _installed:
            _install()
        for i in ids:
            _sinks[i] = cap
        cap._ids = ids
    try:
        yield cap
    finally:
        with _lock:
            for i in cap._ids:
                if _sinks.get(i) is cap:
                    del _sinks[i]
            if not _sinks and _installed:
                _uninstall()


def capture_thread(cap: Captured) -> None:
    """Send what the calling thread prints and logs to `cap` (a learner's function run in a thread)."""
    with _lock:
        _sinks[threading.get_ident()] = cap
        cap._ids.add(threading.get_ident())


def mask(text: str, secrets: Iterable[str]) -> str:
    """The text with every secret in it replaced by asterisks."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "********")
    return text


def _echo(cap: Captured, secrets: Iterable[str]) -> None:
    """Show the learner what their code printed, with any secret masked."""
    for text, stream in ((cap.stdout.getvalue(), sys.stdout), (cap.stderr.getvalue(), sys.stderr)):
        text = mask(text, secrets)
        if text:
            stream.write(text if text.endswith("\n") else text + "\n")


# --- calling the learner's code ------------------------------------------------------------------

def describe_call(fn: Callable, args: tuple, kwargs: dict | None = None) -> str:
    """`name(arg, ...)` as the learner would write it, connections and long values shortened."""
    def short(a):
        if isinstance(a, (psycopg.Connection, psycopg.AsyncConnection)) or type(a).__name__ in (
                "Connection", "AsyncConnection", "Pool", "ConnectionPool", "AsyncConnectionPool", "Engine"):
            return {"Connection": "conn", "AsyncConnection": "conn"}.get(type(a).__name__, type(a).__name__.lower())
        text = repr(a)
        return text if len(text) <= 60 else text[:57] + "..."
    shown = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in (kwargs or {}).items()]
    return f"{getattr(fn, '__name__', 'your function')}({', '.join(shown)})"


def _raised(exercise: int, call_text: str, exc: BaseException, hint: str | None,
            secrets: Iterable[str] = ()) -> CheckFailed:
    first = mask(str(exc).strip().splitlines()[0], secrets) if str(exc).strip() else ""
    if isinstance(exc, SystemExit):  # the check's hint is about its exercise, not about exit()
        return CheckFailed(f"{call_text} tried to end the program (SystemExit({exc.code!r})) instead of returning"
                           " or raising.",
                           "raise an exception that says what went wrong; never call sys.exit() or exit() in a function")
    return CheckFailed(f"{call_text} raised {type(exc).__name__}" + (f": {first}" if first else "."),
                       hint or "run your function on its own in a cell with the same arguments, and read the error")


def _outcome(exercise: int, call_text: str, cap: Captured, secrets: list[str], error: BaseException | None,
             result: Any, allowed: tuple[type[BaseException], ...], hint: str | None) -> Any:
    """The learner's result, or the verdict on what their code printed or raised."""
    leak = cap.leaked(secrets)
    if leak is not None:
        raise CheckFailed(f"{call_text} printed or logged a secret"
                          f" ({'the connection URL' if '://' in leak else 'the password'}).",
                          "never print or log a URL with its password in it; log the host and database name,"
                          " or the URL with the password masked")
    if error is None:
        return result
    if isinstance(error, NotImplementedError):
        raise not_done(exercise) from None
    if allowed and isinstance(error, allowed) or isinstance(error, KeyboardInterrupt):
        raise error
    raise _raised(exercise, call_text, error, hint, secrets) from None


def _inject(thread: threading.Thread) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_TimeLimit))


WATCHDOG_GRACE = 2.0
"""Seconds past its time limit after which a coroutine that keeps the event loop from running (it never
awaits anything that yields) is stopped by the watchdog."""


class LoopWatchdog:
    """Stops a coroutine that never yields to the event loop, which no cancellation can reach.

    While inside (`with LoopWatchdog(limit):`, in the loop's thread), a ticker in the loop notes each time
    the loop gets to run. If `limit` + WATCHDOG_GRACE seconds have passed and the loop has not run for a
    second, a watchdog thread raises `_TimeLimit` in the loop's thread (the mechanism `run` uses for its
    threads): it lands in the code that holds the loop, and ends the learner's task with it. `fired`
    says whether it had to.
    """

    def __init__(self, limit: float):
        self.limit, self.fired, self.lock = limit, False, threading.Lock()

    def __enter__(self) -> LoopWatchdog:
        self.loop, self.ident = asyncio.get_running_loop(), threading.get_ident()
        self.start = self.beat = time.monotonic()
        self.stop = threading.Event()
        self._tick()
        threading.Thread(target=self._watch, name="check watchdog", daemon=True).start()
        return self

    def _tick(self) -> None:
        self.beat = time.monotonic()
        if not self.stop.is_set():
            self.handle = self.loop.call_later(0.05, self._tick)

    def _watch(self) -> None:
        while not self.stop.wait(0.1):
            with self.lock:
                now = time.monotonic()
                if (not self.stop.is_set() and now - self.start > self.limit + WATCHDOG_GRACE
                        and now - self.beat > 1.0):
                    self.fired, self.beat = True, now  # once a second at most, while the loop stays held
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident),
                                                               ctypes.py_object(_TimeLimit))

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.stop.set()
            if self.fired:  # not delivered yet (the loop got free meanwhile): it must not land in the check
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), None)
        self.handle.cancel()


def run(exercise: int, fn: Callable, *args, timeout: float = TIME_LIMIT, allowed: tuple[type[BaseException], ...] = (),
        hint: str | None = None, secrets: Iterable[str] | None = None, tag: str | None = None,
        stop_pids: Iterable[int] = (), **kwargs) -> Any:
    """Call the learner's (sync) function the way every check should.

    - It runs in a thread with a time limit: past `timeout` seconds the check cancels the learner's
      sessions (those tagged `tag`, and `stop_pids`), stops the thread where Python can, and fails.
    - Its output and logging are captured; a secret (`secrets`, by default DATABASE_URL's password)
      in them fails the check; the rest is shown to the learner, masked.
    - NotImplementedError becomes NotDone; exceptions in `allowed` are raised to the caller as they
      are (the check judges them); anything else, SystemExit included, becomes CheckFailed.
    """
    _outcome_seen["exercise"] = exercise
    secrets = list(secrets) if secrets is not None else secrets_in()
    call_text = mask(describe_call(fn, args, kwargs), secrets)
    box: dict[str, Any] = {}

    def target():
        capture_thread(cap)
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
            box["result"] = result
        except BaseException as exc:  # noqa: BLE001 - every outcome is judged below
            box["error"] = exc

    with captured(set()) as cap:
        worker = threading.Thread(target=target, name=f"exercise {exercise}", daemon=True)
        worker.start()
        worker.join(timeout)
        timed_out = worker.is_alive()
        if timed_out:
            stop_sessions(tag, stop_pids)
            _inject(worker)
            worker.join(5)
    _echo(cap, secrets)
    if timed_out:
        raise CheckFailed(f"{call_text} did not finish within {timeout:g} s; the check stopped waiting"
                          " and cancelled its queries.",
                          hint or "look for a loop that never ends, a retry without a limit, or a query waiting"
                          " for a lock that your own code holds in another session")
    return _outcome(exercise, call_text, cap, secrets, box.get("error"), box.get("result"), allowed, hint)


async def _awaited(awaitable):
    return await awaitable


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


async def _guarded(awaitable):
    """Await the learner's coroutine; hand back what it raised, SystemExit included (a task would
    otherwise let SystemExit escape through the event loop)."""
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt, GeneratorExit) as exc:
        return _Raised(exc)


async def arun(exercise: int, fn: Callable, *args, timeout: float = TIME_LIMIT,
               allowed: tuple[type[BaseException], ...] = (), hint: str | None = None,
               secrets: Iterable[str] | None = None, tag: str | None = None, stop_pids: Iterable[int] = (),
               **kwargs) -> Any:
    """`run` for an async function, awaited in the running loop (its connections belong to that loop).

    A coroutine that swallows the cancellation is left behind rather than waited for forever.
    """
    _outcome_seen["exercise"] = exercise
    secrets = list(secrets) if secrets is not None else secrets_in()
    call_text = mask(describe_call(fn, args, kwargs), secrets)
    with captured() as cap:
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(_guarded(result))
                with LoopWatchdog(timeout):  # a coroutine that never yields is stopped all the same
                    done, _ = await asyncio.wait({task}, timeout=timeout)
                    in_time = bool(done)
                    if not done:
                        task.cancel()
                        done, _ = await asyncio.wait({task}, timeout=5)
                if not done:
                    stop_sessions(tag, stop_pids)
                stopped = done and not task.cancelled() and isinstance(task.exception(), _TimeLimit)
                if not in_time or stopped:
                    raise _TimeLimit
                result = task.result()
                if isinstance(result, _Raised):
                    raise result.exc
            error = None
        except _TimeLimit:
            error = _TimeLimit()
        except BaseException as exc:  # noqa: BLE001 - every outcome is judged below
            error = exc
    _echo(cap, secrets)
    if isinstance(error, (_TimeLimit, asyncio.CancelledError)):
        raise CheckFailed(f"{call_text} did not finish within {timeout:g} s; the check cancelled it.",
                          hint or "look for a loop that never ends, a retry without a limit, or an await that"
                          " waits on something your own code holds")
    return _outcome(exercise, call_text, cap, secrets, error, result if error is None else None, allowed, hint)


def call(exercise: int, fn: Callable, *args, **kwargs) -> Any:
    """`run`, letting every Exception through to the check as it is (the check judges it)."""
    kwargs.setdefault("allowed", (Exception,))
    return run(exercise, fn, *args, **kwargs)


async def acall(exercise: int, fn: Callable, *args, **kwargs) -> Any:
    """Like call(), for an async function."""
    kwargs.setdefault("allowed", (Exception,))
    return await arun(exercise, fn, *args, **kwargs)


def run_async(coro):
    """Run a coroutine from sync code, also inside a notebook whose event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --- what a connection sent -----------------------------------------------------------------------

class Trace:
    """The statements a psycopg connection sends, read from a libpq trace. libpq traces where psycopg
    lets it (Linux); elsewhere `on` is False and `statements()` is empty: judge by the server's evidence.
    Call `stop()` (or `statements()`, which stops) before closing the connection."""

    def __init__(self, conn: psycopg.Connection):
        self.conn, self.file, self.text = conn, tempfile.TemporaryFile(), ""
        try:
            conn.pgconn.trace(self.file.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            self.on = True
        except Exception:  # noqa: BLE001 - no tracing on this platform: the check does without it
            self.on = False

    def stop(self) -> None:
        if self.on:
            if not self.conn.closed:
                with contextlib.suppress(Exception):
                    self.conn.pgconn.untrace()
            self.on = False
            self.file.seek(0)
            self.text = self.file.read().decode("utf-8", "replace")
        self.file.close()

    def statements(self) -> list[str]:
        """Stop tracing; the SQL texts sent (Parse and simple Query messages)."""
        self.stop()
        found = []
        for kind, body in re.findall(r"^F\t\S+\t(Parse|Query)\t(.*?)(?=^[FB]\t|\Z)", self.text, re.M | re.S):
            body = body.rstrip("\n")
            m = (re.match(r'\s*"[^"]*" "(.*)" \d+(?: \S+)*\s*$', body, re.S) if kind == "Parse"
                 else re.match(r'\s*"(.*)"\s*$', body, re.S))
            found.append(m.group(1) if m else body)
        return found


# --- order ---------------------------------------------------------------------------------------

def physical_order(conn: psycopg.Connection, table: str, key: str) -> list:
    """`key` of every row of `table` in the order a sequential scan returns them."""
    from psycopg import sql

    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        return [r[0] for r in conn.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(key), sql.Identifier(table)))]


def disorder(conn: psycopg.Connection, table: str, key: str = "id", where: str = "TRUE", share: float = 0.5) -> None:
    """Rewrite the first `share` of the rows (by `key`, among those matching `where`) without changing
    them, so that their new versions sit after the others: the table's physical order, and the
    order of an index on anything but `key`, no longer follow `key`. Commit to show it to other sessions.

    A check that judges order calls this first: an answer that forgot ORDER BY then gets rows in the
    wrong order, as it would on any table that has seen updates.
    """
    from psycopg import sql

    col = conn.execute(sql.SQL("SELECT {} FROM {} LIMIT 0").format(sql.SQL(key), sql.Identifier(table))).description[0].name
    n = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(sql.Identifier(table), sql.SQL(where))).fetchone()[0]
    k = max(1, int(n * share))
    conn.execute(sql.SQL("UPDATE {t} SET {c} = {c} WHERE ctid IN (SELECT ctid FROM {t} WHERE {w} ORDER BY {k} LIMIT %s)")
                 .format(t=sql.Identifier(table), c=sql.Identifier(col), w=sql.SQL(where), k=sql.SQL(key)), (k,))


# --- speed ---------------------------------------------------------------------------------------

def best_time(fn: Callable[[], Any], runs: int = 3) -> float:
    """The shortest of `runs` timings of fn() in seconds: the run least disturbed by a busy machine."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def slower_than(learner: float, reference: float, margin: float) -> bool:
    """True when the learner's best time is more than `margin` times the reference's best time."""
    return learner > reference * margin


# --- the progress board: every check's outcome, recorded from one place ------------------------------

_outcome_seen: dict[str, Any] = {}
"""What the running check said about itself: the exercise number it named (run, passed, not_done) and its
success line. A fallback: the exercise normally comes from the notebook whose check cell calls the check."""

_depth = threading.local()


def _outcome_of(error: BaseException | None) -> tuple[str, str]:
    if error is None:
        return "passed", str(_outcome_seen.get("passed", ""))
    if isinstance(error, NotDone):
        return "not done", ""
    if isinstance(error, CheckFailed):
        return "failed", error.observed
    return "error", f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def _record(module: str, name: str, url: str | None, error: BaseException | None, *, wait: bool = True):
    """Record one outcome on the board (never raises); the recording thread when `wait` is false."""
    try:
        from .. import board

        exercise = board.exercise_of(f"{module}.{name}")
        lesson, number = (exercise.lesson, exercise.number) if exercise else (module, _outcome_seen.get("exercise"))
        outcome, message = _outcome_of(error)
        start = board.record if wait else board.start_recording
        return start(lesson, number, outcome, message, check=f"{module}.{name}", database_url=url)
    except Exception:  # noqa: BLE001 - recording never fails a check
        return None


def _recorded(fn: Callable, module: str) -> Callable:
    """`fn` (a check) that records its outcome when it ends; a check called by another records nothing."""
    import functools

    def enter() -> tuple[bool, str | None]:
        outer = getattr(_depth, "n", 0) == 0
        _depth.n = getattr(_depth, "n", 0) + 1
        if outer:
            _outcome_seen.clear()
        return outer, os.environ.get("DATABASE_URL")

    def leave(outer: bool, url: str | None, error: BaseException | None, wait: bool = True):
        _depth.n -= 1
        return _record(module, fn.__name__, url, error, wait=wait) if outer else None

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def arecording(*args, **kwargs):
            outer, url = enter()
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                thread = leave(outer, url, exc, wait=False)
                await _until_recorded(thread)
                raise
            except BaseException:  # an interrupt: no verdict to record
                leave(False, url, None)
                raise
            await _until_recorded(leave(outer, url, None, wait=False))
            return result
        return arecording

    @functools.wraps(fn)
    def recording(*args, **kwargs):
        outer, url = enter()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            leave(outer, url, exc)
            raise
        except BaseException:
            leave(False, url, None)
            raise
        leave(outer, url, None)
        return result
    return recording


async def _until_recorded(thread: threading.Thread | None, wait: float = 1.0) -> None:
    """Wait (without holding the event loop) for a recording thread, at most `wait` seconds."""
    deadline = time.monotonic() + wait
    while thread is not None and thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def _record_outcomes(module: types.ModuleType) -> None:
    """Wrap the checks of a check module (its public functions) so that each records its outcome."""
    short = module.__name__.rsplit(".", 1)[-1]
    for name, obj in list(vars(module).items()):
        if (inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == module.__name__
                and not getattr(obj, "_records_outcome", False)):
            wrapped = _recorded(obj, short)
            wrapped._records_outcome = True
            setattr(module, name, wrapped)


class _ChecksPackage(types.ModuleType):
    """This package: a check module is wrapped as the import system hands it over (it sets the submodule as an
    attribute of its package), so no check module has to do anything to be recorded."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}":
            try:
                _record_outcomes(value)
            except Exception:  # noqa: BLE001 - a module whose checks cannot be wrapped still works, unrecorded
                pass
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ChecksPackage
