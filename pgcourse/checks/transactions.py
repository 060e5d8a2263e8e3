"""Checks for lesson 04 (transactions): a safe transfer, a serialization retry, a savepoint.

Each check makes its own tables in a schema `exercise04` (committed, so that several sessions see
them; dropped when the check ends) and hands the learner's function connections in autocommit mode
whose search_path points there, tagged with an application_name of their own. It judges behaviour:

- the statements each handed connection sent (a libpq trace): a value written into the SQL text
  fails, whatever the escaping;
- the state the connection is left in (never inside a transaction, never closed);
- gates: the check holds a row lock from its own session, starts transfers one after another, lets
  each run until it waits for a lock, then lets go; so a race (check-then-act, a lost update, locks
  taken in opposite orders) happens every time, not only on a lucky run. A deadlock is seen as the
  server sees it: two of the learner's sessions each blocking the other (pg_blocking_pids). The lock is
  held a while (LINGER) after they all wait, so a transfer that gives up waiting (a short lock_timeout)
  fails every time; every transfer the balance covers must go through;
- for the order, a trigger logs the top-level transaction (txid_current()) that wrote each order and
  note: the note must be written in its order's transaction; an order with a higher id exists already,
  so the highest id is not the new order's;
- for the retry, real server errors raised inside the learner's transaction (RAISE ... USING
  ERRCODE), the time between attempts against a retry loop without waits run in the same check, and
  the cap on the wait: one run of many attempts with time.sleep recorded instead of slept (in the thread
  that runs the learner's work only), so the seconds asked for are exact, and the run takes no time.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal

import psycopg
from psycopg import pq, sql

from . import (
    CheckFailed,
    NotDone,
    Trace,
    check_connect,
    database_url,
    describe_call,
    learner_env,
    mask,
    new_tag,
    passed,
    run,
    secrets_in,
    with_params,
)

SCHEMA = "exercise04"  # also written literally in the SQL below
IDS = (4101, 4102, 4103, 4104)
BIG, BIG_BALANCE = 4105, Decimal("12345678901234567.89")
START = Decimal(100)
TABLES = """
DROP SCHEMA IF EXISTS exercise04 CASCADE;
CREATE SCHEMA exercise04;
CREATE TABLE exercise04.accounts (id int PRIMARY KEY, balance numeric(20,2) NOT NULL);
CREATE TABLE exercise04.counter (id int PRIMARY KEY, value int NOT NULL);
CREATE TABLE exercise04.orders (id int GENERATED ALWAYS AS IDENTITY (START WITH 7001) PRIMARY KEY,
                                customer text NOT NULL);
CREATE TABLE exercise04.order_items (order_id int NOT NULL REFERENCES exercise04.orders, product text NOT NULL,
                                     quantity int NOT NULL CONSTRAINT item_quantity CHECK (quantity > 0));
CREATE TABLE exercise04.notes (order_id int PRIMARY KEY REFERENCES exercise04.orders,
                               note text NOT NULL CONSTRAINT note_length CHECK (length(note) <= 40));
INSERT INTO exercise04.accounts SELECT 4100 + i, 100 FROM generate_series(1, 4) AS i;
INSERT INTO exercise04.accounts VALUES (4105, 12345678901234567.89);
INSERT INTO exercise04.counter VALUES (1, 0);
CREATE FUNCTION exercise04.fail(code text, message text) RETURNS void LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message; END $$;
CREATE TABLE exercise04.written (tbl text NOT NULL, order_id int NOT NULL, xact bigint NOT NULL);
CREATE FUNCTION exercise04.log_write() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO exercise04.written VALUES (TG_TABLE_NAME, (to_jsonb(NEW) ->> TG_ARGV[0])::int,
                                                  txid_current()); RETURN NULL; END $$;
CREATE TRIGGER written AFTER INSERT ON exercise04.orders FOR EACH ROW EXECUTE FUNCTION exercise04.log_write('id');
CREATE TRIGGER written AFTER INSERT ON exercise04.notes FOR EACH ROW EXECUTE FUNCTION exercise04.log_write('order_id');
"""
PARAM_HINT = ("pass every value as a parameter: conn.execute(\"... WHERE id = %s\", (source,)); the SQL text"
              " stays the same whatever the values")
CONTENTION_HINT = ("a transfer the balance covers must go through even while another transaction holds one of its"
                   " rows: let it wait for the lock (no NOWAIT, no short lock_timeout or statement_timeout; or, under"
                   " SERIALIZABLE, retry it on a serialization failure), then read the balances and decide")
LINGER = 0.4  # seconds the gate's holder keeps its lock once every transfer waits: longer than a 'short' lock_timeout
IDLE_HINT = ("open the transaction with `with conn.transaction():`, which commits when the block ends and rolls"
             " back when it raises, so the connection is never left inside a transaction")


# --- the learner's connections: tagged, traced ---------------------------------------------------


class _Tables:
    """The exercise's tables, and the connections handed to the learner (tagged and traced)."""

    def __init__(self, admin: psycopg.Connection, url: str, exercise: int):
        self.admin, self.url, self.tag = admin, url, new_tag(exercise)
        self.opened: list[psycopg.Connection] = []
        self.traces: list[Trace] = []

    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(with_params(self.url, application_name=self.tag,
                                           options=f"-c search_path={SCHEMA}"), autocommit=True)
        self.opened.append(conn)
        self.traces.append(Trace(conn))
        return conn

    def statements(self) -> list[str]:
        for trace in self.traces:
            trace.stop()
        found = [s for trace in self.traces for s in trace.statements()]
        self.traces = []
        return found

    def close(self) -> None:
        for trace in self.traces:
            trace.stop()
        for conn in self.opened:
            with contextlib.suppress(Exception):
                conn.close()


@contextmanager
def _exercise_tables(exercise: int = 0) -> Iterator[_Tables]:
    """Fresh tables in their own schema (committed, dropped at the end); while inside, DATABASE_URL
    carries the learner's tag."""
    url = database_url()
    with check_connect(url, autocommit=True) as admin:
        admin.execute(TABLES)
        tables = _Tables(admin, url, exercise)
        try:
            with learner_env(tables.tag, url):  # a connection the learner's code opens itself is tagged too
                yield tables
        finally:
            tables.close()
            with contextlib.suppress(psycopg.Error):
                admin.execute("DROP SCHEMA IF EXISTS exercise04 CASCADE")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception, and those it was raised from or during (cause, context), as Python shows them."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)


