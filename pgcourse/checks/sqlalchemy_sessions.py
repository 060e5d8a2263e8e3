"""Checks for lesson 08 (SQLAlchemy engines and sessions): the request-scoped session dependency, an N+1
removed, and a retry that unwraps the driver's error from SQLAlchemy's.

Each check builds an engine of its own (a small pool, tagged sessions), hands the learner's function a
sessionmaker or a session on it, and judges what happened: the pool's checkouts and checkins, the rows
committed, the statements and rows the server sent, the errors that reached the caller.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql as _sql
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from . import (
    CheckFailed,
    NotDone,
    check_connect,
    database_url,
    learner_env,
    new_tag,
    passed,
    query_text,
    run,
    sessions_of,
    stop_sessions,
    wait_for_sessions_to_end,
    with_params,
)

SCHEMA = "exercise08"
POOL_SIZE = 2
POOL_TIMEOUT = 2  # seconds a request waits for a connection from the check's pool
CALL_LIMIT = 20  # seconds one call of the learner's function may take


class _Label:
    """An argument shown by name in the check's messages (`get_session(SessionLocal)`)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_QUIET = logging.Logger("pgcourse.checks.sqlalchemy_sessions.engine", logging.CRITICAL)
"""A logger outside logging's registry, so the check's output capture (which lowers every registered logger to
DEBUG) leaves it quiet: SQLAlchemy would otherwise log every row it fetches while the learner's code runs."""


def _engine(tag: str, **kwargs) -> Engine:
    """An engine of the check's own on DATABASE_URL, through psycopg, its sessions tagged `tag`."""
    url = make_url(with_params(database_url(), application_name=tag)).set(drivername="postgresql+psycopg")
    engine = create_engine(url, **kwargs)
    engine.logger = engine.pool.logger = _QUIET  # the capture turns every logger to DEBUG: not one line per row
    return engine


@contextlib.contextmanager
def _schema(*tables: str) -> Iterator[psycopg.Connection]:
    """The check's schema with these tables dropped first and at the end; an autocommit admin connection."""
    with check_connect(autocommit=True) as admin:
        admin.execute(_sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_sql.Identifier(SCHEMA)))
        drop = _sql.SQL("DROP TABLE IF EXISTS {}").format(
            _sql.SQL(", ").join(_sql.Identifier(SCHEMA, t) for t in tables))
        admin.execute(drop)
        try:
            yield admin
        finally:
            with contextlib.suppress(psycopg.Error):
                admin.execute(drop)
                admin.execute(_sql.SQL("DROP SCHEMA IF EXISTS {}").format(_sql.Identifier(SCHEMA)))


def _end_sessions(admin: psycopg.Connection, *tags: str) -> None:
    for tag in tags:
        if sessions_of(admin, tag):
            stop_sessions(tag)
            wait_for_sessions_to_end(admin, tag, 5)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# --- exercise 1: the session dependency ----------------------------------------------------------

class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "requests"
    __table_args__ = {"schema": SCHEMA}

    request: Mapped[int] = mapped_column(primary_key=True)


ROUNDS = 3
KINDS = ["ok", "error", "db_error", "abandoned", "commit_error", "ctx_ok", "ctx_error", "pair", "overlap"]
ENDED = {"ok": "it succeeded", "error": "its handler raised ValueError"}
MAKER_MARK = "made by the check's SessionLocal"  # in the info of every session the check's sessionmaker makes
PERSISTS = {"ok", "ctx_ok"}
TOLD = {
    "ok": "a request that succeeded (your generator resumed with next(gen))",
    "error": "a request whose handler raised ValueError (thrown into your generator with gen.throw)",
    "db_error": "a request whose flush failed with IntegrityError (thrown into your generator with gen.throw)",
    "commit_error": "a request whose pending row breaks a primary key only when the session flushes at commit",
    "abandoned": "a request abandoned before it finished (gen.close(): GeneratorExit at your yield)",
    "ctx_ok": "a request that succeeded, driven by `with contextlib.contextmanager(get_session)(SessionLocal)`",
    "ctx_error": "a request that raised ValueError inside `with contextlib.contextmanager(get_session)(SessionLocal)`",
}


class _Served:
    """What happened to one request: the session yielded, and how the generator ended."""

    def __init__(self, kind: str, number: int):
        self.kind, self.number = kind, number
        self.returned: Any = None
        self.not_generator = False
        self.session: Any = None
        self.start_error: BaseException | None = None
        self.thrown: BaseException | None = None
        self.end: tuple[str, Any] | None = None  # ('stop',) ('raised', exc) ('yielded again',)
        self.handler_error: BaseException | None = None
        self.flush = True  # False: the handler's row stays pending (unflushed) until the dependency commits
        self.disturbed_by: _Served | None = None  # another request whose end changed this one's session
        self.row: _Row | None = None


def _write(session: Session, number: int, served: _Served) -> bool:
    """The check's handler: one row for this request, flushed (or left pending). False when that failed."""
    try:
        served.row = _Row(request=number)  # kept: a session holds its unchanged persistent objects weakly
        session.add(served.row)
        if served.flush:
            session.flush()
        return True
    except Exception as exc:  # noqa: BLE001 - judged by the caller
        served.handler_error = exc
        return False


def _resume(gen, how: Callable[[], Any]) -> tuple:
    try:
        how()
    except StopIteration:
        return ("stop",)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the check judges what the learner's generator raised
        return ("raised", exc)
    return ("yielded again",)


def _start(fn, maker, served: _Served):
    """Call the learner's function and take the session it yields; None when there is none."""
    try:
        gen = fn(maker)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001
        served.start_error = exc
        return None
    if not inspect.isgenerator(gen):
        served.not_generator, served.returned = True, gen
        return None
    try:
        served.session = next(gen)
    except StopIteration:
        served.end = ("stop",)
        return None
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001
        served.start_error = exc
        return None
    if not isinstance(served.session, Session):
        gen.close()
        return None
    return gen


