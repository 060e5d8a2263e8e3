"""Checks for lesson 04 (transactions): a safe transfer, a serialization retry, a savepoint."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal

import psycopg
from psycopg.conninfo import make_conninfo

from . import CheckFailed, NotDone, call, database_url, passed

SCHEMA = "exercise04"  # also written literally in the SQL below
TABLES = """
DROP SCHEMA IF EXISTS exercise04 CASCADE;
CREATE SCHEMA exercise04;
CREATE TABLE exercise04.accounts (id int PRIMARY KEY, balance numeric(10,2) NOT NULL);
CREATE TABLE exercise04.counter (id int PRIMARY KEY, value int NOT NULL);
CREATE TABLE exercise04.orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer text NOT NULL);
CREATE TABLE exercise04.order_items (order_id int NOT NULL REFERENCES exercise04.orders, product text NOT NULL,
                                  quantity int NOT NULL CHECK (quantity > 0));
CREATE TABLE exercise04.notes (order_id int PRIMARY KEY REFERENCES exercise04.orders,
                            note text NOT NULL CHECK (length(note) <= 40));
INSERT INTO exercise04.accounts SELECT i, 100 FROM generate_series(1, 4) AS i;
INSERT INTO exercise04.counter VALUES (1, 0);
"""
ACCOUNTS, START = 4, Decimal(100)


@contextmanager
def _exercise_tables() -> Iterator:
    """Fresh tables in their own schema; yields connect(), whose connections see only that schema."""
    url = database_url()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(TABLES)
        opened: list[psycopg.Connection] = []

        def connect() -> psycopg.Connection:
            conn = psycopg.connect(make_conninfo(url, options=f"-c search_path={SCHEMA}"), autocommit=True)
            opened.append(conn)
            return conn

        try:
            yield connect, admin
        finally:
            for conn in opened:
                conn.close()
            admin.execute("DROP SCHEMA exercise04 CASCADE")


def _balances(admin) -> dict[int, Decimal]:
    return dict(admin.execute("SELECT id, balance FROM exercise04.accounts ORDER BY id").fetchall())


def _bursts(fn, conns: list[psycopg.Connection], admin) -> None:
    """Eight transfers from one account released at the same instant, ten times over: races show."""
    for _ in range(10):
        for amount, expected in ((60, None), (10, {1: 20, 2: 180})):
            admin.execute("UPDATE exercise04.accounts SET balance = 100")
            barrier = threading.Barrier(len(conns))

            def one(conn: psycopg.Connection, amount: int = amount, barrier=barrier) -> None:
                barrier.wait()
                try:
                    call(1, fn, conn, 1, 2, Decimal(amount))
                except NotDone:
                    raise
                except Exception:  # refused: allowed
                    pass

            with ThreadPoolExecutor(len(conns)) as threads:
                list(threads.map(one, conns))
            got = {k: v for k, v in _balances(admin).items() if k in (1, 2)}
            if amount == 60 and (got[1] < 0 or got[1] + got[2] != 200):
                raise CheckFailed(f"Eight simultaneous transfers of 60 from an account holding 100 left {got}.",
                                  "lock the source row (SELECT ... FOR UPDATE) before checking its balance, so that"
                                  " only one transfer can spend it")
            if expected and got != expected:
                raise CheckFailed(f"Eight simultaneous transfers of 10 from account 1 to 2 left {got}, not {expected}:"
                                  " some updates were lost.", "lock the rows you read (FOR UPDATE), or update with"
                                  " balance = balance - amount after locking")


def transfer(fn) -> None:
    """Exercise 1: fn(conn, source, target, amount) moves money atomically and safely under concurrency."""
    with _exercise_tables() as (connect, admin):
        conn = connect()
        call(1, fn, conn, 1, 2, Decimal(30))
        if _balances(admin) != {1: 70, 2: 130, 3: 100, 4: 100}:
            raise CheckFailed(f"After transfer(conn, 1, 2, 30) the balances were {_balances(admin)}.",
                              "subtract from the source, add to the target")
        try:
            call(1, fn, conn, 1, 2, Decimal(500))
        except NotDone:
            raise
        except Exception:  # any error is a fine way to refuse; what matters is that nothing moved
            pass
        if _balances(admin)[1] != 70:
            raise CheckFailed(f"A transfer of 500 from an account holding 70 left it at {_balances(admin)[1]}.",
                              "refuse a transfer the source cannot cover (raise an error), and change nothing")
        try:
            call(1, fn, conn, 1, 999, Decimal(10))  # the target does not exist
        except NotDone:
            raise
        except Exception:
            pass
        if _balances(admin)[1] != 70:
            raise CheckFailed("A transfer to an account that does not exist still took the money from the source.",
                              "run both updates in one transaction (with conn.transaction():), and fail when the"
                              " target is missing, so that nothing is kept")
        admin.execute("UPDATE exercise04.accounts SET balance = 100")
        failures: list[BaseException] = []
        lock, stop = threading.Lock(), threading.Event()

        def worker(seed: int) -> int:
            rng, own = random.Random(seed), connect()
            moved = 0
            for _ in range(40):
                if stop.is_set():  # one deadlock is enough to judge; each costs the server a second
                    break
                source, target = rng.sample(range(1, ACCOUNTS + 1), 2)
                try:
                    call(1, fn, own, source, target, Decimal(rng.randint(1, 40)))
                    moved += 1
                except psycopg.errors.DeadlockDetected as exc:
                    with lock:
                        failures.append(exc)
                    stop.set()
                except NotDone:
                    raise
                except Exception:  # refused for lack of funds: allowed
                    pass
            return moved

        with ThreadPoolExecutor(8) as threads:
            moved = sum(threads.map(worker, range(8)))
        balances = _balances(admin)
        if failures:
            raise CheckFailed("Concurrent transfers died in a deadlock (40P01).",
                              "lock both accounts in the same order every time, e.g. SELECT ... WHERE id = ANY(...)"
                              " ORDER BY id FOR UPDATE")
        if sum(balances.values()) != ACCOUNTS * START:
            raise CheckFailed(f"After 320 concurrent transfers the total was {sum(balances.values())}, not"
                              f" {ACCOUNTS * START}: money appeared or vanished.",
                              "lock the rows you read (SELECT ... FOR UPDATE) so that no two transfers decide on"
                              " the same old balance")
        if min(balances.values()) < 0:
            raise CheckFailed(f"After 320 concurrent transfers a balance was negative: {balances}.",
                              "check the balance after locking the row (FOR UPDATE), not before")
        _bursts(fn, [connect() for _ in range(8)], admin)
    if moved == 0:
        raise CheckFailed("None of the 320 concurrent transfers went through.", "transfers the source can cover"
                          " must succeed")
    passed(1, "320 concurrent transfers: money conserved, no balance negative, refused ones changed nothing.")


def _conflicting_calls(fn, conn: psycopg.Connection) -> list[float] | None:
    """Run fn with attempts=4 on work that always fails with 40001: when each attempt started, or None if fn returned."""
    calls: list[float] = []

    def always_conflicts(conn: psycopg.Connection) -> None:
        calls.append(time.perf_counter())
        raise psycopg.errors.SerializationFailure("could not serialize access (forced by the check)")

    try:
        call(2, fn, conn, always_conflicts, 4)
    except psycopg.errors.SerializationFailure:
        return calls
    return None


def _shortest_wait(fn, conn: psycopg.Connection, first: list[float], runs: int = 3) -> float:
    """The shortest span from first to last attempt over several runs (best of several: a busy machine only
    lengthens a span, so a loop that never waits shows its true span in at least one of them)."""
    spans = [first[-1] - first[0]]
    for _ in range(runs - 1):
        calls = _conflicting_calls(fn, conn)
        if calls and len(calls) > 1:
            spans.append(calls[-1] - calls[0])
    return min(spans)


def with_retry(fn) -> None:
    """Exercise 2: fn(conn, work, attempts) runs work(conn) SERIALIZABLE, retrying only 40001, at most `attempts` times."""
    with _exercise_tables() as (connect, admin):
        levels: set[str] = set()

        def increment(conn: psycopg.Connection) -> None:
            levels.add(conn.execute("SHOW transaction_isolation").fetchone()[0])
            value = conn.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0]
            time.sleep(0.002)  # widen the window in which another transaction can interfere
            conn.execute("UPDATE counter SET value = %s WHERE id = 1", (value + 1,))

        def worker(_: int) -> None:
            own = connect()
            for _ in range(15):
                call(2, fn, own, increment, 50)

        try:
            with ThreadPoolExecutor(6) as threads:
                list(threads.map(worker, range(6)))
        except psycopg.errors.SerializationFailure:
            conn = connect()
            calls = _conflicting_calls(fn, conn)  # retried too fast and gave up, or never retried?
            if calls and len(calls) > 1 and _shortest_wait(fn, conn, calls) < 0.005:
                raise CheckFailed("A serialization failure (40001) escaped from with_retry after retries that came"
                                  " back to back, with no wait between them.", "sleep a little before each retry,"
                                  " longer each time (with some randomness), so that the conflict can clear") from None
            raise CheckFailed("A serialization failure (40001) escaped from with_retry.",
                              "catch psycopg.errors.SerializationFailure, roll back (leave the transaction block)"
                              " and run the work again") from None
        if levels != {"serializable"}:
            raise CheckFailed(f"The work ran at isolation level {', '.join(sorted(levels))}.",
                              "start each attempt with SET TRANSACTION ISOLATION LEVEL SERIALIZABLE inside"
                              " the transaction block")
        total = admin.execute("SELECT value FROM exercise04.counter").fetchone()[0]
        if total != 90:
            raise CheckFailed(f"90 increments under contention left the counter at {total}.",
                              "run the work inside one transaction per attempt, and retry until it commits")
        conn = connect()
        calls = _conflicting_calls(fn, conn)
        if calls is None:
            raise CheckFailed("Work that always failed with 40001 did not make with_retry fail.",
                              "after the last attempt, raise the error instead of returning")
        if len(calls) != 4:
            raise CheckFailed(f"With attempts=4, work that always conflicts ran {len(calls)} times.",
                              "try at most `attempts` times in total")
        if _shortest_wait(fn, conn, calls) < 0.005:
            raise CheckFailed("The retries came back to back, with no wait between them.",
                              "sleep a little before each retry, longer each time (with some randomness)")
        calls.clear()

        def broken(conn: psycopg.Connection) -> None:
            calls.append(1)
            conn.execute("SELECT no_such_column FROM counter")

        try:
            call(2, fn, connect(), broken, 4)
        except psycopg.errors.UndefinedColumn:
            pass
        if len(calls) != 1:
            raise CheckFailed(f"An error that retrying cannot fix (a missing column) was tried {len(calls)} times.",
                              "retry only SerializationFailure; let other errors propagate at once")
    passed(2, "90 contended increments all counted, at most `attempts` tries with a growing wait, other errors not retried.")


def place_order_with_note(fn) -> None:
    """Exercise 3: fn(conn, customer, items, note) -> order id; a bad note drops the note only, a bad item everything."""
    with _exercise_tables() as (connect, admin):
        conn = connect()

        def saved() -> tuple:
            return admin.execute("SELECT (SELECT count(*) FROM exercise04.orders), (SELECT count(*) FROM"
                                 " exercise04.order_items), (SELECT count(*) FROM exercise04.notes)").fetchone()

        try:
            first = call(3, fn, conn, "ada", [("kettle", 1), ("mug", 2)], "Happy birthday!")
        except psycopg.Error as exc:
            raise CheckFailed(f"A valid order with a valid note failed: {type(exc).__name__}: {exc}",
                              "insert the order, then its items, then the note") from None
        if saved() != (1, 2, 1):
            raise CheckFailed(f"After one order with two items and a note, the tables held {saved()}"
                              " (orders, items, notes).", "save the order, each item, and the note")
        try:
            call(3, fn, conn, "grace", [("lamp", 1)], "x" * 60)
        except psycopg.Error as exc:
            raise CheckFailed(f"A note that breaks its check constraint made the whole call fail:"
                              f" {type(exc).__name__}: {str(exc).splitlines()[0]}",
                              "insert the note inside a nested `with conn.transaction():` (a savepoint) and"
                              " catch its error outside that block") from None
        if saved() != (2, 3, 1):
            raise CheckFailed(f"After an order whose note was too long, the tables held {saved()}"
                              " (orders, items, notes); the order and its item should stay.",
                              "only the note's savepoint should roll back")
        try:
            call(3, fn, conn, "linus", [("chair", 1), ("desk", 0)], "fine note")
        except NotDone:
            raise
        except psycopg.Error:
            pass
        if saved() != (2, 3, 1):
            raise CheckFailed(f"After an order with an invalid item, the tables held {saved()}; nothing of that"
                              " order should be saved.", "put the whole order in one transaction block")
        if not isinstance(first, int):
            raise CheckFailed(f"place_order_with_note returned {first!r}; expected the new order's id.",
                              "INSERT ... RETURNING id")
    passed(3, "a bad note dropped only the note, a bad item dropped the whole order.")
