"""Checks for lesson 10 (the production checklist): a URL masked for the log, a serializable transaction retried
with a bound, and the review of a page of assistant-written database code.

The review check runs the learner's module for real, as lesson 09's service check does (and with its tools):
uvicorn in a subprocess, its DATABASE_URL routed through a proxy on 127.0.0.1 that counts the connections it opens
and tagged with an `application_name`. It sends requests (right ones, hostile ones, a load, concurrent transfers),
locks the table the service reads, reads the service's peak memory while it exports events, stops it with SIGTERM,
reads the server's counters and the service's log, and names every mistake it saw, each with the lesson that taught
its fix. Every mistake is judged by what the service did; none by reading its source.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql as _sql

from . import (
    CheckFailed,
    NotDone,
    check_connect,
    database_url,
    mask,
    new_tag,
    passed,
    run,
    secrets_in,
    stop_sessions,
    wait_for_sessions_to_end,
    with_params,
)

SCHEMA = "exercise10"
ORIGINAL_SHA256 = "e47d3ed858acf8824755bd8a7618895a76a62c8ff9ba9aeaec76bfa7d29cde8e"
"""sha256 of exercises/10_production_review.py as shipped: that file unchanged is not done yet."""


# --- exercise 1: a URL fit for the log ----------------------------------------------------------------------

_URLS = [
    ("postgresql://learner:s3cret-Pw@db.example.com:5432/course?sslmode=verify-full",
     "postgresql://learner:***@db.example.com:5432/course?sslmode=verify-full"),
    ("postgresql://app:p%40ss%3Aw0rd@10.0.0.7/shop", "postgresql://app:***@10.0.0.7/shop"),
    ("postgresql://shop:shop@shop:6432/shop", "postgresql://shop:***@shop:6432/shop"),
    ("postgresql+psycopg://svc:hunter2hunter2@localhost/app?application_name=api",
     "postgresql+psycopg://svc:***@localhost/app?application_name=api"),
    ("postgresql://reader@replica.internal/analytics", "postgresql://reader@replica.internal/analytics"),
    ("postgresql:///course", "postgresql:///course"),
]


def _reference_mask(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}").geturl()


def masked_url(fn: Callable[[str], str]) -> None:
    """Exercise 1: masked(url) hides the password, keeps everything else, and leaves a URL without one alone."""
    own = database_url()
    cases = [*_URLS, *([(own, _reference_mask(own))] if "://" in own else [])]
    for i, (url, right) in enumerate(cases):
        shown = "DATABASE_URL" if i == len(_URLS) else repr(url)
        got = run(1, fn, url, timeout=10, secrets=secrets_in() if i == len(_URLS) else [],
                  hint="masked only rewrites the text of its argument: urllib.parse.urlsplit takes it apart")
        if not isinstance(got, str):
            raise CheckFailed(f"masked({shown}) returned {type(got).__name__}, not a str.",
                              "return the URL as text, with the password replaced by ***")
        if got == right:
            continue
        password = urllib.parse.urlsplit(url).password
        if password and "***" not in got and password in got:
            raise CheckFailed(f"masked({shown}) returned {mask(got, [password]) if i == len(_URLS) else repr(got)}:"
                              " the password is still readable.",
                              "replace the password part of the URL (between the user's ':' and '@') with ***")
        raise CheckFailed(f"masked({shown}) returned {mask(got, secrets_in()) if i == len(_URLS) else repr(got)};"
                          f" the right answer is {right!r}.",
                          "change only the password: the user, host, port, database and parameters are what a log"
                          " reader needs (and a password may equal the user or host name: replace that part of the"
                          " URL, not every occurrence of its text)")
    passed(1, f"{len(cases)} URLs: each password replaced by ***, everything else as it was.")


# --- exercise 2: a serializable transaction, retried with a bound -------------------------------------------

_COUNTER = _sql.Identifier(SCHEMA, "counter")


def _counter(admin: psycopg.Connection, value: int | None = None) -> int:
    if value is not None:
        admin.execute(_sql.SQL("UPDATE {} SET n = %s WHERE id = 1").format(_COUNTER), (value,))
    return admin.execute(_sql.SQL("SELECT n FROM {} WHERE id = 1").format(_COUNTER)).fetchone()[0]


class _Work:
    """The check's work: read the counter, write it plus one; the first `conflicts` calls meet a real 40001
    (the check's other session changes the row between the read and the write)."""

    def __init__(self, other: psycopg.Connection, conflicts: int, fail_with: BaseException | None = None):
        self.other, self.conflicts, self.fail_with = other, conflicts, fail_with
        self.calls, self.levels = 0, []

    def __call__(self, conn: psycopg.Connection) -> int:
        self.calls += 1
        self.levels.append(conn.execute("SHOW transaction_isolation").fetchone()[0])
        n = conn.execute(_sql.SQL("SELECT n FROM {} WHERE id = 1").format(_COUNTER)).fetchone()[0]
        if self.calls <= self.conflicts:
            self.other.execute(_sql.SQL("UPDATE {} SET n = n + 100 WHERE id = 1").format(_COUNTER))
        conn.execute(_sql.SQL("UPDATE {} SET n = %s WHERE id = 1").format(_COUNTER), (n + 1,))
        if self.fail_with is not None:
            raise self.fail_with
        return n + 1


class _NotTheDatabase(Exception):
    """An error of the application inside the work: it must reach the caller at once, not be retried."""


def run_serializable(fn: Callable) -> None:
    """Exercise 2: run_serializable(conn, work, attempts) retries 40001 up to `attempts` tries in all, no more."""
    tag = new_tag(2)
    with check_connect(autocommit=True) as admin, check_connect(autocommit=True) as other:
        admin.execute(_sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_sql.Identifier(SCHEMA)))
        admin.execute(_sql.SQL("CREATE TABLE IF NOT EXISTS {} (id int PRIMARY KEY, n int NOT NULL)").format(_COUNTER))
        admin.execute(_sql.SQL("INSERT INTO {} VALUES (1, 0) ON CONFLICT (id) DO NOTHING").format(_COUNTER))
        try:
            with psycopg.connect(with_params(database_url(), application_name=tag)) as conn:
                _serializable_cases(fn, conn, admin, other)
        finally:
            with contextlib.suppress(psycopg.Error):
                admin.execute(_sql.SQL("DROP TABLE IF EXISTS {}").format(_COUNTER))
            stop_sessions(tag)
    passed(2, "work that succeeded at once; work that met two real serialization failures, then succeeded; work"
              " that failed every try, given up on after exactly `attempts` tries (3, and 5); and an error of the"
              " application's own, raised at once and rolled back.")