def _has_state(exc: BaseException | None, *sqlstates: str) -> bool:
    return any(getattr(e, "sqlstate", None) in sqlstates for e in _chain(exc))


def _first_line(exc: BaseException) -> str:
    """What an error says, in one line, any secret in it masked."""
    text = mask(str(exc), secrets_in()).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _outcome(exercise: int, fn: Callable, conn: psycopg.Connection, *args, tag: str, timeout: float = 30,
             hint: str | None = None) -> tuple[str, object]:
    """('returned', value) or ('raised', exception); hangs, leaks and SystemExit become verdicts; then
    the connection must be open and outside any transaction."""
    call = describe_call(fn, (conn, *args))
    try:
        outcome: tuple[str, object] = ("returned", run(exercise, fn, conn, *args, allowed=(Exception,), tag=tag,
                                                       timeout=timeout, hint=hint))
    except (NotDone, CheckFailed):
        raise
    except Exception as exc:  # noqa: BLE001 - the check judges what was raised
        outcome = ("raised", exc)
        secrets = secrets_in()
        if any(secret in str(e) for e in _chain(exc) for secret in secrets):
            raise CheckFailed(f"{call} raised {_first_line(exc)}: the error's message carries a secret (masked"
                              " here), and error messages end up in logs.", "never put the URL or the password"
                              " into an error message; name the host and database, or mask the password") from None
    _connection_state(conn, call, outcome)
    return outcome


def _connection_state(conn: psycopg.Connection, call: str, outcome: tuple[str, object]) -> None:
    how = ("returned" if outcome[0] == "returned" else f"raised {_first_line(outcome[1])}")
    if conn.closed:
        raise CheckFailed(f"{call} {how}, and closed the connection it was given.",
                          "use the connection you are given and leave it open: `with conn:` closes it at the end of"
                          " the block; `with conn.transaction():` is the block that commits or rolls back")
    status = conn.info.transaction_status
    if status != pq.TransactionStatus.IDLE:
        state = "a failed transaction" if status == pq.TransactionStatus.INERROR else "an open transaction"
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        raise CheckFailed(f"After {call} {how}, its connection was still inside {state}: in an application that"
                          " session would sit 'idle in transaction', holding its locks.", IDLE_HINT)


def _pasted(statements: list[str], values: dict[str, object]) -> tuple[str, str] | None:
    """(value, statement) for the first input value found written into a statement's text."""
    numbers = {Decimal(str(abs(v))): k for k, v in values.items() if isinstance(v, (int, Decimal))
               and not isinstance(v, bool) and abs(v) >= 1}
    strings = [(k, v) for k, v in values.items() if isinstance(v, str)]
    for text in statements:
        for token in re.findall(r"(?<![\w.$])\d+(?:\.\d+)?(?![\w.])", text):
            if Decimal(token) in numbers:
                return numbers[Decimal(token)], text
        for key, value in strings:
            parts = [p for p in re.split(r"['\"\\]", value) if len(p) >= 4] or [value]
            if any(p in text for p in parts):
                return key, text
    return None


def _short(sql: str, limit: int = 120) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= limit else sql[:limit - 3] + "..."


def _no_pasted_values(tables: _Tables, fname: str, values: dict[str, object]) -> None:
    found = _pasted(tables.statements(), values)
    if found:
        value, sql = found
        raise CheckFailed(f"{fname} wrote the value {value} into the text of its SQL; the server received:"
                          f" {_short(sql)}", PARAM_HINT)


# --- exercise 1: transfer ------------------------------------------------------------------------

def _balances(admin) -> dict[int, Decimal]:
    return dict(admin.execute("SELECT id, balance FROM exercise04.accounts ORDER BY id").fetchall())


def _reset(admin) -> None:
    admin.execute("UPDATE exercise04.accounts SET balance = CASE WHEN id = 4105 THEN 12345678901234567.89"
                  " ELSE 100 END")


def _changes(before: dict[int, Decimal], after: dict[int, Decimal]) -> str:
    return ", ".join(f"account {k}: {before.get(k)} -> {after.get(k)}" for k in sorted(after)
                     if before.get(k) != after.get(k)) or "nothing"


def _sequential(fn, tables: _Tables) -> None:
    admin, conn = tables.admin, tables.connect()

    def attempt(source, target, amount):
        before = _balances(admin)
        result = _outcome(1, fn, conn, source, target, amount, tag=tables.tag)
        return before, result, _balances(admin), describe_call(fn, (conn, source, target, amount))

    before, (how, what), after, call = attempt(4101, 4102, Decimal("31.17"))
    if how == "raised":
        raise CheckFailed(f"{call} raised {_first_line(what)}; account 4101 held 100.00, enough to cover it.",
                          "run your function on its own in a cell with these arguments, and read the error")
    if (after[4101], after[4102]) != (Decimal("68.83"), Decimal("131.17")) or _changes(before, after).count("->") != 2:
        raise CheckFailed(f"After {call} the balances changed: {_changes(before, after)}; expected 4101: 100.00 ->"
                          " 68.83 and 4102: 100.00 -> 131.17.", "subtract the amount from the source, add it to"
                          " the target, both in one transaction")

    before, (how, what), after, call = attempt(4101, 4103, Decimal("68.83"))
    if how == "raised":
        raise CheckFailed(f"{call} raised {_first_line(what)}, though account 4101 held exactly 68.83.",
                          "an account can send its whole balance: refuse only when the balance is smaller than"
                          " the amount")
    if (after[4101], after[4103]) != (Decimal("0.00"), Decimal("168.83")):
        raise CheckFailed(f"After {call} the balances changed: {_changes(before, after)}.",
                          "subtract the amount from the source, add it to the target")

    refusals = [
        (4102, 4104, Decimal("131.18"), "the source holds 131.17, one cent less than the amount",
         "compare the balance you read (after locking it) with the amount, and raise when it is smaller"),
        (4102, 9999, Decimal("12.34"), "account 9999 does not exist",
         "check that both accounts exist (e.g. that your SELECT ... FOR UPDATE found two rows) and raise if not"),
        (9998, 4102, Decimal("12.34"), "account 9998 does not exist",
         "check that both accounts exist (e.g. that your SELECT ... FOR UPDATE found two rows) and raise if not"),
        (4102, 4104, Decimal("-25.50"), "a negative amount would move money from the target to the source",
         "raise (e.g. ValueError) when the amount is not greater than zero"),
        (4102, 4104, Decimal("0"), "a transfer of 0 moves nothing",
         "raise (e.g. ValueError) when the amount is not greater than zero"),
        (4102, 4102, Decimal("12.34"), "source and target are the same account",
         "raise (e.g. ValueError) when source and target are the same account"),
    ]
    for source, target, amount, why, hint in refusals:
        before, (how, what), after, call = attempt(source, target, amount)
        if after != before:
            raise CheckFailed(f"{call} ({why}) changed balances: {_changes(before, after)}"
                              + (f", and raised {_first_line(what)}." if how == "raised" else "."),
                              hint if how == "returned" else "make both updates one transaction (with"
                              " conn.transaction():), so that nothing is kept when it raises")
        if how == "returned":
            raise CheckFailed(f"{call} returned {what!r} without raising ({why}): the caller cannot tell that no"
                              " money moved.", hint)

    before, (how, what), after, call = attempt(BIG, 4104, Decimal("0.01"))
    expected = BIG_BALANCE - Decimal("0.01")
    if how == "raised" or after[BIG] != expected:
        got = f"raised {_first_line(what)}" if how == "raised" else f"left account {BIG} at {after[BIG]}"
        raise CheckFailed(f"{call} on an account holding {BIG_BALANCE} {got}; expected {expected}.",
                          "keep amounts as Decimal (never float), and pass them to the server as parameters:"
                          " numeric arithmetic is exact")
    values = {str(v): v for v in (*IDS, BIG, 9998, 9999, Decimal("31.17"), Decimal("68.83"), Decimal("131.18"),
                                  Decimal("12.34"), Decimal("25.50"))}
    _no_pasted_values(tables, "transfer", values)