def _finish(gen, served: _Served, duplicate: int) -> None:
    """End a request whose row was written: succeed, fail, or abandon it, by its kind."""
    kind = served.kind
    if served.handler_error is not None:
        served.end = _resume(gen, gen.close)
    elif kind == "ok":
        served.end = _resume(gen, lambda: next(gen))
    elif kind == "error":
        served.thrown = ValueError(f"request {served.number} failed on purpose")
        served.end = _resume(gen, lambda: gen.throw(served.thrown))
    elif kind == "db_error":
        served.session.add(_Row(request=duplicate))
        try:
            served.session.flush()
        except IntegrityError as exc:
            served.thrown = exc
        served.end = _resume(gen, lambda: gen.throw(served.thrown or ValueError("no duplicate")))
    elif kind == "commit_error":
        served.session.add(_Row(request=duplicate))  # flushed by the dependency's commit
        served.end = _resume(gen, lambda: next(gen))
    elif kind == "abandoned":
        served.end = _resume(gen, gen.close)


def _serve_with(fn, maker, served: _Served) -> None:
    """The contextlib form: the way FastAPI and most frameworks drive a yield dependency."""
    manager = contextlib.contextmanager(fn)(maker)
    try:
        with manager as session:
            served.session = session
            if not isinstance(session, Session) or not _write(session, served.number, served):
                return
            if served.kind == "ctx_error":
                served.thrown = ValueError(f"request {served.number} failed on purpose")
                raise served.thrown
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001
        served.end = ("raised", exc)
    else:
        served.end = ("stop",)


def _drive(fn, maker, batch: list[_Served], duplicate: int) -> None:
    """Serve the batch of requests (two at once for a pair) as a web framework would."""
    if batch[0].kind.startswith("ctx"):
        _serve_with(fn, maker, batch[0])
        return
    gens = [_start(fn, maker, served) for served in batch]
    for gen, served in zip(gens, batch, strict=True):  # both requests of a pair hold a connection at once
        if gen is not None:
            _write(served.session, served.number, served)
    for i, (gen, served) in enumerate(zip(gens, batch, strict=True)):
        if gen is not None:
            still_running = [(o, _state_of(o)) for o in batch[i + 1:] if isinstance(o.session, Session)]
            _finish(gen, served, duplicate)
            for other, before in still_running:
                if _state_of(other) != before:
                    other.disturbed_by = served


def _state_of(served: _Served) -> tuple:
    """What a running request's session holds: its transaction, and its row (pending or flushed)."""
    session, row = served.session, served.row
    return session.in_transaction(), row is not None and row in session, row is not None and row in session.new


def _batches() -> list[list[_Served]]:
    batches, number = [], 1
    for _ in range(ROUNDS):
        for kind in KINDS:
            if kind == "pair":
                batches.append([_Served("ok", number), _Served("error", number + 1)])
                number += 2
            elif kind == "overlap":  # the first ends while the second holds an unflushed row, then commits
                batches.append([_Served("ok", number), _Served("ok", number + 1)])
                batches[-1][1].flush = False
                number += 2
            else:
                batches.append([_Served(kind, number)])
                number += 1
    return batches