def _serializable_cases(fn: Callable, conn: psycopg.Connection, admin: psycopg.Connection,
                        other: psycopg.Connection) -> None:
    hint = "retry only psycopg.errors.SerializationFailure, each try in a transaction of its own"
    for conflicts, attempts, succeeds in ((0, 3, True), (2, 3, True), (3, 3, False), (5, 5, False)):
        start = _counter(admin, 0)
        work = _Work(other, conflicts)
        call = f"run_serializable(conn, work, attempts={attempts})"
        what = (f"work that met a serialization failure (40001) on its first {conflicts} tries" if conflicts
                else "work that meets no conflict")
        try:
            got = run(2, fn, conn, work, attempts, timeout=20, allowed=(psycopg.errors.SerializationFailure,),
                      hint=hint)
        except psycopg.errors.SerializationFailure:
            got = "raised"
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
            raise CheckFailed(f"After {call} with {what}, the connection was still in a transaction.",
                              "run each try inside `with conn.transaction():`, which commits or rolls back")
        levels = sorted(set(work.levels))
        if levels != ["serializable"]:
            raise CheckFailed(f"{call}: the work ran at isolation level {', '.join(levels) or 'none'}, not"
                              " serializable; the counter it rewrote lost the other session's updates.",
                              "`conn.execute(\"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE\")` first in each"
                              " transaction, or set `conn.isolation_level` (lesson 04, part 2)")
        final = _counter(admin)
        if succeeds:
            right = start + 100 * conflicts + 1
            if got == "raised" or work.calls != conflicts + 1:
                raise CheckFailed(f"{call} with {what} called work {work.calls} time(s)"
                                  + (" and raised SerializationFailure" if got == "raised" else "")
                                  + f"; the right answer calls it {conflicts + 1} times and returns its result.",
                                  "catch SerializationFailure around the transaction and try again, while tries are"
                                  " left (lesson 04, part 2)")
            if got != right or final != right:
                raise CheckFailed(f"{call} with {what} returned {got!r} and left the counter at {final}; work"
                                  f" returned {right} and the counter should be {right}.",
                                  "return what work returned, after its transaction committed")
        else:
            if got != "raised" or work.calls != attempts:
                raise CheckFailed(f"{call} with {what} called work {work.calls} time(s)"
                                  + (" and then raised SerializationFailure" if got == "raised"
                                     else f" and returned {got!r}")
                                  + f"; it should try exactly {attempts} times, then raise the last failure.",
                                  "count the tries: give up after `attempts`, and re-raise the failure so that the"
                                  " caller knows (a retry without a bound turns a conflict into a hang)")
            if final != start + 100 * conflicts:
                raise CheckFailed(f"{call}: after every try failed, the counter was {final}: a failed try's write"
                                  " was kept.", "roll back each failed try: `with conn.transaction():` does")
    start = _counter(admin, 0)
    work = _Work(other, 0, fail_with=_NotTheDatabase("not a database error"))
    try:
        run(2, fn, conn, work, 5, timeout=20, allowed=(_NotTheDatabase,), hint=hint)
        raise CheckFailed("run_serializable(conn, work, attempts=5), with work raising an error of its own, returned"
                          " instead of raising it.", "let every exception but SerializationFailure through at once")
    except _NotTheDatabase:
        pass
    if work.calls != 1 or _counter(admin) != start:
        raise CheckFailed(f"With work raising an error that is not a serialization failure, work was called"
                          f" {work.calls} time(s) and the counter went from {start} to {_counter(admin)}.",
                          "retry only SerializationFailure, and roll back on any error (`with conn.transaction():`)")
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
        raise CheckFailed("After work raised an error of its own, run_serializable let it through but left the"
                          " connection still in a transaction (idle in transaction, holding its locks).",
                          "run each try inside `with conn.transaction():`, which rolls back when the block raises")


# --- exercise 3: the review ----------------------------------------------------------------------------------

START_LIMIT = 30.0  # seconds for the service to answer its first request
SEQUENTIAL = 12  # requests in a row that a pool must survive
LOAD_REQUESTS, LOAD_CONCURRENCY = 40, 8
OPENED_LIMIT = LOAD_CONCURRENCY + 4  # connections the service may open during the load (a pool growing)
SLOW_LIMIT = 3.0  # seconds within which a query stuck on a lock must have been answered
UNREACHABLE_REQUESTS, UNREACHABLE_WAIT = 12, 3.5  # searches sent while the database is cut off; their wait
TRANSFER_PAIRS, TRANSFER_LATENCY_MS = 4, 10
RETRY_LIMIT = 6.0  # seconds within which a transfer that always meets 40001 must have given up
MAX_TRIES = 50  # more tries than this on one request is a retry without a bound
EXPORT_BEFORE = 200_001  # the export asks for events 1 .. EXPORT_BEFORE - 1
EXPORT_LIMIT = 90.0  # seconds for the whole export (one small chunk per row takes 30 to 45 s on a busy 2-core machine)
EXPORT_RATE = 4 * 2**20  # bytes per second the proxy forwards from the server during the export
STREAMED_BEFORE = 0.5  # the first CSV line must reach the client before the server has sent this share of the result
TIMEOUT_RANGE_MS = (500, 2000)  # the statement_timeout the task asks of every session
FAILING_REQUESTS = 12  # requests that fail in the database, more than the 10 connections a pool may hold
MEMORY_LIMIT = 40 * 2**20  # growth of the service's peak resident memory that the export may cause
ACCOUNTS = [(1, "Ada Lovelace", 500), (2, "Alan Turing", 500), (3, "Grace Hopper", 250), (4, "Edsger Dijkstra", 80),
            (5, "Barbara Liskov", 1000), (6, "Ada Yonath", 40), (7, "Poison Account", 0)]