class _Gate:
    """The check holds a row lock; transfers start one by one, each running until it waits for a lock
    (or ends); then the check lets go and watches them finish. A deadlock between two of them shows as
    two sessions each blocking the other."""

    def __init__(self, fn, tables: _Tables, hold: int):
        self.fn, self.tables, self.hold = fn, tables, hold

    def __call__(self, calls: list[tuple[int, int, Decimal]]):
        admin, tables = self.tables.admin, self.tables
        _reset(admin)
        conns = [tables.connect() for _ in calls]
        pids = [c.info.backend_pid for c in conns]
        results: list = [None] * len(calls)
        holder = check_connect(tables.url, autocommit=False)
        deadlock = False
        try:
            holder.execute("SELECT 1 FROM exercise04.accounts WHERE id = %s FOR UPDATE", (self.hold,))
            threads = []
            for i, (conn, args) in enumerate(zip(conns, calls, strict=False)):
                def go(i=i, conn=conn, args=args):
                    try:
                        results[i] = _outcome(1, self.fn, conn, *args, tag=tables.tag, timeout=30)
                    except BaseException as exc:  # noqa: BLE001 - re-raised in the check's thread
                        results[i] = ("verdict", exc)
                th = threading.Thread(target=go, daemon=True)
                th.start()
                threads.append(th)
                deadline = time.monotonic() + 10
                while th.is_alive() and time.monotonic() < deadline:
                    row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                        (pids[i],)).fetchone()
                    if row and row[0] == "Lock":
                        break
                    time.sleep(0.01)
            time.sleep(LINGER)
            early = _balances(admin)  # while the transfers wait: nothing of theirs is committed yet
            holder.rollback()
            deadline = time.monotonic() + 45
            while any(th.is_alive() for th in threads) and time.monotonic() < deadline:
                if not deadlock and len(pids) > 1:
                    blocking = dict(admin.execute("SELECT pid, pg_blocking_pids(pid) FROM unnest(%s::int[]) AS pid",
                                                  (pids,)).fetchall())
                    deadlock = any(b in blocking.get(a, []) and a in blocking.get(b, [])
                                   for a in pids for b in pids if a < b)
                time.sleep(0.01)
            for th in threads:
                th.join(5)
        finally:
            holder.close()
        for result in results:
            if result and result[0] == "verdict":
                raise result[1]
        raised = [r[1] for r in results if r and r[0] == "raised"]
        deadlock = deadlock or any(_has_state(e, "40P01") for e in raised)
        start = {k: (BIG_BALANCE if k == BIG else START) for k in early}
        if early != start and not deadlock:
            moves = " then ".join(f"{s} -> {t} ({a})" for s, t, a in calls)
            raise CheckFailed(f"Transfers {moves}, started while another transaction held account {self.hold}: while"
                              f" they still waited for it, the check's own session already saw {_changes(start, early)}."
                              " A transfer's first update was committed before its second: not one transaction.",
                              "run both updates in one transaction (with conn.transaction():), so that other sessions"
                              " see all of a transfer or nothing")
        return results, deadlock, _balances(admin)


def _contended(situation: str, results) -> None:
    """A verdict when a transfer the balance covered raised (results: those of covered transfers)."""
    raised = [r[1] for r in results if r and r[0] == "raised"]
    raised.sort(key=lambda e: not any(isinstance(x, psycopg.Error) for x in _chain(e)))  # the server's error first
    if raised:
        raise CheckFailed(f"{situation} A transfer that the balance covered failed under contention with"
                          f" {_first_line(raised[0])}.", CONTENTION_HINT)