def _dependency_verdict(served: _Served, engine: Engine, others: list[_Served]) -> None:
    told = TOLD.get(served.kind, served.kind)
    if served.not_generator:
        got = served.returned
        if isinstance(got, Session):
            raise CheckFailed("get_session(SessionLocal) returned a Session instead of yielding one: with `return`,"
                              " no code of yours runs after the request, so nothing commits, rolls back or closes"
                              " it. Each request keeps a connection checked out until the garbage collector finds"
                              f" the session; a pool of {POOL_SIZE} then fails with 'QueuePool limit of size"
                              f" {POOL_SIZE} overflow 0 reached'.",
                              "make get_session a generator: `yield` the session, and put the clean-up after it")
        if inspect.isasyncgen(got) or inspect.iscoroutine(got):
            with contextlib.suppress(Exception):
                got.close()
            raise CheckFailed("get_session(SessionLocal) is an `async def` function: SessionLocal makes sync"
                              " sessions, and the framework calls a sync dependency with next(), not await.",
                              "write a plain `def` generator function that yields the session")
        if hasattr(got, "__enter__") and hasattr(got, "__exit__"):
            raise CheckFailed(f"get_session(SessionLocal) returned {type(got).__name__}, a context manager, not a"
                              " generator.", "write a plain generator function (no @contextmanager): the framework"
                              " wraps it itself, and the check drives it both ways")
        raise CheckFailed(f"get_session(SessionLocal) returned {got!r:.80}, not a generator.",
                          "yield a session from SessionLocal, inside try/finally")
    if served.start_error is not None:
        raise CheckFailed(f"get_session(SessionLocal) raised {_first_line(served.start_error)} before yielding a"
                          " session.", "make a session with SessionLocal() and yield it")
    if served.session is None and served.end == ("stop",):
        raise CheckFailed("Your generator ended without yielding a session.", "yield the session once")
    if not isinstance(served.session, Session):
        raise CheckFailed(f"Your generator yielded {type(served.session).__name__}, not a Session.",
                          "yield a session made by calling SessionLocal(), not the sessionmaker itself")
    if served.session.bind is not engine:
        raise CheckFailed("Your generator yielded a session on an engine of its own, not on the one SessionLocal"
                          " uses: an engine per request opens connections outside the application's pool.",
                          "make the session with SessionLocal(); create no engine in the dependency")
    if served.session.info.get(MAKER_MARK) is not True:
        raise CheckFailed("Your generator yielded a Session that SessionLocal did not make (on the same engine, but"
                          " built by hand): it has none of the settings the application gave its sessionmaker"
                          " (expire_on_commit, info, its Session class, its event listeners).",
                          "make the session by calling SessionLocal() (or SessionLocal.begin()), not Session(...)")
    if any(o is not served and o.session is served.session for o in others):
        raise CheckFailed("Two requests served at the same time got the same Session: a session belongs to one"
                          " request (it holds that request's transaction and objects).",
                          "make a new session with SessionLocal() on every call; keep none between calls")
    for victim in (o for o in others if o.disturbed_by is served):
        raise CheckFailed(f"Two requests were served at once. When request {served.number} ended"
                          f" ({ENDED.get(served.kind, served.kind)}), your dependency also"
                          f" changed the session of request {victim.number}, which was still running: that session"
                          " lost its transaction or its " + ("flushed" if victim.flush else "pending, unflushed")
                          + " row (it was closed, committed or rolled back from the other request). A call of"
                          " close_all_sessions() closes every session of the process; a session kept in a global"
                          " variable is the latest request's, not this one's.",
                          "keep the session in a local variable of the generator, and commit, roll back and close"
                          " only that one")
    if served.handler_error is not None:
        raise CheckFailed(f"Writing a row through the session you yielded failed, for {told}:"
                          f" {_first_line(served.handler_error)}.",
                          "yield a fresh, open session, and do nothing with it before the request uses it")
    end = served.end or ("stop",)
    if served.kind in ("ok", "ctx_ok"):
        if end[0] == "raised":
            raise CheckFailed(f"After {told}, your generator raised {_first_line(end[1])}.",
                              "on success, commit and close; read the error above")
        if end[0] == "yielded again":
            raise CheckFailed(f"After {told}, your generator yielded a second time.", "yield exactly once")
    elif served.kind == "abandoned":
        if end[0] == "raised":
            raise CheckFailed(f"After {told}, closing your generator raised {_first_line(end[1])}.",
                              "let GeneratorExit through: clean up in a finally block, and do not yield again")
    elif served.kind == "commit_error":
        if end[0] != "raised":
            raise CheckFailed(f"After {told}, the commit failed (duplicate key), but the error did not reach the"
                              " caller: resuming your generator ended quietly, so the client would be told the"
                              " request succeeded.", "let an error of the commit propagate: do not catch it, or"
                              " re-raise it after rolling back")
        if not any(isinstance(e, IntegrityError) for e in _chain(end[1])):
            raise CheckFailed(f"After {told}, your generator raised {_first_line(end[1])} instead of the commit's"
                              " IntegrityError.", "let the commit's error propagate as it is")
    else:
        if end[0] != "raised":
            raise CheckFailed(f"After {told}, the request's error ({_first_line(served.thrown)}) did not reach the"
                              " caller: your generator " + ("ended normally" if end[0] == "stop" else "yielded again")
                              + ", so the framework would answer as if the request had succeeded.",
                              "roll back if you like, then re-raise with a bare `raise`; never swallow the error")
        raised, cause = end[1], end[1]
        while cause is not None and cause is not served.thrown:
            cause = cause.__cause__
        if cause is None:
            raise CheckFailed(f"After {told}, your generator raised {_first_line(raised)} instead of the request's"
                              f" own error ({_first_line(served.thrown)}).",
                              "re-raise the request's error with a bare `raise` (or raise yours `from` it); do not"
                              " commit or use the session after a failed request")
    if engine.pool.checkedout():
        raise CheckFailed(f"After {told}, a connection was still checked out of the pool: the session was not"
                          f" closed. With pool_size={POOL_SIZE}, two such requests and the next one waits"
                          f" {POOL_TIMEOUT} s and fails with 'QueuePool limit of size {POOL_SIZE} overflow 0 reached'.",
                          "close the session in a `finally:` around the yield (or use `with SessionLocal() as"
                          " session:`), so that it closes however the request ends")


def _rows_verdict(served: _Served, admin: psycopg.Connection) -> None:
    found = admin.execute(_sql.SQL("SELECT count(*) FROM {} WHERE request = %s").format(
        _sql.Identifier(SCHEMA, "requests")), (served.number,)).fetchone()[0]
    told = TOLD[served.kind]
    if served.kind in PERSISTS and not found:
        raise CheckFailed(f"After {told}, its row was not in the table: the dependency did not commit. The"
                          " handlers in this check do not commit; the dependency does, when the request succeeds.",
                          "commit after the yield (or use SessionLocal.begin()), when no error came back")
    if served.kind not in PERSISTS and found:
        why = ("a finally block cannot tell success from failure" if served.kind != "abandoned"
               else "GeneratorExit is not a success")
        raise CheckFailed(f"After {told}, its row was committed: {why}.",
                          "commit only on the success path (after the yield, or in an else: block); roll back"
                          " (or just close) otherwise")


def session_dependency(fn) -> None:
    """Exercise 1: fn(SessionLocal) is a generator that yields one session per request, commits when the
    request succeeds, rolls back when it fails (the error propagates), and always closes the session.
    Driven many times, plainly and through contextlib, with failures in the middle, on a small pool."""
    tag, pool_tag = new_tag(1), new_tag("1 pool")
    with _schema("requests") as admin:
        admin.execute(_sql.SQL("CREATE TABLE {} (request int PRIMARY KEY)").format(_sql.Identifier(SCHEMA, "requests")))
        admin.execute(_sql.SQL("INSERT INTO {} VALUES (0)").format(_sql.Identifier(SCHEMA, "requests")))
        engine = _engine(pool_tag, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT)
        counts = {"checkout": 0, "checkin": 0}
        event.listen(engine, "checkout", lambda *a: counts.__setitem__("checkout", counts["checkout"] + 1))
        event.listen(engine, "checkin", lambda *a: counts.__setitem__("checkin", counts["checkin"] + 1))
        maker = sessionmaker(engine, info={MAKER_MARK: True})
        batches = _batches()
        try:
            with learner_env(tag):
                for batch in batches:
                    def get_session(_label, batch=batch):
                        _drive(fn, maker, batch, duplicate=0)
                    run(1, get_session, _Label("SessionLocal"), tag=tag, timeout=CALL_LIMIT)
                    for served in batch:
                        _dependency_verdict(served, engine, batch)
                    if sessions_of(admin, tag):
                        raise CheckFailed("Your dependency opened connections of its own (from DATABASE_URL), outside"
                                          " SessionLocal's pool.", "use only SessionLocal to make the session")
                    for served in batch:
                        _rows_verdict(served, admin)
            idle = [s for s in sessions_of(admin, pool_tag) if s["state"] != "idle"]
            if idle:
                raise CheckFailed(f"After the requests, {len(idle)} of the pool's sessions were {idle[0]['state']}.",
                                  "close the session however the request ends")
        finally:
            for served in (s for b in batches for s in b if isinstance(s.session, Session)):
                with contextlib.suppress(Exception):
                    served.session.close()  # left open by a failed request: nothing of it outlives the check
            engine.dispose()
            _end_sessions(admin, tag, pool_tag)
    requests = sum(len(b) for b in batches)
    failing = sum(1 for b in batches for s in b if s.kind not in PERSISTS)
    passed(1, f"{requests} requests ({failing} failing or abandoned, some two at once, some through contextlib):"
              " successes committed, failures rolled back with their error raised to the caller, and every"
              f" connection back in the pool ({counts['checkin']} checkins for {counts['checkout']} checkouts).")