POISON = 7  # a transfer to this account meets a serialization failure on every try (the check's trigger)
HOSTILE = "zq' OR TRUE OR owner ILIKE '"
SEARCHES = ("ada", "TURING", "o")

PROBLEMS = {
    "injection": ("SQL built from the request's text",
                  "pass the value as a parameter (`%s`), never inside an f-string (lesson 01, part 1)"),
    "per_request": ("a new connection for every request",
                    "open one pool in the lifespan and borrow from it in the dependency (lesson 03, part 1)"),
    "pool_left_open": ("the pool left open at shutdown",
                       "close the pool after the lifespan's `yield`, in a `finally:` (lesson 09, part 3)"),
    "idle_in_transaction": ("a transaction left open",
                            "borrow a pooled connection for each request (the dependency), so its transaction ends"
                            " with the request; never keep a connection in a global between requests (lesson 04,"
                            " part 1)"),
    "returned": ("connections never given back to the pool",
                 "`yield` the connection inside `async with pool.connection() as conn:` (not `return`, and not"
                 " `getconn()` with a `putconn()` after the `yield` that a failing request skips), so the pool gets"
                 " it back, its transaction ended, however the request ends (lesson 08, part 1; lesson 09, part 2)"),
    "no_timeout": ("no timeout, or one outside 0.5 to 2 s",
                   "give every connection a statement_timeout of 0.5 to 2 s (the `options` connection parameter, or"
                   " the pool's"
                   " `kwargs`) and the pool a checkout `timeout` (lesson 02, part 1; lesson 04, part 1)"),
    "secret": ("the password in the service's log",
               "log where you connect with the password masked, never DATABASE_URL itself (lesson 02, part 2;"
               " exercise 1)"),
    "fetchall": ("a client-side cursor on a huge result",
                 "stream the export: a named (server-side) cursor read in batches, or `cursor.stream()`, and a"
                 " StreamingResponse that sends each batch on (lesson 06)"),
    "not_streamed": ("an export that does not stream",
                     "send each batch on as the database sends it: a StreamingResponse whose generator reads a named"
                     " (server-side) cursor, `cursor.stream()` or COPY, and yields as it reads; a client-side cursor"
                     " read with fetchmany has the whole result in memory first, and one string joined at the end"
                     " sends nothing until then (lesson 06)"),
    "slow_export": ("an export too slow",
                    f"the check reads the export for {EXPORT_LIMIT:g} s at most: send a batch of rows per chunk (join"
                    " a thousand lines or more per `yield`), not one line per `yield`"),
    "no_retry": ("no retry for serialization failures (40001)",
                 "retry the whole SERIALIZABLE transaction on SerializationFailure, a bounded number of times"
                 " (lesson 04, part 2; exercise 2)"),
    "slow_retry": ("a retry that does not give up in time",
                   f"count the tries, keep them few, and the pauses short and capped (a few ms, doubling, at most"
                   f" about 0.5 s), so"
                   f" that a hopeless transfer is answered within {RETRY_LIMIT:g} s (lesson 04, part 2)"),
    "retry_no_rollback": ("a retry inside the failed transaction",
                          "a failed transaction accepts nothing until it is rolled back: retry the whole"
                          " `async with conn.transaction():` block, which rolls back on the error (lesson 04, part 2;"
                          " exercise 2)"),
    "no_transaction": ("a transfer not in one SERIALIZABLE transaction",
                       "run the transfer's statements inside `async with conn.transaction():`, with SET TRANSACTION"
                       " ISOLATION LEVEL SERIALIZABLE first in it; under autocommit, without a transaction block, each"
                       " statement commits on its own and SET TRANSACTION does nothing (lesson 04, parts 1 and 2)"),
    "contract": ("an endpoint no longer keeps its contract",
                 "keep every path, parameter and JSON shape the module's docstring lists"),
    "hung": ("requests that never ended",
             "look for a request that waits on something another request holds, or a retry without a bound"),
}


@dataclass
class _Findings:
    problems: dict[str, str] = field(default_factory=dict)  # name -> what the check saw (the first time)
    stopped_early: str = ""
    stuck: bool = False  # a request of the check was still running when the check gave up on it
    logged: dict = field(default_factory=dict)  # exceptions in the service's log (filled by web_api's reader)

    def add(self, name: str, seen: str) -> None:
        self.problems.setdefault(name, seen)

    def verdict(self, file: str) -> CheckFailed:
        names = [n for n in PROBLEMS if n in self.problems]  # always in the same order: the task's list
        items = [f"- {PROBLEMS[n][0]}: {self.problems[n]} (Hint: {PROBLEMS[n][1]}.)" for n in names]
        head = f"The check found {len(items)} problem{'s' if len(items) > 1 else ''} in {file}:"
        tail = [self.stopped_early] if self.stopped_early else []
        if self.logged:
            shown = [f"{line[:120]} (×{n})" for line, n in sorted(self.logged.items(), key=lambda kv: -kv[1])[:3]]
            tail.append("The service's log shows these exceptions: " + "; ".join(shown) + ".")
        return CheckFailed("\n".join([head, *items, *tail]), f"start with the first: {PROBLEMS[names[0]][1]}")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _table(name: str) -> _sql.Identifier:
    return _sql.Identifier(SCHEMA, name)


