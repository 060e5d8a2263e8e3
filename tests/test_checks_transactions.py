"""Lesson 04's checks reject plausible wrong answers, including ones that pass when run alone."""

from __future__ import annotations

import time
from decimal import Decimal

import psycopg
import pytest

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import transactions as checks

pytestmark = pytest.mark.usefixtures("checks_database")


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def transfer(conn, source, target, amount):
    with conn.transaction():
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def _write_in_id_order(conn, changes: dict[int, str], amount) -> None:
    for account in sorted(changes):  # updates in id order: no deadlock, so only the missing locks show
        conn.execute(f"UPDATE accounts SET {changes[account]} WHERE id = %s", (amount, account))


def transfer_no_locks(conn, source, target, amount):  # right when run alone; loses money under concurrency
    with conn.transaction():
        have = conn.execute("SELECT balance FROM accounts WHERE id = %s", (source,)).fetchone()[0]
        other = conn.execute("SELECT balance FROM accounts WHERE id = %s", (target,)).fetchone()
        if other is None or have < amount:
            raise ValueError("refused")
        time.sleep(0.001)
        new = {source: have - amount, target: other[0] + amount}
        for account in sorted(new):
            conn.execute("UPDATE accounts SET balance = %s WHERE id = %s", (new[account], account))


def transfer_check_then_decrement(conn, source, target, amount):  # can go negative under concurrency
    with conn.transaction():
        have = conn.execute("SELECT balance FROM accounts WHERE id = %s", (source,)).fetchone()[0]
        if have < amount or conn.execute("SELECT 1 FROM accounts WHERE id = %s", (target,)).fetchone() is None:
            raise ValueError("refused")
        time.sleep(0.001)
        _write_in_id_order(conn, {source: "balance = balance - %s", target: "balance = balance + %s"}, amount)


def transfer_not_atomic(conn, source, target, amount):  # autocommit: each statement on its own
    have = conn.execute("SELECT balance FROM accounts WHERE id = %s", (source,)).fetchone()[0]
    if have < amount:
        raise ValueError("refused")
    conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
    if conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target)).rowcount != 1:
        raise ValueError("no such account")


def transfer_lock_in_argument_order(conn, source, target, amount):  # deadlocks under concurrency
    with conn.transaction():
        have = conn.execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (source,)).fetchone()[0]
        time.sleep(0.001)
        if conn.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (target,)).fetchone() is None or have < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def test_transfer_passes_the_solution_and_stops_the_stub(capsys):
    checks.transfer(transfer)
    assert "Exercise 1 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.transfer(stub)


@pytest.mark.parametrize("wrong, said", [
    (transfer_no_locks, "money appeared or vanished|Eight simultaneous transfers"),
    (transfer_check_then_decrement, "a balance was negative|Eight simultaneous transfers of 60"),
    (transfer_not_atomic, "still took the money from the source"),
    (transfer_lock_in_argument_order, "deadlock"),
])
def test_transfer_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said):
        checks.transfer(wrong)


def retry(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            time.sleep(0.002 * 2**attempt)


def retry_never(conn, work, attempts):
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        work(conn)


def retry_read_committed(conn, work, attempts):
    with conn.transaction():
        work(conn)


def retry_everything(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.Error:
            if attempt == attempts:
                raise
            time.sleep(0.002 * 2**attempt)


def retry_no_wait(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise


def retry_forever_then_quiet(conn, work, attempts):
    for _ in range(attempts + 10):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            time.sleep(0.002)


def test_with_retry_passes_the_solution_and_stops_the_stub(capsys):
    checks.with_retry(retry)
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.with_retry(stub)


@pytest.mark.parametrize("wrong, said", [
    (retry_never, "escaped from with_retry"),
    (retry_read_committed, "isolation level read committed|left the counter at"),
    (retry_everything, "was tried 4 times"),
    (retry_no_wait, "back to back"),
    (retry_forever_then_quiet, "did not make with_retry fail"),
])
def test_with_retry_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said):
        checks.with_retry(wrong)


def order(conn, customer, items, note):
    with conn.transaction():
        order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
        for product, quantity in items:
            conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
        try:
            with conn.transaction():
                conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
        except psycopg.errors.CheckViolation:
            pass
    return order_id


def order_no_savepoint(conn, customer, items, note):
    with conn.transaction():
        order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
        for product, quantity in items:
            conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
        try:
            conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
        except psycopg.errors.CheckViolation:
            pass  # the transaction is aborted now: the next statement, or the commit, fails
    return order_id


def order_autocommit(conn, customer, items, note):
    order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
    for product, quantity in items:
        conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
    try:
        conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
    except psycopg.errors.CheckViolation:
        pass
    return order_id


def test_place_order_with_note_passes_the_solution_and_stops_the_stub(capsys):
    checks.place_order_with_note(order)
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.place_order_with_note(stub)


@pytest.mark.parametrize("wrong, said", [
    (order_no_savepoint, "made the whole call fail|should stay"),
    (order_autocommit, "nothing of that order should be saved"),
])
def test_place_order_with_note_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said):
        checks.place_order_with_note(wrong)


def test_the_unlocked_transfer_is_right_when_run_alone():
    """The plausible wrong answer really is plausible: one transfer at a time, it is correct."""
    with checks._exercise_tables() as (connect, admin):
        conn = connect()
        transfer_no_locks(conn, 1, 2, Decimal(30))
        assert checks._balances(admin) == {1: 70, 2: 130, 3: 100, 4: 100}