def _gates(fn, tables: _Tables) -> None:
    def show(results, calls) -> str:
        return "; ".join(f"{s} -> {t} ({a}) " + ("went through" if r[0] == "returned" else f"raised {_first_line(r[1])}")
                         for (s, t, a), r in zip(calls, results, strict=False))

    deadlock_msg = ("each waited for a lock the other held, until the server ended one of them (deadlock,"
                    " SQLSTATE 40P01)")
    deadlock_hint = ("lock both accounts with FOR UPDATE, in the same order whatever the direction of the transfer:"
                     " one SELECT ... WHERE id = ANY(...) ORDER BY id FOR UPDATE (FOR SHARE lets two transfers hold"
                     " the same row, then each waits for the other to let go before it can write)")

    calls = [(4102, 4101, Decimal("5.55")), (4101, 4102, Decimal("6.66"))]
    results, deadlock, after = _Gate(fn, tables, hold=4102)(calls)
    if deadlock:
        raise CheckFailed("Two transfers in opposite directions (4102 -> 4101, then 4101 -> 4102), started while"
                          f" another transaction held account 4102: {deadlock_msg}.", deadlock_hint)
    balances = f"balances after: 4101: {after[4101]}, 4102: {after[4102]} (expected 98.89 and 101.11)"
    _contended("Two transfers in opposite directions, started while another transaction held account"
               f" 4102: {show(results, calls)}; {balances}.", results)
    if (after[4101], after[4102]) != (Decimal("98.89"), Decimal("101.11")):
        raise CheckFailed("Two transfers in opposite directions, started while another transaction held account"
                          f" 4102, both went through, but an update was lost: {balances}.",
                          "lock both rows before you read them (SELECT ... FOR UPDATE), so that the second transfer"
                          " reads the balances the first one left")

    calls = [(4101, 4102, Decimal("60")), (4101, 4103, Decimal("60"))]
    results, deadlock, after = _Gate(fn, tables, hold=4101)(calls)
    went = [r[0] == "returned" for r in results]
    total = sum(after[i] for i in IDS)
    if deadlock:
        raise CheckFailed("Two transfers from account 4101, started while another transaction held it, deadlocked:"
                          " each waited for a lock the other held, until the server ended one of them (SQLSTATE"
                          " 40P01).", deadlock_hint)
    if all(went) or min(after.values()) < 0 or total != 4 * START:
        raise CheckFailed("Two transfers of 60 from account 4101 (balance 100), started while another transaction"
                          f" held that account: {show(results, calls)}; balances after: 4101: {after[4101]}, 4102:"
                          f" {after[4102]}, 4103: {after[4103]}. Only one of them can be covered.",
                          "lock the source row (SELECT ... FOR UPDATE) before you read and check its balance, so"
                          " that the second transfer reads the balance the first one left")
    if not any(went):
        situation = ("Two transfers of 60 from account 4101 (balance 100), started while another transaction held"
                     f" that account: {show(results, calls)}. The first should go through.")
        _contended(situation, results)
        raise CheckFailed(situation, CONTENTION_HINT)

    calls = [(4101, 4102, Decimal("10.37")), (4103, 4102, Decimal("20.41"))]
    results, deadlock, after = _Gate(fn, tables, hold=4102)(calls)
    if deadlock:
        raise CheckFailed(f"Two transfers into account 4102, started while another transaction held it: {deadlock_msg}.",
                          deadlock_hint)
    _contended("Two transfers into account 4102 (4101 -> 4102 of 10.37, 4103 -> 4102 of 20.41), started while"
               f" another transaction held account 4102: {show(results, calls)}; 4102 ended at {after[4102]}.",
               results)
    if after[4102] != Decimal("130.78"):
        raise CheckFailed("Two transfers into account 4102 (4101 -> 4102 of 10.37, 4103 -> 4102 of 20.41), started"
                          f" while another transaction held account 4102: {show(results, calls)}; 4102 ended at"
                          f" {after[4102]}, not 130.78.",
                          "lock both rows before you read them (SELECT ... FOR UPDATE), or let the server add:"
                          " SET balance = balance + %s")


def _bursts(fn, tables: _Tables) -> None:
    """Eight transfers from one account released at the same instant, a few times over."""
    admin = tables.admin
    conns = [tables.connect() for _ in range(8)]
    for _ in range(3):
        for amount in (Decimal(60), Decimal(10)):
            _reset(admin)
            barrier = threading.Barrier(len(conns))

            def one(conn, amount=amount, barrier=barrier):
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(10)
                return _outcome(1, fn, conn, 4101, 4102, amount, tag=tables.tag)

            with ThreadPoolExecutor(len(conns)) as threads:
                results = list(threads.map(one, conns))
            got = _balances(admin)
            raised = [r[1] for r in results if r[0] == "raised"]
            if any(_has_state(e, "40P01") for e in raised):
                raise CheckFailed(f"Eight simultaneous transfers of {amount} from account 4101 to 4102 died in a"
                                  " deadlock (40P01).", "lock both accounts in the same order every time, e.g."
                                  " SELECT ... WHERE id = ANY(...) ORDER BY id FOR UPDATE")
            went = [r for r in results if r[0] == "returned"]
            if amount == 10 or not went:  # 8 x 10 are all covered; of 8 x 60, one is
                _contended(f"Eight simultaneous transfers of {amount} from account 4101 (balance 100) to 4102:"
                           f" {len(went)} went through, {len(raised)} raised.", results)
            expected = {4101: Decimal(40), 4102: Decimal(160)} if amount == 60 else {4101: Decimal(20),
                                                                                    4102: Decimal(180)}
            if {k: got[k] for k in expected} != expected:
                detail = f"; {len(raised)} raised, e.g. {_first_line(raised[0])}" if raised else ""
                raise CheckFailed(f"Eight simultaneous transfers of {amount} from account 4101 (balance 100) to 4102"
                                  f" left 4101: {got[4101]}, 4102: {got[4102]}, not {expected[4101]} and"
                                  f" {expected[4102]}{detail}.",
                                  "lock the source row (SELECT ... FOR UPDATE) and let the others wait for it; then"
                                  " every transfer the balance covers goes through, and only those")


def transfer(fn) -> None:
    """Exercise 1: fn(conn, source, target, amount) moves money atomically, refuses what it must (raising,
    changing nothing), and stays right when transfers run at the same moment."""
    with _exercise_tables(1) as tables:
        _sequential(fn, tables)
        _gates(fn, tables)
        _bursts(fn, tables)
        _no_pasted_values(tables, "transfer", {str(v): v for v in (*IDS, Decimal("60"), Decimal("10.37"),
                                                                    Decimal("20.41"), Decimal("5.55"),
                                                                    Decimal("6.66"))})
    passed(1, "exact amounts, refusals raised and changed nothing, and transfers started at the same moment"
              " (same source, same target, opposite directions) kept every cent, without a deadlock.")


# --- exercise 2: with_retry ----------------------------------------------------------------------

CONFLICT = "SELECT exercise04.fail('40001', 'conflict forced by the check')"