# --- exercise 2: an N+1 removed ------------------------------------------------------------------

STATEMENTS_ALLOWED = 4
CUSTOMERS_INDEX = "exercise08_customers_created_at"
ROWS_MARGIN = (2, 20)  # rows sent may be up to twice what the customers, orders and items found come to, plus 20
UTC = dt.UTC
TOTALS_CASES = [("SE", dt.datetime(2025, 12, 1, tzinfo=UTC)), ("IT", dt.datetime(2025, 12, 20, tzinfo=UTC)),
                ("US", dt.datetime(2025, 11, 15, tzinfo=UTC)), ("DE", dt.datetime(2026, 1, 1, tzinfo=UTC)),
                ("X'", dt.datetime(2024, 1, 1, tzinfo=UTC)), ("se", dt.datetime(2025, 12, 1, tzinfo=UTC)),
                ("S_", dt.datetime(2025, 12, 1, tzinfo=UTC))]
"""Countries and dates: a few dozen customers, one of them without orders (IT), about ninety, and none
(a date after the last sign-up; a country no customer has, with a quote in it; a country in lower case; one that
is a LIKE pattern). _totals_cases adds three taken from the data."""
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


def _totals_cases(admin: psycopg.Connection) -> list[tuple[str, dt.datetime]]:
    """TOTALS_CASES, then: `since` equal to a Swedish customer's exact sign-up (a mid-day one, 20 before the last),
    one second later (the same day: that customer drops out), and a German customer's sign-up minus an hour,
    written at +02:00 (read as UTC wall-clock time, it would be an hour after that customer)."""
    def signed_up(country: str, hours: tuple[int, int], offset: int) -> dt.datetime:
        return admin.execute("SELECT created_at FROM customers WHERE country = %s AND extract(hour FROM created_at AT"
                             " TIME ZONE 'UTC') BETWEEN %s AND %s ORDER BY created_at DESC OFFSET %s LIMIT 1",
                             (country, *hours, offset)).fetchone()[0].astimezone(UTC)
    exact = signed_up("SE", (8, 15), 20)
    german = signed_up("DE", (4, 20), 40)
    return [*TOTALS_CASES, ("SE", exact), ("SE", exact + dt.timedelta(seconds=1)),
            ("DE", (german - dt.timedelta(hours=1)).astimezone(PLUS_TWO))]


def _counting_cursors(log: list[list]) -> tuple[type, type]:
    """psycopg cursor classes that note [SQL text, rows sent to Python] for every statement they run."""

    class CountingCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            entry = [query_text(query, self), 0]
            log.append(entry)
            result = super().execute(query, params, **kwargs)
            with contextlib.suppress(Exception):
                entry[1] = self.pgresult.ntuples if self.pgresult is not None else 0
            return result

        def executemany(self, query, params_seq, **kwargs):
            log.append([query_text(query, self), 0])
            return super().executemany(query, params_seq, **kwargs)

        def stream(self, query, params=None, **kwargs):
            entry = [query_text(query, self), 0]
            log.append(entry)
            for row in super().stream(query, params, **kwargs):
                entry[1] += 1
                yield row

    class CountingServerCursor(psycopg.ServerCursor):
        def execute(self, query, params=None, **kwargs):
            self._entry = [query_text(query, self), 0]
            log.append(self._entry)
            return super().execute(query, params, **kwargs)

        def fetchone(self):
            row = super().fetchone()
            self._entry[1] += row is not None
            return row

        def fetchmany(self, size=0):
            rows = super().fetchmany(size)
            self._entry[1] += len(rows)
            return rows

        def fetchall(self):
            rows = super().fetchall()
            self._entry[1] += len(rows)
            return rows

        def __iter__(self):
            for row in super().__iter__():
                self._entry[1] += 1
                yield row

    return CountingCursor, CountingServerCursor


def _reference_totals(admin: psycopg.Connection, country: str, since: dt.datetime) -> tuple[list, int]:
    """The right answer, and the rows it is made of (customers, their orders, and those orders' items)."""
    rows = admin.execute(
        "SELECT c.id, c.name, o.id, coalesce(sum(i.quantity * i.unit_price), 0), count(i.order_id)"
        " FROM customers c LEFT JOIN orders o ON o.customer_id = c.id LEFT JOIN order_items i ON i.order_id = o.id"
        " WHERE c.country = %s AND c.created_at >= %s GROUP BY c.id, c.name, o.id ORDER BY c.id, o.id",
        (country, since)).fetchall()
    answer: list = []
    for cid, name, oid, total, _items in rows:
        if not answer or answer[-1][0] != cid:
            answer.append((cid, name, []))
        if oid is not None:
            answer[-1][2].append((oid, total))
    size = len(answer) + sum(len(a[2]) for a in answer) + sum(r[4] for r in rows)
    return answer, size