def _prepare(admin: psycopg.Connection) -> None:
    """The check's accounts, and a trigger that makes every transfer to POISON fail with 40001 (counted)."""
    admin.execute(_sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_sql.Identifier(SCHEMA)))
    _drop(admin)
    admin.execute(_sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, owner text NOT NULL,"
                           " balance numeric(12, 2) NOT NULL CHECK (balance >= 0))").format(_table("accounts")))
    with admin.cursor() as cur:
        cur.executemany(_sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(_table("accounts")), ACCOUNTS)
    admin.execute(_sql.SQL("CREATE SEQUENCE {}").format(_table("poison_tries")))
    # Each committed change of a balance, with the transaction that made it, its isolation level and the session's
    # statement_timeout (a failed try's rows roll back with it).
    admin.execute(_sql.SQL("CREATE TABLE {} (xid bigint, isolation text, timeout_ms bigint, account int)").format(
        _table("changes")))
    admin.execute(_sql.SQL(
        "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO {t} VALUES (txid_current(), current_setting('transaction_isolation'),"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'), NEW.id);"
        " RETURN NULL; END $$").format(f=_table("noted"), t=_table("changes")))
    admin.execute(_sql.SQL("CREATE TRIGGER noted AFTER UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {f}()").format(
        t=_table("accounts"), f=_table("noted")))
    admin.execute(_sql.SQL(
        "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " PERFORM nextval({s});"
        " RAISE EXCEPTION 'could not serialize access (the pgcourse check, on purpose)'"
        " USING ERRCODE = 'serialization_failure'; END $$").format(
        f=_table("poison"), s=_sql.Literal(f"{SCHEMA}.poison_tries")))
    admin.execute(_sql.SQL("CREATE TRIGGER poison BEFORE UPDATE ON {t} FOR EACH ROW WHEN (NEW.id = {p})"
                           " EXECUTE FUNCTION {f}()").format(t=_table("accounts"), p=_sql.Literal(POISON),
                                                              f=_table("poison")))


def _drop(admin: psycopg.Connection) -> None:
    with contextlib.suppress(psycopg.Error):
        admin.execute(_sql.SQL("DROP TABLE IF EXISTS {}").format(_table("accounts")))
        admin.execute(_sql.SQL("DROP TABLE IF EXISTS {}").format(_table("changes")))
        admin.execute(_sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_table("noted")))
        admin.execute(_sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_table("poison")))
        admin.execute(_sql.SQL("DROP SEQUENCE IF EXISTS {}").format(_table("poison_tries")))


def _balances(admin: psycopg.Connection) -> dict[int, Decimal]:
    return dict(admin.execute(_sql.SQL("SELECT id, balance FROM {} ORDER BY id").format(_table("accounts"))).fetchall())


def _tries(admin: psycopg.Connection) -> int:
    row = admin.execute(_sql.SQL("SELECT last_value, is_called FROM {}").format(_table("poison_tries"))).fetchone()
    return row[0] if row[1] else 0


def _accounts_json(rows) -> list[tuple[int, str, Decimal]] | None:
    try:
        return [(int(a["id"]), a["owner"], Decimal(str(a["balance"]))) for a in rows]
    except (TypeError, KeyError, ValueError, ArithmeticError):
        return None


async def _lifetimes(client, found: _Findings) -> None:
    """Requests in a row: a pool whose connections are not given back runs dry."""
    from .web_api import _shown

    for i in range(SEQUENTIAL):
        response, _ = await client.send("GET", "/health")
        if isinstance(response, BaseException) or response.status_code != 200:
            if i == 0:
                found.add("contract", f"GET /health answered {_shown(response)}, not 200 {{\"status\": \"ok\"}}")
            else:
                found.add("returned", f"{i} requests in a row were answered, then GET /health got {_shown(response)}:"
                                      " the connections lent before were never given back, and the pool ran dry")
                found.stopped_early = ("The check stopped there: a service whose pool runs dry answers nothing"
                                       " more. Fix this, and it will look for more.")
            return