def _counting(statement: str | None = None, python: BaseException | None = None):
    calls: list[float] = []

    def work(conn: psycopg.Connection) -> None:
        calls.append(time.perf_counter())
        if python is not None:
            raise python
        conn.execute(statement)

    return work, calls


def _session(conn: psycopg.Connection) -> tuple[str, str]:
    """The isolation level the caller's next transaction on conn gets: psycopg's attribute, the server's default."""
    level = conn.isolation_level
    server = (conn.execute("SHOW default_transaction_isolation").fetchone()[0] if conn.autocommit and not conn.closed
              else "?")
    return ("None (the server's default)" if level is None else level.name), server


def _retry_call(fn, conn, work, attempts, tag, timeout: float = 30, hint: str | None = None):
    before = _session(conn)
    outcome = _outcome(2, fn, conn, work, attempts, tag=tag, timeout=timeout, hint=hint)
    after = _session(conn)
    if after[0] != before[0] or "?" not in (before[1], after[1]) and after[1] != before[1]:
        call = f"{getattr(fn, '__name__', 'with_retry')}(conn, work, {attempts})"
        raise CheckFailed(f"{call} changed the connection's isolation level for good: before the call,"
                          f" conn.isolation_level was {before[0]} and the session's default_transaction_isolation"
                          f" {before[1]}; after it, {after[0]} and {after[1]}. Every later transaction of the caller on"
                          " conn would run at that level without asking for it.",
                          "leave the connection as you found it: set the level for each transaction you open (SET"
                          " TRANSACTION ISOLATION LEVEL SERIALIZABLE as its first statement); if you set"
                          " conn.isolation_level instead, put the old value back in a `finally:` block")
    return outcome


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _reference_gaps(conn: psycopg.Connection, attempts: int) -> list[float]:
    """The check's own retry loop with no wait at all: how long an attempt itself takes here, now."""
    times = []
    for _ in range(attempts):
        times.append(time.perf_counter())
        with contextlib.suppress(psycopg.errors.SerializationFailure), conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            conn.execute(CONFLICT)
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def _least_waited(gaps: list[list[float]], reference: list[float]) -> float:
    """Of the runs' gaps between attempts, the least time waited in all beyond an attempt's own duration
    (the fastest of the reference loop's gaps)."""
    if not gaps:
        return float("inf")
    own = min(reference)
    return min(sum(max(0.0, g - own) for g in run_gaps) for run_gaps in gaps)


WAIT_CAP = 2.0  # seconds: the longest single wait the task allows, however many attempts
CAP_ATTEMPTS = 16  # enough for any doubling from 0.1 ms up to pass the cap: 0.1 ms * 2 ** 15 = 3.3 s


@contextmanager
def _recorded_sleeps(fn) -> Iterator[list[float | None]]:
    """time.sleep (and the learner's own `sleep` name bound to it) recorded instead of slept in the thread that
    runs the learner's function (`run` names it "exercise 2"): each wait asked, in order, into the list, where the
    caller's work adds None for each of its calls; every other thread sleeps as usual."""
    real = time.sleep
    asked: list[float | None] = []

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "exercise 2":
            asked.append(float(seconds))
        else:
            real(seconds)

    names = [k for k, v in getattr(fn, "__globals__", {}).items() if v is real]
    time.sleep = sleep
    for k in names:
        fn.__globals__[k] = sleep
    try:
        yield asked
    finally:
        time.sleep = real
        for k in names:
            if fn.__globals__.get(k) is sleep:
                fn.__globals__[k] = real


def _judge_cap(fn, name: str, conn: psycopg.Connection, tag: str) -> None:
    """Work that always fails, CAP_ATTEMPTS tries, the waits recorded rather than slept: none above WAIT_CAP."""
    with _recorded_sleeps(fn) as events:
        work, calls = _counting(CONFLICT)

        def tracked(conn: psycopg.Connection) -> None:
            events.append(None)
            work(conn)

        how, what = _retry_call(fn, conn, tracked, CAP_ATTEMPTS, tag, timeout=15 + CAP_ATTEMPTS * WAIT_CAP)
    call = f"{name}(conn, work, {CAP_ATTEMPTS})"
    if how == "returned" or len(calls) != CAP_ATTEMPTS:
        raise CheckFailed(f"{call} with work that always fails with 40001 ran it {_times(len(calls))} and"
                          f" {'returned' if how == 'returned' else 'raised'}.",
                          "try at most `attempts` times in all, then raise the last error")
    asked = [s for s in events if s is not None]
    if events and events[0] is not None:
        first = events.index(None) if None in events else len(events)
        raise CheckFailed(f"{call} asked time.sleep for {sum(asked[:first]):,.3f} s before the first attempt (the"
                          " check recorded the waits instead of sleeping them): every call waits, even one whose"
                          " work would succeed at once.",
                          "wait only between attempts: after a failure, before the next try (not at the top of"
                          " the loop for the first one)")
    if events and events[-1] is not None:
        last = len(events) - 1 - events[::-1].index(None)
        raise CheckFailed(f"{call} asked time.sleep for {sum(events[last + 1:]):,.3f} s after the last attempt"
                          f" failed ({len(asked)} wait(s) for {CAP_ATTEMPTS} attempts, that is"
                          f" {CAP_ATTEMPTS - 1} retries): that wait only delays the error the caller needs.",
                          "after the last attempt, raise at once; wait only before a retry (e.g. `if attempt =="
                          " attempts: raise` before the sleep)")
    if len(asked) < CAP_ATTEMPTS - 1:
        raise CheckFailed(f"{call} retried {CAP_ATTEMPTS - 1} times, and the check saw {len(asked)} call(s) of"
                          " time.sleep, so it could not see how long your waits were.",
                          "wait with time.sleep(seconds) before each retry (not another kind of wait)")
    longest = max(asked)
    if longest > WAIT_CAP:
        at = events[:events.index(longest)].count(None)  # the retry it came before: the attempts that had failed
        raise CheckFailed(f"{call} asked time.sleep for {longest:,.2f} s before retry {at} (the check recorded the"
                          f" waits instead of sleeping them); no single wait may exceed {WAIT_CAP:g} s, however many"
                          " attempts the caller allows.",
                          "cap the wait: min(cap, base * 2 ** attempt), then the random factor (a cap of about half a"
                          " second is usual)")