def _normalised(result) -> list | None:
    """The learner's result as [(id, name, [(order id, total)])], or None when it has another shape."""
    try:
        return [(cid, name, [tuple(o) for o in orders]) for cid, name, orders in result]
    except (TypeError, ValueError):
        return None


def _pasted(log: list[list], country: str, since: dt.datetime) -> str | None:
    """The part of a statement around a value written into its text (the country quoted, or since's date)."""
    quoted = "'" + country.replace("'", "''") + "'"
    dates = {since.date().isoformat(), since.astimezone(UTC).date().isoformat()}
    for statement, _rows in log:
        flat = " ".join(statement.split())
        at = min((i for i in (flat.find(v) for v in (quoted, *dates)) if i >= 0), default=-1)
        if at >= 0:
            start = max(0, flat.rfind(" WHERE ", 0, at + 1), at - 70) if at > 70 else 0
            return ("..." if start else "") + flat[start:start + 160] + ("..." if start + 160 < len(flat) else "")
    return None


def _totals_verdict(result, answer, size, log, country, since) -> None:
    call = f"order_totals(session, {country!r}, {since.isoformat()})"
    customers, orders = len(answer), sum(len(a[2]) for a in answer)
    statements, rows = len(log), sum(entry[1] for entry in log)
    if not log:
        raise CheckFailed(f"{call} ran no statement through the session it was given: its answer came from"
                          " somewhere else (a connection of its own, or a cache).",
                          "query through the `session` argument, on every call")
    got = _normalised(result) if isinstance(result, (list, tuple)) else None
    if got is None:
        raise CheckFailed(f"{call} returned {type(result).__name__}, not a list of (customer id, name, [(order id,"
                          " total), ...]) tuples.", "return a list with one tuple per customer")
    if pasted := _pasted(log, country, since):
        raise CheckFailed(f"{call} wrote a value into the SQL text: {pasted!r}.",
                          "let the ORM send values as parameters (Customer.country == country), never in the text")
    floats = [total for _cid, _name, orders in got for _oid, total in orders if isinstance(total, float)]
    if floats:
        raise CheckFailed(f"{call} returned order totals of type float ({floats[0]!r}, ...), not Decimal: a float holds"
                          " most amounts only approximately (Decimal('0.1') * 3 is exact, 0.1 * 3 is"
                          " 0.30000000000000004), so money stays Decimal, as the numeric column gives it.",
                          "sum quantity * unit_price as the ORM returns them (Decimal), or take SQL's sum() as it is;"
                          " no cast to Float, no float()")
    if got != answer:
        wrong = next((i for i, (a, b) in enumerate(zip(got, answer, strict=False)) if a != b), min(len(got), len(answer)))
        shown = got[wrong] if wrong < len(got) else "nothing"
        wanted = answer[wrong] if wrong < len(answer) else "nothing"
        raise CheckFailed(f"{call} returned {len(got)} customers; at position {wrong} it has {str(shown)[:150]}"
                          f" where {str(wanted)[:150]} was expected ({customers} customers, {orders} orders).",
                          "customers whose country is exactly `country`, who signed up at or after the instant"
                          " `since` (>=, to the second, in its own time zone: compare it as it is, in SQL), ordered"
                          " by id, each with their orders by id and each order's total (sum of quantity *"
                          " unit_price, a Decimal); a customer without orders has an empty list")
    limit = ROWS_MARGIN[0] * size + ROWS_MARGIN[1]
    if rows > limit:
        biggest = max(log, key=lambda e: e[1])
        raise CheckFailed(f"{call} made the server send {rows:,} rows to Python, where the customers, their orders"
                          f" and their items come to {size:,}: the largest statement sent {biggest[1]:,} rows"
                          f" ({' '.join(biggest[0].split())[:120]!r}). Loading a whole table and filtering in Python"
                          " moves every row over the wire.", "filter in SQL (WHERE on country and created_at) and"
                          " let the loader options fetch only the orders and items of the customers found")
    if statements > STATEMENTS_ALLOWED:
        raise CheckFailed(f"{call} ran {statements} statements for {customers} customers and {orders} orders: a"
                          " relationship read in a loop runs one lazy load per object it is read on (N+1). At most"
                          f" {STATEMENTS_ALLOWED} statements are allowed, whatever the number of customers.", "tell the query to load Customer.orders and Order.items with the customers"
                          " (a loader option such as selectinload or joinedload), or compute the totals in SQL")


@contextlib.contextmanager
def _unordered_customers(admin: psycopg.Connection) -> Iterator[None]:
    """While inside, customers found by sign-up date come from an index on created_at, in that order, unless the
    query orders them (the check's engine turns sequential and bitmap scans off): not by id by accident."""
    index = _sql.Identifier(CUSTOMERS_INDEX)
    admin.execute("SET lock_timeout = '5s'")
    try:
        admin.execute(_sql.SQL("CREATE INDEX IF NOT EXISTS {} ON customers (created_at)").format(index))
    except psycopg.errors.LockNotAvailable:
        raise CheckFailed("The check could not add its index to customers: another session keeps a transaction open"
                          " that changed that table.", "commit or roll back in your other notebooks (or restart"
                          " their kernels), then run this check again") from None
    try:
        yield
    finally:
        with contextlib.suppress(psycopg.Error):
            admin.execute(_sql.SQL("DROP INDEX IF EXISTS {}").format(index))