async def _basics(client, admin: psycopg.Connection, found: _Findings) -> None:
    """Each endpoint's contract on right input; the hostile search; a transfer and one refused."""
    from .web_api import _json, _shown

    response, _ = await client.send("GET", "/health")
    if isinstance(response, BaseException) or response.status_code != 200 or _json(response) != {"status": "ok"}:
        found.add("contract", f"GET /health answered {_shown(response)}, not 200 {{\"status\": \"ok\"}}")
    for owner in (*SEARCHES, HOSTILE):
        response, _ = await client.send("GET", "/accounts/search", params={"owner": owner})
        right = admin.execute(_sql.SQL("SELECT id, owner, balance FROM {} WHERE strpos(lower(owner), lower(%s)) > 0"
                                       " ORDER BY id LIMIT 20").format(_table("accounts")), (owner,)).fetchall()
        body = _json(response) if not isinstance(response, BaseException) else None
        got = _accounts_json(body.get("accounts")) if isinstance(body, dict) else None
        if got == right:
            continue
        if owner == HOSTILE:
            found.add("injection", f"GET /accounts/search?owner={HOSTILE} answered"
                      + (f" {len(got)} accounts, although no owner's name contains that text: the value became part"
                         " of the SQL and read what it must not" if got else f" {_shown(response)} instead of an"
                                                                            " empty list"))
        else:
            found.add("contract", f"GET /accounts/search?owner={owner} answered {_shown(response)}; the right answer"
                                  f" is {len(right)} accounts, by id")
    for account_id in (3, 99):
        response, _ = await client.send("GET", f"/accounts/{account_id}")
        body = _json(response) if not isinstance(response, BaseException) else None
        if account_id == 99:
            if isinstance(response, BaseException) or response.status_code != 404:
                found.add("contract", f"GET /accounts/99 (no such account) answered {_shown(response)}, not 404")
            continue
        got = _accounts_json([body]) if isinstance(body, dict) else None
        if isinstance(response, BaseException) or response.status_code != 200 or got != [
                (3, "Grace Hopper", Decimal(250))]:
            found.add("contract", f"GET /accounts/3 answered {_shown(response)}")
    before = _balances(admin)
    for body, status in (({"from_id": 1, "to_id": 2, "amount": 25}, 201), ({"from_id": 6, "to_id": 1, "amount": 41}, 409)):
        response, _ = await client.send("POST", "/transfers", json=body)
        if isinstance(response, BaseException) or response.status_code != status:
            found.add("contract", f"POST /transfers {body} answered {_shown(response)}, not {status}")
    after = _balances(admin)
    if after[1] != before[1] - 25 or after[2] != before[2] + 25 or after[6] != before[6]:
        found.add("contract", f"after a transfer of 25 from account 1 to 2 and one of 41 from account 6 (which holds"
                              f" {before[6]:.2f}), the balances are {after[1]:.2f}, {after[2]:.2f} and {after[6]:.2f};"
                              f" they should be {before[1] - 25:.2f}, {before[2] + 25:.2f} and {before[6]:.2f}")


def _mix():
    from ..loadgen import Mix

    return Mix({
        "account": lambda r: ("GET", f"/accounts/{r.randint(1, 6)}", None),
        "search": lambda r: ("GET", f"/accounts/search?owner={r.choice(SEARCHES)}", None),
        "health": lambda r: ("GET", "/health", None),
    }, {"account": 0.4, "search": 0.4, "health": 0.2}, seed=10)


async def _load(svc, lab, found: _Findings) -> None:
    from .. import loadgen

    before = lab.accepted
    load = await loadgen.run(svc.url, _mix(), requests=LOAD_REQUESTS, concurrency=LOAD_CONCURRENCY,
                             time_limit=10.0, timeout=4.0, progress=False)
    opened = lab.accepted - before
    if opened > OPENED_LIMIT:
        found.add("per_request", f"during {len(load.outcomes)} requests ({LOAD_CONCURRENCY} at a time) the service"
                                 f" opened {opened} connections to the server")
    errors = load.errors()
    if errors:
        kinds = ", ".join(f"{kind} ×{n}" for kind, n in sorted(errors.items()))
        found.add("contract", f"under a load of {LOAD_REQUESTS} requests ({LOAD_CONCURRENCY} at a time),"
                              f" {sum(errors.values())} failed: {kinds}")


async def _left_open(tag: str, found: _Findings) -> None:
    """Sessions idle in a transaction after every request has ended: named, then ended by the check."""
    from .web_api import _idle_sessions

    await asyncio.sleep(0.6)  # a request's own transaction ends with it; these outlived their requests
    idle = await _idle_sessions(tag, 0.5)
    if not idle:
        return
    found.add("idle_in_transaction", f"after the requests had ended, {idle} of its sessions sat idle in a"
                                     " transaction that no request was running (the check ended them to go on)")
    with check_connect(autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
                      " AND state LIKE 'idle in transaction%%'", (tag,))


async def _slow(client, tag: str, found: _Findings) -> None:
    """The check locks the accounts: a search waiting for the lock must be cut by a timeout within SLOW_LIMIT."""
    from ..bench import duration
    from .web_api import _locked, _shown, _waiting_on_lock

    async with _locked(f"{SCHEMA}.accounts", found, tag) as locked:
        if not locked:
            return
        began = time.monotonic()
        slow = asyncio.ensure_future(client.send("GET", "/accounts/search", params={"owner": SEARCHES[0]},
                                                 timeout=SLOW_LIMIT + 2))
        await _waiting_on_lock(tag, 2.0)
        await asyncio.wait({slow}, timeout=max(0.0, SLOW_LIMIT + 0.5 - (time.monotonic() - began)))
    response, seconds = await slow
    if isinstance(response, BaseException) or seconds > SLOW_LIMIT:
        found.add("no_timeout", f"GET /accounts/search, whose query waited for the check's lock on the accounts, got"
                                f" {_shown(response)} after {duration(seconds)} (the check released the lock then);"
                                f" a timeout should have ended it within {SLOW_LIMIT:g} s")


async def _unreachable(client, lab, found: _Findings) -> None:
    """While the proxy forwards nothing, a burst of searches: those the pool has no connection for must fail
    within its checkout timeout, instead of waiting as long as the outage lasts."""
    from .web_api import _shown

    answered, pending = False, set()
    with lab.blackhole():
        deadline = time.monotonic() + UNREACHABLE_WAIT
        pending = {asyncio.ensure_future(client.send("GET", "/accounts/search", params={"owner": SEARCHES[1]},
                                                     timeout=UNREACHABLE_WAIT)) for _ in range(UNREACHABLE_REQUESTS)}
        while pending and not answered and time.monotonic() < deadline:  # the first answer is enough
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                               return_when=asyncio.FIRST_COMPLETED)
            answered = any(not isinstance(task.result()[0], BaseException) for task in done)
    if pending:
        await asyncio.wait(pending)  # the others end once the outage has (or at the client's timeout)
    if not answered:
        found.add("no_timeout", f"while the database did not answer (the proxy forwarded nothing), none of"
                                f" {UNREACHABLE_REQUESTS} searches sent at once was answered within"
                                f" {UNREACHABLE_WAIT:g} s: the requests beyond the pool's connections waited for one"
                                " without a bound (or each waited to connect)")
    deadline = time.monotonic() + 2 * UNREACHABLE_WAIT  # the requests held up by the outage finish, then it answers
    while time.monotonic() < deadline:
        response, _ = await client.send("GET", "/health", timeout=2.0)
        if not isinstance(response, BaseException) and response.status_code == 200:
            return
        await asyncio.sleep(0.2)
    found.add("contract", f"after the outage ended, GET /health still answered {_shown(response)}")