def with_retry(fn) -> None:
    """Exercise 2: fn(conn, work, attempts) runs work(conn) SERIALIZABLE, retrying 40001 (and, if it likes,
    40P01) at most `attempts` times in all with a growing wait; re-raises the last; nothing else retried."""
    name = getattr(fn, "__name__", "with_retry")
    with _exercise_tables(2) as tables:
        admin = tables.admin
        levels: set[str] = set()

        def increment(conn: psycopg.Connection) -> None:
            levels.add(conn.execute("SHOW transaction_isolation").fetchone()[0])
            value = conn.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0]
            time.sleep(0.002)  # widen the window in which another transaction can interfere
            conn.execute("UPDATE counter SET value = %s WHERE id = 1", (value + 1,))

        conns = [tables.connect() for _ in range(6)]

        stop = threading.Event()  # the first thread whose call raised (or failed) ends every thread's series
        contended_hint = ("each attempt must be a transaction of its own: a retry inside one transaction (a savepoint,"
                          " a nested conn.transaction()) keeps its old snapshot and fails again every time")

        def worker(conn) -> list:
            outcomes = []
            try:
                for _ in range(15):
                    if stop.is_set():
                        break
                    outcomes.append(_retry_call(fn, conn, increment, 50, tables.tag, hint=contended_hint))
                    if outcomes[-1][0] == "raised":
                        stop.set()
            except BaseException:
                stop.set()
                raise
            return outcomes

        with ThreadPoolExecutor(6) as threads:
            outcomes = [o for batch in threads.map(worker, conns) for o in batch]
        raised = [o[1] for o in outcomes if o[0] == "raised"]
        if raised:
            exc = raised[0]
            if _has_state(exc, "40001"):
                raise CheckFailed(f"A serialization failure (40001) escaped from {name}(conn, increment, 50) while six"
                                  " threads incremented one counter.", "catch psycopg.errors.SerializationFailure"
                                  " outside the transaction block (so that it rolls back), wait, and run the work"
                                  " again in a new transaction (not in a savepoint of the old one: its snapshot is"
                                  " old, and it fails again every time)")
            raise CheckFailed(f"{name}(conn, increment, 50), with six threads incrementing one counter, raised"
                              f" {_first_line(exc)}.", "run each attempt in its own `with conn.transaction():`"
                              " block, and catch the failure outside that block")
        if levels != {"serializable"}:
            raise CheckFailed(f"The work ran at isolation level {', '.join(sorted(levels))} (SHOW"
                              " transaction_isolation inside the work).",
                              "start each attempt with SET TRANSACTION ISOLATION LEVEL SERIALIZABLE inside the"
                              " transaction block")
        total = admin.execute("SELECT value FROM exercise04.counter").fetchone()[0]
        if total != 90:
            raise CheckFailed(f"90 increments under contention left the counter at {total}.",
                              "run the work inside one transaction per attempt, and retry until it commits")

        conn = tables.connect()
        for attempts in (1, 3):
            work, calls = _counting(CONFLICT)
            how, what = _retry_call(fn, conn, work, attempts, tables.tag, timeout=15)
            call = f"{name}(conn, work, {attempts})"
            if not calls:
                raise CheckFailed(f"{call} never called work, and " + (f"returned {what!r}." if how == "returned" else
                                                                      f"raised {_first_line(what)}."),
                                  "`attempts` counts every try, the first included: with attempts=1 the work runs"
                                  " once (e.g. `for attempt in range(1, attempts + 1):`)")
            if how == "returned":
                raise CheckFailed(f"{call}, with work that always fails with a serialization failure (40001), returned"
                                  f" {what!r} after {len(calls)} attempt(s): the caller never learns the work was"
                                  " not done.", "after the last attempt, raise the error (a bare `raise` in the"
                                  " except block) instead of returning")
            if len(calls) < attempts and _has_state(what, "40001"):
                raise CheckFailed(f"{call}, with work that always fails with a serialization failure (40001, message"
                                  f" 'conflict forced by the check'), ran the work {_times(len(calls))}, not"
                                  f" {_times(attempts)}.", "retry every serialization failure: recognise it by its"
                                  " class (psycopg.errors.SerializationFailure) or exc.sqlstate == '40001', whatever"
                                  " its message says; `attempts` counts every try, the first included")
            if len(calls) != attempts:
                raise CheckFailed(f"{call}, with work that always fails with 40001, ran the work {_times(len(calls))},"
                                  f" not {_times(attempts)}.", "`attempts` counts every try, the first included: try"
                                  " at most `attempts` times in all, then raise")
            if not _has_state(what, "40001"):
                raise CheckFailed(f"{call}, with work that always fails with 40001, raised {_first_line(what)}; the"
                                  " serialization failure itself was lost.", "re-raise the serialization failure"
                                  " (a bare `raise`), or raise your own error `from` it")

        # 6 runs, and up to 24 while the least waited is between 5 and 25 ms, where a loop that does not wait
        # on a busy machine can land: other work only ever adds time, so a loop that waits is never taken for
        # one that does not, and the more runs, the likelier a quiet one shows a loop that does not wait.
        attempts, runs, most = 5, 6, 24
        gaps: list[list[float]] = []
        reference: list[float] = []
        while len(gaps) < runs or (len(gaps) < most and 0.005 <= _least_waited(gaps, reference) < 0.025):
            reference += _reference_gaps(conn, attempts)
            work, calls = _counting(CONFLICT)
            how, what = _retry_call(fn, conn, work, attempts, tables.tag, timeout=15)
            if how == "returned" or len(calls) != attempts:
                raise CheckFailed(f"{name}(conn, work, {attempts}) with work that always fails with 40001 ran it"
                                  f" {_times(len(calls))} and {'returned' if how == 'returned' else 'raised'}.",
                                  "try at most `attempts` times in all, then raise the last error")
            gaps.append([b - a for a, b in zip(calls, calls[1:], strict=False)])
        own = min(reference)  # an attempt's own duration, without any wait
        waits = [[max(0.0, g - own) for g in run_gaps] for run_gaps in gaps]
        best_total, runs = _least_waited(gaps, reference), len(gaps)
        if best_total < 0.005:
            raise CheckFailed(f"{name} retried back to back: over {attempts - 1} retries it waited"
                              f" {best_total * 1000:.1f} ms in all beyond the attempts' own time (best of {runs}"
                              f" runs; an attempt takes {own * 1000:.1f} ms here, measured by the check's own retry"
                              " loop; at least 5 ms in all expected).",
                              "sleep before each retry, longer each time, with some randomness (time.sleep)")
        early = sum(w[0] + w[1] for w in waits)
        late = sum(w[-2] + w[-1] for w in waits)
        if late < 1.5 * early:
            raise CheckFailed(f"{name}'s waits did not grow: over {runs} runs of {attempts} attempts, the waits before"
                              f" the last two retries came to {late * 1000:.0f} ms in all, those before the first two"
                              f" to {early * 1000:.0f} ms (at least 1.5 times as much expected).",
                              "multiply the wait with each attempt, e.g. base * 2 ** attempt, times a random"
                              " factor")

        bugs = [
            ("a missing column (UndefinedColumn)", "SELECT no_such_column FROM counter", None,
             psycopg.errors.UndefinedColumn),
            ("a duplicate key (UniqueViolation)", "INSERT INTO counter VALUES (1, 0)", None,
             psycopg.errors.UniqueViolation),
            ("a ZeroDivisionError in Python", None, ZeroDivisionError("division by zero"), ZeroDivisionError),
            ("a RuntimeError saying 'could not serialize the report'", None,
             RuntimeError("could not serialize the report to JSON"), RuntimeError),
            ("a lock timeout (LockNotAvailable, SQLSTATE 55P03)",
             "SELECT exercise04.fail('55P03', 'lock timeout forced by the check')", None,
             psycopg.errors.LockNotAvailable),
        ]
        for what_bug, statement, python, kind in bugs:
            work, calls = _counting(statement, python)
            how, what = _retry_call(fn, conn, work, 4, tables.tag)
            if how == "returned":
                raise CheckFailed(f"{name}(conn, work, 4) with work that fails with {what_bug} returned {what!r}:"
                                  " the error was swallowed.", "catch only psycopg.errors.SerializationFailure and"
                                  " psycopg.errors.DeadlockDetected; let every other error propagate")
            if len(calls) != 1:
                broad = (" psycopg.OperationalError is the parent of SerializationFailure, but also of lock"
                         " timeouts (55P03), cancelled queries (57014) and the like, which a retry loop must not"
                         " swallow." if isinstance(what, psycopg.OperationalError) else "")
                raise CheckFailed(f"{name}(conn, work, 4) ran work that fails with {what_bug} {_times(len(calls))};"
                                  f" retrying cannot fix it.{broad}", "retry only serialization failures and deadlocks"
                                  " (catch psycopg.errors.SerializationFailure and psycopg.errors.DeadlockDetected, or"
                                  " test exc.sqlstate in ('40001', '40P01'); not the message text); let other errors"
                                  " propagate at once")
            if not any(isinstance(e, kind) for e in _chain(what)):
                raise CheckFailed(f"{name}(conn, work, 4) with work that fails with {what_bug} raised"
                                  f" {_first_line(what)} instead.", "let other errors propagate as they are")

        work, calls = _counting("SELECT exercise04.fail('40P01', 'deadlock forced by the check')")
        how, what = _retry_call(fn, conn, work, 3, tables.tag)
        if how == "returned" or not _has_state(what, "40P01") or not 1 <= len(calls) <= 3:
            raise CheckFailed(f"{name}(conn, work, 3) with work that always fails with a deadlock (40P01) ran it"
                              f" {_times(len(calls))} and " + (f"returned {what!r}." if how == "returned" else
                                                             f"raised {_first_line(what)}."),
                              "retrying a deadlock is allowed, but at most `attempts` times in all, and the last"
                              " error must propagate")
        _judge_cap(fn, name, conn, tables.tag)
    passed(2, "90 contended increments all counted; at most `attempts` tries, with a growing wait that stays under"
              f" its cap ({CAP_ATTEMPTS} attempts, no wait above {WAIT_CAP:g} s), then the 40001 raised; other errors"
              " raised at once, not retried.")