def order_totals(fn) -> None:
    """Exercise 2: fn(session, country, since) -> [(customer id, name, [(order id, total)])]. Compared with a
    reference for several countries and dates (none found included); the statements each call runs (at most
    4) and the rows the server sends (about what the answer is made of) are counted by the connection's cursors."""
    tag, pool_tag = new_tag(2), new_tag("2 pool")
    log: list[list] = []
    cursor, server_cursor = _counting_cursors(log)
    engine = _engine(pool_tag, pool_size=1, max_overflow=0, pool_timeout=POOL_TIMEOUT,
                     connect_args={"options": "-c enable_seqscan=off -c enable_bitmapscan=off -c TimeZone=UTC"})

    @event.listens_for(engine, "connect")
    def _count(dbapi_connection, _record):
        dbapi_connection.cursor_factory, dbapi_connection.server_cursor_factory = cursor, server_cursor

    total_statements = 0
    with check_connect(autocommit=True) as admin, _unordered_customers(admin):
        try:
            with engine.connect() as warm:  # the dialect's first queries are not the learner's
                warm.execute(text("SELECT 1"))
            cases = _totals_cases(admin)
            with learner_env(tag):
                for country, since in cases:
                    answer, size = _reference_totals(admin, country, since)
                    log.clear()
                    with Session(engine) as session:
                        def order_totals(*_shown, session=session, country=country, since=since):
                            return fn(session, country, since)
                        result = run(2, order_totals, _Label("session"), country, _Label(since.isoformat()),
                                     tag=tag, timeout=CALL_LIMIT,
                                     hint="run your function in a cell with a session and the same arguments")
                    if sessions_of(admin, tag):
                        raise CheckFailed("order_totals opened connections of its own (from DATABASE_URL).",
                                          "use only the session it is given")
                    _totals_verdict(result, answer, size, list(log), country, since)
                    total_statements += len(log)
        finally:
            engine.dispose()
            _end_sessions(admin, tag, pool_tag)
    passed(2, f"the right customers, orders and totals for {len(cases)} countries and instants (four with no"
              " customers; one at a customer's exact sign-up, one a second later, one at +02:00) in"
              f" {total_statements} statements in all, and no more rows than the answer needs.")


# --- exercise 3: retry what the server says to retry ------------------------------------------------

RETRYABLE = ("40001", "40P01")


class _Runaway(BaseException):
    """Raised by the check's work when a retry loop has long passed its limit (not an Exception: it ends it)."""


def _sqlstates(exc: BaseException | None) -> list[str]:
    found = []
    for e in _chain(exc):
        orig = getattr(e, "orig", None) if isinstance(e, DBAPIError) else e
        state = getattr(orig, "sqlstate", None)
        if state:
            found.append(state)
    return found


class _Retry:
    """One scenario: work the check wrote, which fails in a given way on its first `fails` calls."""

    def __init__(self, name: str, failure: str, fails: int, attempts: int, admin: psycopg.Connection):
        self.name, self.failure, self.fails, self.attempts, self.admin = name, failure, fails, attempts, admin
        self.sessions: list[Any] = []
        self.python_error: BaseException | None = None
        self.starts: list[float] = []  # when each call of the work began and ended (monotonic)
        self.ends: list[float] = []

    def table(self, name: str) -> _sql.Composed:
        return _sql.SQL("{}").format(_sql.Identifier(SCHEMA, name))

    def work(self, session: Session) -> int:
        self.starts.append(time.monotonic())
        try:
            return self._work(session)
        finally:
            self.ends.append(time.monotonic())

    def _work(self, session: Session) -> int:
        self.sessions.append(session)
        n = len(self.sessions)
        if n > self.attempts + 3:
            raise _Runaway
        value = session.execute(text("SELECT value FROM exercise08.counter WHERE id = 1")).scalar_one()
        failing = n <= self.fails
        if failing and self.failure == "40001":  # a concurrent update, committed between our read and our write
            self.admin.execute(_sql.SQL("UPDATE {} SET value = value + 1 WHERE id = 1").format(self.table("counter")))
        if failing and self.failure == "40P01":
            self.deadlock(session)
        if self.failure == "commit":  # write skew: the check's transaction commits first, so our COMMIT fails
            session.execute(text("UPDATE exercise08.counter SET value = :v WHERE id = 1"), {"v": value + 100})
            session.execute(text("SELECT count(*) FROM exercise08.oncall WHERE on_call"))
            if failing:
                self.admin.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                self.admin.execute(_sql.SQL("SELECT count(*) FROM {} WHERE on_call").format(self.table("oncall")))
                session.execute(text("UPDATE exercise08.oncall SET on_call = NOT on_call WHERE doctor = 'a'"))
                self.admin.execute(_sql.SQL("UPDATE {} SET on_call = NOT on_call WHERE doctor = 'b'").format(
                    self.table("oncall")))
                self.admin.execute("COMMIT")
            return value + 100  # no statement after the check's commit: the failure comes at COMMIT
        if failing and self.failure == "40003":  # class 40 (transaction rollback), but neither 40001 nor 40P01
            session.execute(text("DO $$ BEGIN RAISE EXCEPTION 'statement completion unknown'"
                                 " USING ERRCODE = '40003'; END $$"))
        if failing and self.failure == "23505":
            session.execute(text("INSERT INTO exercise08.counter VALUES (1, 0)"))
        if failing and self.failure == "55P03":
            session.execute(text("SET LOCAL lock_timeout = '50ms'"))
            session.execute(text("SELECT value FROM exercise08.counter WHERE id = 2 FOR UPDATE"))
        if failing and self.failure in ("ValueError", "RuntimeError"):
            self.python_error = (ValueError("the work found a bug") if self.failure == "ValueError"
                                 else RuntimeError("could not serialize the report to JSON"))
            raise self.python_error
        session.execute(text("UPDATE exercise08.counter SET value = :v WHERE id = 1"), {"v": value + 100})
        return value + 100


    def deadlock(self, session: Session) -> None:
        """A real deadlock: this session locks row 2 and waits for row 3, which the check's session holds; the
        check's session then waits for row 2. This session waited first, so the server's deadlock detector (after
        deadlock_timeout, a second by default) ends its transaction with 40P01."""
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        session.execute(text("UPDATE exercise08.counter SET value = value WHERE id = 2"))
        with check_connect() as blocker:
            blocker.execute(_sql.SQL("UPDATE {} SET value = value WHERE id = 3").format(self.table("counter")))
            closer = threading.Thread(target=self._close_the_cycle, args=(pid, blocker), daemon=True)
            closer.start()
            try:
                session.execute(text("UPDATE exercise08.counter SET value = value WHERE id = 3"))
            finally:
                closer.join(15)
                blocker.rollback()
        # Reached only when the detector chose the check's session instead (a machine too busy to close the
        # cycle within deadlock_timeout): the server raises the same error for this session.
        session.execute(text("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$"))

    def _close_the_cycle(self, pid: int, blocker: psycopg.Connection) -> None:
        """Once the learner's session waits for row 3, ask for row 2 from the session that holds row 3."""
        with contextlib.suppress(psycopg.Error), check_connect(autocommit=True) as watch:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if row and row[0] == "Lock":
                    blocker.execute(_sql.SQL("UPDATE {} SET value = value WHERE id = 2").format(
                        self.table("counter")))
                    return
                time.sleep(0.01)
        with contextlib.suppress(psycopg.Error):
            blocker.rollback()  # never saw the wait: let the learner's session go on