async def _transfers(client, lab, admin: psycopg.Connection, found: _Findings) -> None:
    """Pairs of concurrent transfers from one account (each round trip slowed by the proxy, so that they overlap),
    then one transfer that meets 40001 on every try."""
    from ..bench import duration
    from .web_api import _shown

    before = _balances(admin)
    answers, moved = [], 0
    lab.latency_ms = TRANSFER_LATENCY_MS
    try:
        for i in range(TRANSFER_PAIRS):
            bodies = [{"from_id": 1, "to_id": 2, "amount": 1 + i % 3}, {"from_id": 1, "to_id": 3, "amount": 1}]
            pair = await asyncio.gather(*(client.send("POST", "/transfers", json=b) for b in bodies))
            for body, (answer, _) in zip(bodies, pair, strict=True):
                answers.append(answer)
                if not isinstance(answer, BaseException) and answer.status_code == 201:
                    moved += body["amount"]
    finally:
        lab.latency_ms = 0
    failed = [a for a in answers if isinstance(a, BaseException) or a.status_code != 201]
    after = _balances(admin)
    kinds = sorted({_shown(a)[:60] for a in failed})
    if failed and all("QueryCanceled" in k or "statement timeout" in k for k in kinds):
        found.add("no_timeout", f"{len(failed)} of {len(answers)} transfers sent two at a time were cancelled by the"
                                f" statement timeout ({'; '.join(kinds)}): a timeout too short for the work (the task"
                                f" asks {TIMEOUT_RANGE_MS[0] / 1000:g} to {TIMEOUT_RANGE_MS[1] / 1000:g} s)")
    elif failed:
        found.add("no_retry", f"{len(failed)} of {len(answers)} transfers sent two at a time from the same account"
                              f" failed ({'; '.join(kinds)}): the serialization failures that concurrent SERIALIZABLE"
                              " transactions meet reached the client")
    if after[1] != before[1] - moved or after[2] + after[3] != before[2] + before[3] + moved:
        found.add("contract", f"after the concurrent transfers that answered 201 (moving {moved} from account 1),"
                              f" account 1 holds {after[1]:.2f}; it should hold {before[1] - moved:.2f}")
    tries = _tries(admin)
    response, seconds = await client.send("POST", "/transfers", json={"from_id": 5, "to_id": POISON, "amount": 1},
                                          timeout=RETRY_LIMIT)
    tries = _tries(admin) - tries
    if isinstance(response, BaseException):
        found.stuck = True
    if tries > MAX_TRIES:
        found.add("no_retry", f"a transfer that meets a serialization failure on every try (the check's trigger) was"
                              f" tried {tries} times and answered {_shown(response)} after {duration(seconds)}:"
                              " a retry without a bound")
    elif isinstance(response, BaseException):
        found.add("slow_retry", f"a transfer that meets a serialization failure on every try (the check's trigger) was"
                                f" tried {tries} times and was still not answered after {duration(seconds)}"
                                f" ({_shown(response)}): a retry without a bound, or pauses that add up to more than"
                                f" the {RETRY_LIMIT:g} s the task allows")
    elif tries <= 1:
        found.add("no_retry", f"a transfer that met a serialization failure (the check's trigger) was tried"
                              f" {tries} time{'s' if tries != 1 else ''} and answered {_shown(response)}: no retry")
    elif 200 <= response.status_code < 300:
        found.add("contract", f"a transfer that failed on every try answered {_shown(response)}, a success")
    elif response.status_code == 409 or "insufficient" in response.text:
        found.add("contract", f"a transfer from an account that holds enough, which failed on every try, answered"
                              f" {_shown(response)}: that tells the client something false; answer with an error"
                              " status of its own (503, say) once the tries are spent")
    _changes(admin, found)


def _changes(admin: psycopg.Connection, found: _Findings) -> None:
    """The committed changes of balances, read from the check's trigger: each transfer's two in one transaction,
    at SERIALIZABLE, in a session with a statement_timeout in the range the task asks."""
    rows = admin.execute(_sql.SQL("SELECT xid, isolation, timeout_ms, account FROM {}").format(_table("changes"))
                         ).fetchall()
    if not rows:
        return
    per_xid: dict[int, int] = {}
    for xid, *_ in rows:
        per_xid[xid] = per_xid.get(xid, 0) + 1
    alone = sum(1 for n in per_xid.values() if n == 1)
    if alone:
        found.add("no_transaction", f"of the {len(per_xid)} transactions that changed balances, {alone} changed only"
                                    " one account: the debit and the credit of a transfer committed separately (a"
                                    " failure between them would lose or make money)")
    levels = sorted({level for _, level, _, _ in rows} - {"serializable"})
    if levels:
        found.add("no_transaction", f"transfers committed at isolation level {', '.join(levels)}, not serializable")
    low, high = TIMEOUT_RANGE_MS
    timeouts = sorted({t for _, _, t, _ in rows})
    wrong = [t for t in timeouts if not low <= t <= high]
    if wrong:
        shown = ", ".join("0 (none)" if t == 0 else f"{t} ms" for t in wrong)
        found.add("no_timeout", f"the sessions that ran the transfers had statement_timeout = {shown} (the check read"
                                f" it on the server); the task asks {low / 1000:g} to {high / 1000:g} s in every"
                                " session, not only where a test waits")