# --- exercise 3: place_order_with_note -----------------------------------------------------------

def _limit(admin, n: int) -> None:
    admin.execute(sql.SQL("ALTER TABLE exercise04.notes DROP CONSTRAINT note_length, ADD CONSTRAINT note_length"
                          " CHECK (length(note) <= {})").format(sql.Literal(int(n))))


def _saved(admin) -> dict:
    return {
        "orders": admin.execute("SELECT id, customer FROM exercise04.orders ORDER BY id").fetchall(),
        "items": admin.execute("SELECT order_id, product, quantity FROM exercise04.order_items"
                               " ORDER BY order_id, product").fetchall(),
        "notes": admin.execute("SELECT order_id, note FROM exercise04.notes ORDER BY order_id").fetchall(),
        "ids": admin.execute("SELECT last_value, is_called FROM exercise04.orders_id_seq").fetchone(),
    }


EARLIER = 9001  # an order already saved, with an id above those the sequence hands out


def place_order_with_note(fn) -> None:
    """Exercise 3: fn(conn, customer, items, note) -> order id; a note the table refuses drops the note
    only (a savepoint), an invalid item saves nothing and raises."""
    name = getattr(fn, "__name__", "place_order_with_note")
    savepoint = ("insert the note inside a nested `with conn.transaction():` (a savepoint), and catch its error"
                 " outside that inner block")
    with _exercise_tables(3) as tables:
        admin, conn = tables.admin, tables.connect()
        admin.execute("INSERT INTO exercise04.orders (id, customer) OVERRIDING SYSTEM VALUE VALUES (%s, %s)",
                      (EARLIER, "an order saved before"))

        def order(customer, items, note, limit):
            _limit(admin, limit)
            before = _saved(admin)
            how, what = _outcome(3, fn, conn, customer, items, note, tag=tables.tag)
            return before, how, what, _saved(admin), describe_call(fn, (conn, customer, items, note))

        split: list[CheckFailed] = []  # judged after the invalid orders, whose verdict says more about autocommit

        def new_order(before, after, how, what, call, customer, items, why, note_refused=False):
            """The one order this call saved: (its id, the notes saved for it)."""
            added = [o for o in after["orders"] if o not in before["orders"]]
            if how == "raised":
                raise CheckFailed(f"{call} raised {_first_line(what)} ({why}).",
                                  savepoint if note_refused else
                                  "run your function on its own in a cell with these arguments, and read the error")
            if not added:
                raise CheckFailed(f"{call} ({why}) returned {what!r}, but no order was saved: its transaction rolled"
                                  " back.", savepoint + "; a failed statement outside a savepoint dooms the whole"
                                  " transaction" if note_refused else "commit the order: end the"
                                  " `with conn.transaction():` block normally")
            if len(added) != 1:
                raise CheckFailed(f"{call} ({why}) saved {len(added)} orders, not one.",
                                  "insert the order once, in one transaction with its items")
            order_id, saved_customer = added[0]
            if not isinstance(what, bool) and what == EARLIER:
                raise CheckFailed(f"{call} returned {what!r}, the highest id in orders (an order the check saved"
                                  f" earlier), not the id of the order it saved ({order_id}).",
                                  "take the id from the INSERT itself (INSERT ... RETURNING id): the highest id"
                                  " belongs to another order as soon as anyone else inserts one")
            if isinstance(what, bool) or what != order_id:
                raise CheckFailed(f"{call} returned {what!r}; the order it saved has id {order_id}.",
                                  "return the id the server gave the order: INSERT ... RETURNING id")
            used = after["ids"][0] - (before["ids"][0] if before["ids"][1] else before["ids"][0] - 1)
            if used != 1:
                raise CheckFailed(f"{call} ({why}) inserted the order {used} times (it used {used} order ids): the"
                                  " whole order was rolled back and saved again.", savepoint)
            items_saved = sorted((p, q) for o, p, q in after["items"] if o == order_id)
            if saved_customer != customer or items_saved != sorted(items):
                raise CheckFailed(f"{call} saved the order as customer {saved_customer!r} with items {items_saved}.",
                                  "insert the values exactly as given, as parameters")
            xacts = admin.execute("SELECT DISTINCT tbl, xact FROM exercise04.written WHERE order_id = %s",
                                  (order_id,)).fetchall()
            if any(o == order_id for o, _ in after["notes"]) and len({x for _, x in xacts}) > 1:
                split.append(CheckFailed(
                    f"{call} ({why}) committed the order in one transaction and wrote its note in another"
                    " transaction, after it: for a moment other sessions saw the order without its note, and a"
                    " failure in between would lose the note.",
                    "insert the note inside the order's `with conn.transaction():` block, in a nested transaction"
                    " block (a savepoint), so that order and note commit together"))
            return order_id, [n for o, n in after["notes"] if o == order_id]

        customer, items, note = "Ada O'Neil", [("kettle 1.7l", 17), ('mug "Grande"', 23)], "Don't open before the 24th!"
        before, how, what, after, call = order(customer, items, note, 30)
        _, notes_saved = new_order(before, after, how, what, call, customer, items,
                                   "a valid order with a note the table accepts")
        if notes_saved != [note]:
            raise CheckFailed(f"{call}: a note the notes table accepts was saved as {notes_saved}.",
                              "insert the note as given, as a parameter, inside its savepoint")

        customer, items, note = "Grace", [("lamp", 19)], "Please wrap it in blue paper, thanks!"  # 37 characters
        before, how, what, after, call = order(customer, items, note, 30)
        _, notes_saved = new_order(before, after, how, what, call, customer, items,
                                   "the notes table refuses this note: the check set its limit to 30 characters",
                                   note_refused=True)
        if notes_saved:
            raise CheckFailed(f"{call}: a note the notes table refuses (the check set its limit to 30) was saved.",
                              "let the database judge the note")

        customer, items, note = "Linus", [("desk", 29)], "Happy new office! From all of us on the team."  # 46
        before, how, what, after, call = order(customer, items, note, 50)
        _, notes_saved = new_order(before, after, how, what, call, customer, items,
                                   "the check set the notes limit to 50 characters")
        if notes_saved != [note]:
            raise CheckFailed(f"{call}: a note of {len(note)} characters, which the notes table accepts (the check"
                              " set its limit to 50), was not saved.",
                              "do not test the note's length in Python: insert it in a savepoint and drop it only"
                              " when the database refuses it")

        invalid = [("Barbara", [("chair", 31), ("stool", 0)], "quantity 0 is invalid", None),
                   ("Edsger", [("chair", 37), ("bench", 500)], "the check set a limit of 99 on order_items.quantity",
                    "ALTER TABLE exercise04.order_items DROP CONSTRAINT item_quantity, ADD CONSTRAINT item_quantity"
                    " CHECK (quantity BETWEEN 1 AND 99)")]
        for customer, items, why, change in invalid:
            if change:
                admin.execute(change)
            before, how, what, after, call = order(customer, items, "Fine note", 50)
            if after["orders"] != before["orders"] or after["items"] != before["items"] or after["notes"] != before["notes"]:
                raise CheckFailed(f"{call} ({why}) saved part of the order: orders {len(before['orders'])} ->"
                                  f" {len(after['orders'])}, items {len(before['items'])} -> {len(after['items'])},"
                                  f" notes {len(before['notes'])} -> {len(after['notes'])}.",
                                  "put the whole order in one transaction block (with conn.transaction():), and let"
                                  " the database judge the items")
            if how == "returned":
                raise CheckFailed(f"{call} ({why}) saved nothing but returned {what!r} without raising: the caller"
                                  " cannot tell the order was refused.", "catch only the note's error, inside the"
                                  " order's transaction; let an item's error propagate")
        if split:
            raise split[0]
        _no_pasted_values(tables, name, {
            "Ada O'Neil": "Ada O'Neil", "kettle 1.7l": "kettle 1.7l", 'mug "Grande"': 'mug "Grande"',
            "Don't open before the 24th!": "Don't open before the 24th!", "Grace": "Grace",
            "Please wrap it": "Please wrap it in blue paper, thanks!", "Linus": "Linus",
            "Happy new office!": "Happy new office! From all of us on the team.", "Barbara": "Barbara",
            "stool": "stool", "Edsger": "Edsger", "bench": "bench",
            "17": 17, "23": 23, "19": 19, "29": 29, "31": 31, "37": 37, "500": 500,
            **{str(i): i for i in range(7001, 7011)}})
    passed(3, "a refused note dropped only the note (the table's limit judged it), an invalid item saved nothing"
              " and raised, and the new order's id came back.")