RETRY_SCENARIOS = [
    # name, failure, calls that fail, attempts
    ("two serialization failures (40001, a concurrent update), then success", "40001", 2, 3),
    ("a serialization failure at COMMIT (40001, write skew under SERIALIZABLE), then success", "commit", 1, 3),
    ("a deadlock (40P01, the check's session and yours wait for each other), then success", "40P01", 1, 2),
    ("a serialization failure (40001) every time", "40001", 99, 4),
    ("a serialization failure (40001) with attempts=1", "40001", 99, 1),
    ("a unique violation (23505)", "23505", 99, 5),
    ("a lock timeout (55P03, an OperationalError too)", "55P03", 99, 5),
    ("a statement completion unknown (40003: class 40, transaction rollback, but neither 40001 nor 40P01)", "40003",
     99, 5),
    ("a ValueError raised by the work", "ValueError", 99, 5),
    ("a RuntimeError whose message says 'could not serialize'", "RuntimeError", 99, 5),
    ("no failure", "none", 0, 3),
]


MAX_WAIT = 1.0  # seconds the task allows between two attempts
WAIT_MARGIN = 0.5  # and what the check adds for a busy machine


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def _retry_verdict(sc: _Retry, outcome: tuple, engine: Engine, before: int, after: int) -> None:
    call = f"with_retry(SessionLocal, work, {sc.attempts})"
    calls = len(sc.sessions)
    retryable = sc.failure in ("40001", "commit", "40P01")
    expected_calls = min(sc.fails + 1, sc.attempts) if retryable else 1
    if outcome[0] == "runaway":
        raise CheckFailed(f"{call}, with {sc.name}, ran the work {calls} times before the check stopped it.",
                          "count the attempts, and stop at `attempts` (the first try included)")
    if any(getattr(s, "bind", None) is not engine or s.info.get(MAKER_MARK) is not True for s in sc.sessions):
        raise CheckFailed(f"{call}, with {sc.name}, handed the work a session that SessionLocal did not make (an"
                          " engine of its own?): its transactions do not run the way the application's engine says.",
                          "make every session with the SessionLocal you are given")
    if len({id(s) for s in sc.sessions}) < calls:
        raise CheckFailed(f"{call}, with {sc.name}, ran the work twice in the same Session.",
                          "make a new session with SessionLocal() for each attempt, so that nothing of a failed"
                          " attempt (its objects, its transaction) is carried into the next")
    gaps = [start - end for end, start in zip(sc.ends, sc.starts[1:], strict=False)]
    if gaps and max(gaps) > MAX_WAIT + WAIT_MARGIN:
        longest = max(range(len(gaps)), key=gaps.__getitem__)
        raise CheckFailed(f"{call}, with {sc.name}, waited {gaps[longest]:.1f} s between attempts {longest + 1} and"
                          f" {longest + 2}; at most {MAX_WAIT:g} s is allowed. A wait that doubles without a cap"
                          " (2 ** attempt) is 17 minutes before the 11th attempt, while the request waits.",
                          "cap the wait (for example min(0.05 * 2 ** attempt, 1)), or do not wait at all")
    if retryable and sc.fails < sc.attempts and outcome[0] == "raised":
        states = _sqlstates(outcome[1])
        raise CheckFailed(f"{call}, with {sc.name}, raised {_first_line(outcome[1])} after {calls} call(s) of the"
                          " work" + (f" (SQLSTATE {states[0]})" if states else "") + ".",
                          "SQLAlchemy wraps the driver's error: catch sqlalchemy.exc.DBAPIError (or"
                          " OperationalError) and retry when exc.orig.sqlstate is '40001' or '40P01', also when"
                          " the commit raises it")
    if engine.pool.checkedout():
        raise CheckFailed(f"{call}, with {sc.name}, left a connection checked out of the pool (a session not"
                          " closed).", "open each attempt's session with `with`, so it closes however it ends")
    if retryable and sc.fails < sc.attempts:
        if calls < expected_calls and outcome[0] == "returned":
            lost = after != before + 100 + (sc.fails if sc.failure == "40001" else 0)
            raise CheckFailed(f"{call}, with {sc.name}, ran the work {_times(calls)} and returned: no serialization"
                              " failure or deadlock happened, although the check's session wrote in between"
                              + (" (and that write was lost)" if lost else "") + ". At SERIALIZABLE, the level the"
                              " engine sets, the server stops the second writer; at READ COMMITTED it lets both"
                              " through. Was the isolation level lowered?",
                              "leave the transaction at the engine's isolation level: set no isolation_level on the"
                              " session, its connection or its execution options")
        if calls != expected_calls:
            raise CheckFailed(f"{call}, with {sc.name}, ran the work {_times(calls)}; {expected_calls} calls were"
                              " needed.", "run the work again only after a retryable failure, and not after success")
        if after != before + 100 + (sc.fails if sc.failure == "40001" else 0):
            raise CheckFailed(f"{call}, with {sc.name}, returned, but the work's write was not committed.",
                              "commit the session after the work (or use `with SessionLocal.begin() as session:`)")
        if outcome[1] != after:
            raise CheckFailed(f"{call}, with {sc.name}, returned {outcome[1]!r}, not what the successful work"
                              f" returned ({after!r}).", "return what work(session) returned")
        return
    if sc.failure == "none":
        if outcome[0] == "raised":
            raise CheckFailed(f"{call}, with work that succeeds, raised {_first_line(outcome[1])}.",
                              "run the work in a new session, commit, and return its result")
        if outcome[1] != after or after != before + 100:
            raise CheckFailed(f"{call}, with work that succeeds, returned {outcome[1]!r}; the work returned"
                              f" {before + 100} and its write was " + ("" if after == before + 100 else "not ")
                              + "committed.", "commit after the work, and return what it returned")
        return
    if calls > expected_calls:
        raise CheckFailed(f"{call}, with {sc.name}, ran the work {_times(calls)}; " + (
            f"`attempts` is {sc.attempts}, the first try included." if retryable else
            "that error is not one to retry: a retry cannot fix it."),
            "count the first try as an attempt" if retryable else
            "retry only SQLSTATE 40001 and 40P01, read from exc.orig.sqlstate (or the class of exc.orig); not every"
            " OperationalError, not every class 40 code, not by the message text")
    if outcome[0] != "raised":
        raise CheckFailed(f"{call}, with {sc.name}, returned {outcome[1]!r} instead of raising.",
                          "when the work fails for good, let the error propagate (or raise yours from it)")
    if sc.python_error is not None:
        if sc.python_error not in list(_chain(outcome[1])):
            raise CheckFailed(f"{call}, with {sc.name}, raised {_first_line(outcome[1])}; the work's own error was"
                              " lost.", "let the work's error propagate as it is")
        return
    if isinstance(outcome[1], psycopg.Error):
        raise CheckFailed(f"{call}, with {sc.name}, raised psycopg's {_first_line(outcome[1])} (exc.orig, the"
                          " driver's exception SQLAlchemy wrapped), not SQLAlchemy's error: the application's callers"
                          " catch sqlalchemy.exc.DBAPIError (IntegrityError, OperationalError), and it no longer"
                          " reaches them.", "re-raise the error you caught with a bare `raise` (or raise yours"
                          " `from` it), not exc.orig")
    wanted = {"commit": "40001", "40001": "40001"}.get(sc.failure, sc.failure)
    if wanted not in _sqlstates(outcome[1]):
        raise CheckFailed(f"{call}, with {sc.name}, raised {_first_line(outcome[1])}; the database error"
                          f" (SQLSTATE {wanted}) was lost.", "re-raise the last error with a bare `raise` (or"
                          " raise yours `from` it)")