class _MeteredWriter:
    """The service's side of a proxied connection: counts the bytes delivered to it from the server, at most
    `lab.rate` a second. The server itself sends at full speed (the proxy queues), so that a statement that
    streams its whole result is not held up by the slowing, nor cut by a statement_timeout."""

    def __init__(self, writer: asyncio.StreamWriter, lab):
        self.writer, self.lab, self.pending = writer, lab, 0

    def write(self, data: bytes) -> None:
        self.pending += len(data)
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()
        sent, self.pending = self.pending, 0
        self.lab.server_bytes += sent
        if self.lab.rate and sent:
            await asyncio.sleep(sent / self.lab.rate)

    def __getattr__(self, name: str):
        return getattr(self.writer, name)


def _metered_lab(url: str):
    """A NetLab whose proxy also counts the bytes it delivers from the server, and can slow them (`rate`, bytes a
    second)."""
    from ..netlab import NetLab, _Link

    class MeteredLink(_Link):
        async def _pump(self, reader, writer, sender: str) -> None:
            await super()._pump(reader, _MeteredWriter(writer, self.lab) if sender == "server" else writer, sender)

    class MeteredLab(NetLab):
        server_bytes, rate = 0, 0

        async def _on_client(self, reader, writer) -> None:
            self.accepted += 1
            link = MeteredLink(self, reader, writer)
            self._links.add(link)
            await link.run()

    return MeteredLab(url, packet_level=False)