def with_retry(fn) -> None:
    """Exercise 3: fn(SessionLocal, work, attempts) runs work(session) in a new session per attempt, commits,
    returns its result; retries serialization failures and deadlocks (40001, 40P01, read from the DBAPIError's
    .orig), in work or at commit, at most `attempts` times in all; anything else propagates after one call."""
    tag, pool_tag = new_tag(3), new_tag("3 pool")
    with _schema("counter", "oncall") as admin:
        admin.execute(_sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, value int NOT NULL)").format(
            _sql.Identifier(SCHEMA, "counter")))
        admin.execute(_sql.SQL("INSERT INTO {} VALUES (1, 0), (2, 0), (3, 0)").format(
            _sql.Identifier(SCHEMA, "counter")))
        admin.execute(_sql.SQL("CREATE TABLE {} (doctor text PRIMARY KEY, on_call bool NOT NULL)").format(
            _sql.Identifier(SCHEMA, "oncall")))
        admin.execute(_sql.SQL("INSERT INTO {} VALUES ('a', true), ('b', true)").format(
            _sql.Identifier(SCHEMA, "oncall")))
        engine = _engine(pool_tag, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT,
                         isolation_level="SERIALIZABLE")
        maker = sessionmaker(engine, info={MAKER_MARK: True})
        value = _sql.SQL("SELECT value FROM {} WHERE id = 1").format(_sql.Identifier(SCHEMA, "counter"))
        try:
            with learner_env(tag), check_connect(autocommit=True) as other:
                for name, failure, fails, attempts in RETRY_SCENARIOS:
                    sc = _Retry(name, failure, fails, attempts, other)
                    before = admin.execute(value).fetchone()[0]
                    locker = None
                    if failure == "55P03":
                        locker = check_connect()
                        locker.execute(_sql.SQL("SELECT FROM {} WHERE id = 2 FOR UPDATE").format(
                            _sql.Identifier(SCHEMA, "counter")))
                    try:
                        def with_retry(*_shown, sc=sc):
                            return fn(maker, sc.work, sc.attempts)
                        outcome = ("returned", run(3, with_retry, _Label("SessionLocal"), _Label("work"), attempts,
                                                   tag=tag, timeout=CALL_LIMIT, allowed=(Exception,)))
                    except NotDone:
                        raise
                    except CheckFailed:
                        if len(sc.sessions) > attempts + 3:
                            outcome = ("runaway",)
                        else:
                            raise
                    except Exception as exc:  # noqa: BLE001 - judged below
                        outcome = ("raised", exc)
                    finally:
                        if locker is not None:
                            locker.close()
                        if other.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                            other.execute("ROLLBACK")
                    after = admin.execute(value).fetchone()[0]
                    _retry_verdict(sc, outcome, engine, before, after)
                    if sessions_of(admin, tag):
                        raise CheckFailed("with_retry opened connections of its own (from DATABASE_URL).",
                                          "make every session with the SessionLocal it is given")
        finally:
            engine.dispose()
            _end_sessions(admin, tag, pool_tag)
    passed(3, "serialization failures and deadlocks retried in a new session each time, also when COMMIT failed,"
              " at most `attempts` times, then raised; unique violations, lock timeouts, another class 40 code"
              " and Python errors raised at once; every connection back in the pool.")