class _PeakMemory:
    """The growth of a process's peak resident memory while inside: its high-water mark reset (Linux
    /proc/PID/clear_refs) where allowed, else its resident memory sampled every 10 ms."""

    def __init__(self, pid: int):
        import psutil

        self.process, self.growth = psutil.Process(pid), 0
        self.stop, self.peak = threading.Event(), 0

    def _hwm(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    def _sample(self) -> None:
        while not self.stop.wait(0.01):
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> _PeakMemory:
        self.base = self.process.memory_info().rss
        self.cleared = False
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
            self.cleared = self._hwm() is not None
        self.peak = self.base
        self.thread = threading.Thread(target=self._sample, name="pgcourse-rss", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        peak = max(self.peak, self._hwm() or 0) if self.cleared else self.peak
        self.growth = max(0, peak - self.base)


async def _failing(client, found: _Findings) -> None:
    """Requests that fail in the database, more than a pool may hold: then the service must still answer."""
    from .web_api import _shown

    answers = []
    for _ in range(FAILING_REQUESTS):
        response, seconds = await client.send("GET", "/accounts/search", params={"owner": "nul\x00byte"})
        answers.append(response)
        if seconds > 1.0:  # waited for a connection: the pool has run dry already
            break
    failed = [a for a in answers if isinstance(a, BaseException) or a.status_code >= 500]
    if not failed:
        return
    response, _ = await client.send("GET", "/health")
    if isinstance(response, BaseException) or response.status_code != 200:
        found.add("returned", f"after {len(failed)} searches that failed in the database (a text with a NUL byte,"
                              f" which PostgreSQL refuses; answered {_shown(failed[0])}), GET /health got"
                              f" {_shown(response)}: each failing request kept its connection, and the pool ran dry")


async def _export(svc, lab, admin: psycopg.Connection, found: _Findings) -> None:
    """The export of EXPORT_BEFORE - 1 events, read as it streams; the service's peak memory meanwhile."""
    import httpx

    from ..bench import duration

    count, first, last = admin.execute("SELECT count(*), min(id), max(id) FROM events WHERE id < %s",
                                       (EXPORT_BEFORE,)).fetchone()
    right_last = admin.execute("SELECT concat_ws(',', id, customer_id, kind) FROM events WHERE id = %s",
                               (last,)).fetchone()[0]
    lines, tail, status, began, sent_first = 0, "", None, time.monotonic(), None
    sent_before, lab.rate = lab.server_bytes, EXPORT_RATE
    slow = False
    with _PeakMemory(svc.pid) as memory:
        try:
            async with httpx.AsyncClient(base_url=svc.url, timeout=max(10.0, EXPORT_LIMIT)) as client:
                async with client.stream("GET", "/events/export", params={"before_id": EXPORT_BEFORE}) as response:
                    status, header = response.status_code, None
                    async for line in response.aiter_lines():
                        if header is None:
                            header = line
                            continue
                        if sent_first is None:
                            sent_first = lab.server_bytes - sent_before
                        lines += 1
                        tail = line
                        if time.monotonic() - began > EXPORT_LIMIT:
                            slow = True
                            break
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        finally:
            lab.rate = 0
    seconds = time.monotonic() - began
    sent = lab.server_bytes - sent_before
    if slow and status == 200 and header == "id,customer_id,kind":
        found.add("slow_export", f"GET /events/export?before_id={EXPORT_BEFORE} was still sending after"
                                 f" {duration(seconds)}: {lines:,} of {count:,} lines had arrived, every line right so"
                                 " far")
    elif status != 200 or header != "id,customer_id,kind" or lines != count or tail != right_last:
        found.add("contract", f"GET /events/export?before_id={EXPORT_BEFORE} answered {status}, header"
                              f" {header!r}, {lines:,} lines ending {tail!r} after {duration(seconds)}; the right"
                              f" answer has {count:,} lines after the header, the last {right_last!r}")
    if memory.growth > MEMORY_LIMIT:
        found.add("fetchall", f"while it exported {count:,} events, the service's resident memory grew by"
                              f" {memory.growth / 2**20:.0f} MB (the limit is {MEMORY_LIMIT / 2**20:.0f} MB): it held"
                              " the whole result at once")
    elif sent_first is not None and sent > 2**20 and sent_first > STREAMED_BEFORE * sent:
        found.add("not_streamed", f"the first CSV line reached the client only after the database had sent"
                                  f" {sent_first / sent:.0%} of the result to the service (the proxy forwarding"
                                  f" {EXPORT_RATE / 2**20:g} MB/s): the service had read the whole result, or built"
                                  " the whole answer, before it sent anything")


async def _examine(svc, lab, tag: str, admin: psycopg.Connection, found: _Findings) -> None:
    from .web_api import _Client

    client = _Client(svc.url)
    try:
        await _lifetimes(client, found)
        if found.stopped_early:
            return
        await _basics(client, admin, found)
        await _load(svc, lab, found)
        await _left_open(tag, found)
        await _slow(client, tag, found)
        await _unreachable(client, lab, found)
        await _transfers(client, lab, admin, found)
        await _export(svc, lab, admin, found)
        await _left_open(tag, found)
        await _failing(client, found)
    finally:
        await client.close()


def review(file: str | Path, service_env: Callable[[str], dict[str, str]]) -> None:
    """Exercise 3: run the learner's module, send it right, hostile and concurrent requests, name each mistake."""
    from .web_api import _abandoned, _env_from, _from_log, _one_at_a_time, _service, _started, _within

    path = Path(file).resolve()
    if path.is_file() and _digest(path) == ORIGINAL_SHA256:
        raise NotDone(f"You have not changed {path.name} yet. Its first mistake: {PROBLEMS['injection'][0]}."
                      " Open it in JupyterLab, fix what you find, save it, then run this check again.")
    tag = new_tag(3)
    found = _Findings()
    with check_connect(autocommit=True) as admin, _metered_lab(database_url()) as lab:
        url = with_params(lab.url, application_name=tag)
        env = _env_from(service_env, url)
        secrets = secrets_in(url)
        if not path.is_file():
            raise CheckFailed(f"There is no file {file} next to this notebook.",
                              "the module ships beside the exercises notebook: `git checkout` it if it is gone")
        _one_at_a_time(admin)
        _prepare(admin)
        try:
            svc = _started(_service(path, env), path.name, secrets)
            try:
                _within(_examine(svc, lab, tag, admin, found), 90 + EXPORT_LIMIT, found, path.name,
                        "the contract, the load, the lock, the transfers and the export")
                before = _abandoned(admin)
                code = svc.stop(signal.SIGTERM, timeout=10)
            finally:
                svc.__exit__(None, None, None)
            if not found.stopped_early:
                _shutdown(admin, tag, before, code, found)
            _secret_lines(svc.log, found, secrets)
            _from_log(svc.log, found, secrets)
            for line in [line for line in found.logged if "cannot contain NUL" in line]:
                del found.logged[line]  # the check's own failing searches (_failing): expected, not the learner's
            if "no_retry" in found.problems and any("InFailedSqlTransaction" in line for line in found.logged):
                del found.problems["no_retry"]
                found.add("retry_no_rollback", "transfers sent two at a time failed, and the service's log shows"
                                               " InFailedSqlTransaction: each new try ran inside the failed"
                                               " transaction, which refuses every statement until it is rolled back")
        except psycopg.errors.UndefinedTable:
            raise CheckFailed(f"The check's table {SCHEMA}.accounts vanished during the run: something else dropped"
                              " it.", "run the check again, with nothing else using that schema") from None
        finally:
            stop_sessions(tag)
            _drop(admin)
    if found.problems:
        raise found.verdict(path.name)
    passed(3, "a hostile search kept out of the SQL, one pool (a few connections for a load of requests), no"
              " transaction left open, connections given back by every request (a failing one too), a query stuck on"
              " a lock cut by a timeout, every session with a statement_timeout of 0.5 to 2 s, requests the pool"
              " could not serve during an outage refused in time, no password in the log, an export streamed in"
              " little memory, each transfer one serializable transaction, concurrent transfers retried to success"
              " and a hopeless one given up on, and every session ended properly at shutdown.")


def _secret_lines(log: str, found: _Findings, secrets: list[str]) -> None:
    """The first line of the service's output that holds the password, quoted with the password masked."""
    for line in log.splitlines():
        if any(s in line for s in secrets):
            shown = line.strip()
            for secret in secrets:
                if "://" in secret:
                    shown = shown.replace(secret, _reference_mask(secret))
            shown = mask(shown, secrets)
            found.add("secret", f"it printed or logged the password, in this line: {shown[:200]!r}; look for"
                                " what wrote it (a URL, a pool's conninfo, a settings dict, an exception's text)")
            return


def _shutdown(admin: psycopg.Connection, tag: str, before: int | None, code: int | None, found: _Findings) -> None:
    from .web_api import _abandoned

    if code == -signal.SIGKILL:
        found.add("pool_left_open", "after SIGTERM the service did not finish shutting down within 10 s, and was"
                                    " killed")
        return
    left = wait_for_sessions_to_end(admin, tag, wait=3)
    if left:
        found.add("pool_left_open", f"{len(left)} of its sessions were still on the server 3 s after it stopped")
    if before is None:
        return
    deadline, after = time.monotonic() + 1.0, before
    while time.monotonic() < deadline and after == before:
        time.sleep(0.1)
        after = _abandoned(admin)
    if after > before and not found.stuck:  # a request still running at SIGTERM is cut: its session too
        found.add("pool_left_open", f"when it stopped (SIGTERM), {after - before} of its sessions ended without"
                                    " saying goodbye: the server saw the process vanish"
                                    " (pg_stat_database.sessions_abandoned) instead of each connection closing")


