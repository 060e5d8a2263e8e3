"""Lesson 04's checks reject plausible wrong answers, including ones that pass when run alone, and accept
the right alternatives."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from time import sleep

import nbformat
import psycopg
import pytest
from psycopg import sql

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import transactions as checks

pytestmark = pytest.mark.usefixtures("checks_database")


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def _rejects(check, wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        check(wrong)
    assert "Hint:" in str(caught.value)
    assert "Traceback" not in str(caught.value)


# --- exercise 1: transfer ------------------------------------------------------------------------

def _validate(source, target, amount):
    if amount <= 0:
        raise ValueError("the amount must be positive")
    if source == target:
        raise ValueError("source and target are the same account")


def transfer(conn, source, target, amount):
    _validate(source, target, amount)
    with conn.transaction():
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_two_selects_in_id_order(conn, source, target, amount):  # right: one row lock at a time, in id order
    _validate(source, target, amount)
    with conn.transaction():
        found = {}
        for account in sorted((source, target)):
            row = conn.execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (account,)).fetchone()
            if row is None:
                raise LookupError(f"no account {account}")
            found[account] = row[0]
        if found[source] < amount:
            raise ValueError("insufficient funds")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_conditional_update(conn, source, target, amount):  # right: the UPDATE's WHERE judges, in id order
    _validate(source, target, amount)
    with conn.transaction():
        for account in sorted((source, target)):
            if account == source:
                cur = conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s AND balance >= %s",
                                   (amount, source, amount))
            else:
                cur = conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))
            if cur.rowcount != 1:
                raise ValueError("refused: no such account, or not enough money")


def transfer_manual_commit(conn, source, target, amount):  # right: autocommit off, commit or roll back by hand
    _validate(source, target, amount)
    conn.autocommit = False
    try:
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def transfer_sql_identifier(conn, source, target, amount):  # right: psycopg.sql for the table name only
    _validate(source, target, amount)
    table = sql.Identifier("accounts")
    with conn.transaction():
        rows = conn.execute(sql.SQL("SELECT id, balance FROM {} WHERE id IN (%s, %s) ORDER BY id FOR UPDATE")
                            .format(table), (source, target)).fetchall()
        balances = dict(rows)
        if len(balances) != 2:
            raise KeyError("no such account")
        if balances[source] < amount:
            raise RuntimeError("insufficient funds")
        conn.execute(sql.SQL("UPDATE {} SET balance = balance + CASE id WHEN %s THEN -%s ELSE %s END"
                             " WHERE id IN (%s, %s)").format(table), (source, amount, amount, source, target))


class InsufficientFunds(Exception):
    pass


def transfer_table_lock(conn, source, target, amount):  # right, if coarse: one transfer at a time
    _validate(source, target, amount)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE")
        have = cur.execute("SELECT balance FROM accounts WHERE id = %s", (source,)).fetchone()
        if have is None or cur.execute("SELECT 1 FROM accounts WHERE id = %s", (target,)).fetchone() is None:
            raise LookupError("no such account")
        if have[0] < amount:
            raise InsufficientFunds(f"{source} holds {have[0]}")
        cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_advisory_locks(conn, source, target, amount):  # right: advisory locks taken in id order
    _validate(source, target, amount)
    with conn.transaction():
        for account in sorted((source, target)):
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (account,))
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s)",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise InsufficientFunds("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_serializable_with_retry(conn, source, target, amount):  # right: SERIALIZABLE, retried on 40001
    _validate(source, target, amount)
    for attempt in range(20):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s)",
                                             ([source, target],)).fetchall())
                if len(balances) != 2 or balances[source] < amount:
                    raise InsufficientFunds("refused")
                for account in sorted((source, target)):
                    delta = -amount if account == source else amount
                    conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (delta, account))
            return
        except psycopg.errors.SerializationFailure:
            time.sleep(0.002 * 2 ** min(attempt, 6) * random.random())
    raise RuntimeError("gave up")


def _write_in_id_order(conn, changes: dict[int, str], amount) -> None:
    for account in sorted(changes):  # updates in id order: no deadlock, so only the missing locks show
        conn.execute(f"UPDATE accounts SET {changes[account]} WHERE id = %s", (amount, account))


def transfer_no_locks(conn, source, target, amount):  # right when run alone; loses money under concurrency
    _validate(source, target, amount)
    with conn.transaction():
        have = conn.execute("SELECT balance FROM accounts WHERE id = %s", (source,)).fetchone()[0]
        other = conn.execute("SELECT balance FROM accounts WHERE id = %s", (target,)).fetchone()
        if other is None or have < amount:
            raise ValueError("refused")
        new = {source: have - amount, target: other[0] + amount}
        for account in sorted(new):
            conn.execute("UPDATE accounts SET balance = %s WHERE id = %s", (new[account], account))


def transfer_check_then_decrement(conn, source, target, amount):  # can go negative under concurrency
    _validate(source, target, amount)
    with conn.transaction():
        have = conn.execute("SELECT balance FROM accounts WHERE id = %s", (source,)).fetchone()[0]
        if have < amount or conn.execute("SELECT 1 FROM accounts WHERE id = %s", (target,)).fetchone() is None:
            raise ValueError("refused")
        _write_in_id_order(conn, {source: "balance = balance - %s", target: "balance = balance + %s"}, amount)


def transfer_lock_source_only(conn, source, target, amount):  # FOR UPDATE on one row; target written from a stale read
    _validate(source, target, amount)
    with conn.transaction():
        have = conn.execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (source,)).fetchone()[0]
        other = conn.execute("SELECT balance FROM accounts WHERE id = %s", (target,)).fetchone()
        if other is None or have < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = %s WHERE id = %s", (have - amount, source))
        conn.execute("UPDATE accounts SET balance = %s WHERE id = %s", (other[0] + amount, target))


def transfer_not_atomic(conn, source, target, amount):  # autocommit: each statement on its own
    _validate(source, target, amount)
    have = conn.execute("SELECT balance FROM accounts WHERE id = %s", (source,)).fetchone()[0]
    if have < amount:
        raise ValueError("refused")
    conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
    if conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target)).rowcount != 1:
        raise ValueError("no such account")


def transfer_two_transactions(conn, source, target, amount):  # commits half, then the other half
    _validate(source, target, amount)
    with conn.transaction():
        row = conn.execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (source,)).fetchone()
        if row is None or row[0] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
    with conn.transaction():
        if conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target)).rowcount != 1:
            raise ValueError("no such account")


def transfer_autocommit_conditional(conn, source, target, amount):  # each UPDATE commits on its own
    _validate(source, target, amount)
    if conn.execute("SELECT 1 FROM accounts WHERE id = %s", (target,)).fetchone() is None:
        raise LookupError("no such target")
    if conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s AND balance >= %s",
                    (amount, source, amount)).rowcount != 1:
        raise ValueError("refused")
    conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_lock_in_argument_order(conn, source, target, amount):  # deadlocks under concurrency
    _validate(source, target, amount)
    with conn.transaction():
        have = conn.execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (source,)).fetchone()[0]
        if conn.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (target,)).fetchone() is None or have < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_for_share(conn, source, target, amount):  # share locks: both read, then each waits for the other
    _validate(source, target, amount)
    with conn.transaction():
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR SHARE",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_deadlock_wrapped(conn, source, target, amount):  # deadlocks, and hides it behind its own error
    try:
        transfer_lock_in_argument_order(conn, source, target, amount)
    except psycopg.Error:
        raise ValueError("transfer refused") from None


def transfer_deadlock_retried(conn, source, target, amount):  # deadlocks, then retries: works, a second lost each time
    for _ in range(5):
        try:
            return transfer_lock_in_argument_order(conn, source, target, amount)
        except psycopg.errors.DeadlockDetected:
            continue


def transfer_returns_false(conn, source, target, amount):  # refuses by returning False
    try:
        transfer(conn, source, target, amount)
        return True
    except ValueError:
        return False


def transfer_swallows_everything(conn, source, target, amount):
    try:
        transfer(conn, source, target, amount)
    except Exception:
        return None


def transfer_allows_negative(conn, source, target, amount):  # no check of the amount's sign
    with conn.transaction():
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or source == target or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_allows_zero(conn, source, target, amount):
    if amount < 0:
        raise ValueError("negative")
    if source == target:
        raise ValueError("same account")
    return transfer(conn, source, target, amount) if amount else None


def transfer_same_account_ok(conn, source, target, amount):
    if amount <= 0:
        raise ValueError("must be positive")
    with conn.transaction():
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                     ([source, target],)).fetchall())
        if len(balances) != len({source, target}) or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_strictly_more(conn, source, target, amount):  # refuses the whole balance: <= instead of <
    _validate(source, target, amount)
    with conn.transaction():
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] <= amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_float(conn, source, target, amount):
    transfer(conn, source, target, float(amount))


def transfer_pasted_amount(conn, source, target, amount):  # class 1: the amount in an f-string
    _validate(source, target, amount)
    with conn.transaction():
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        conn.execute(f"UPDATE accounts SET balance = balance - {amount} WHERE id = %s", (source,))
        conn.execute(f"UPDATE accounts SET balance = balance + {amount} WHERE id = %s", (target,))


def transfer_pasted_ids(conn, source, target, amount):  # class 1: integers pasted
    _validate(source, target, amount)
    with conn.transaction():
        balances = dict(conn.execute(f"SELECT id, balance FROM accounts WHERE id IN ({int(source)}, {int(target)})"
                                     " ORDER BY id FOR UPDATE").fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_client_cursor(conn, source, target, amount):  # client-side binding: values in the SQL text
    _validate(source, target, amount)
    cur = psycopg.ClientCursor(conn)
    with conn.transaction():
        balances = dict(cur.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                    ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_left_open_on_refusal(conn, source, target, amount):  # autocommit off, no rollback when it raises
    _validate(source, target, amount)
    conn.autocommit = False
    balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                 ([source, target],)).fetchall())
    if len(balances) != 2 or balances[source] < amount:
        raise ValueError("refused")
    conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
    conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))
    conn.commit()


def transfer_never_commits(conn, source, target, amount):  # autocommit off and no commit at all
    _validate(source, target, amount)
    conn.autocommit = False
    balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                 ([source, target],)).fetchall())
    if len(balances) != 2 or balances[source] < amount:
        raise ValueError("refused")
    conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
    conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_closes_conn(conn, source, target, amount):
    with conn:
        transfer(conn, source, target, amount)


def transfer_nowait(conn, source, target, amount):  # fails instead of waiting for a lock
    _validate(source, target, amount)
    with conn.transaction():
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
                                     " NOWAIT", ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_short_lock_timeout(conn, source, target, amount):  # gives up when another transfer holds a row
    _validate(source, target, amount)
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '50ms'")
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))


def transfer_serializable_no_retry(conn, source, target, amount):
    _validate(source, target, amount)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        balances = dict(conn.execute("SELECT id, balance FROM accounts WHERE id = ANY(%s)",
                                     ([source, target],)).fetchall())
        if len(balances) != 2 or balances[source] < amount:
            raise ValueError("refused")
        for account in sorted((source, target)):
            sign = -1 if account == source else 1
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (sign * amount, account))


def transfer_password_in_error(conn, source, target, amount):  # the error it raises names the password
    try:
        transfer(conn, source, target, amount)
    except ValueError as exc:
        raise ValueError(f"{exc} (as {conn.info.user}:{conn.info.password})") from None


def transfer_exits(conn, source, target, amount):
    try:
        transfer(conn, source, target, amount)
    except ValueError:
        sys.exit("transfer refused")


def transfer_prints_url(conn, source, target, amount):
    print("transfer on", conn.info.dsn, "password", conn.info.password)
    transfer(conn, source, target, amount)


def test_transfer_passes_the_solution_and_stops_the_stub(capsys):
    checks.transfer(transfer)
    assert "Exercise 1 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.transfer(stub)


@pytest.mark.parametrize("right", [transfer_two_selects_in_id_order, transfer_conditional_update,
                                   transfer_manual_commit, transfer_sql_identifier, transfer_table_lock,
                                   transfer_advisory_locks, transfer_serializable_with_retry])
def test_transfer_accepts_right_alternatives(right, capsys):
    checks.transfer(right)
    assert "Exercise 1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, said", [
    (transfer_no_locks, "an update was lost"),
    (transfer_check_then_decrement, "Only one of them can be covered"),
    (transfer_lock_source_only, "deadlock"),
    (transfer_not_atomic, "changed balances"),
    (transfer_two_transactions, "changed balances"),
    (transfer_autocommit_conditional, "not one transaction"),
    (transfer_lock_in_argument_order, "deadlock"),
    (transfer_deadlock_wrapped, "deadlock"),
    (transfer_for_share, "(?s)deadlock.*FOR SHARE lets two transfers"),
    (transfer_deadlock_retried, "deadlock"),
    (transfer_returns_false, "returned False without raising"),
    (transfer_swallows_everything, "returned None without raising"),
    (transfer_allows_negative, "negative amount"),
    (transfer_allows_zero, "a transfer of 0"),
    (transfer_same_account_ok, "same account"),
    (transfer_strictly_more, "exactly 68.83"),
    (transfer_float, r"expected 12345678901234567\.88"),
    (transfer_pasted_amount, "wrote the value 31.17 into the text"),
    (transfer_pasted_ids, "wrote the value 410[12] into the text"),
    (transfer_client_cursor, "into the text of its SQL"),
    (transfer_left_open_on_refusal, "still inside an open transaction"),
    (transfer_never_commits, "still inside an open transaction"),
    (transfer_closes_conn, "closed the connection"),
    (transfer_nowait, "LockNotAvailable"),
    (transfer_serializable_no_retry, "SerializationFailure"),
    (transfer_short_lock_timeout, "(?s)balance covered failed under contention.*LockNotAvailable"),
    (transfer_exits, "tried to end the program"),
    (transfer_prints_url, "printed or logged a secret"),
    (transfer_password_in_error, r"raised ValueError: refused \(as learner:\*\*\*\*\*\*\*\*\): the error's message"
                                 " carries a secret"),
])
def test_transfer_rejects_plausible_wrong_answers(wrong, said):
    _rejects(checks.transfer, wrong, said)


def test_the_unlocked_transfer_is_right_when_run_alone():
    """The plausible wrong answer really is plausible: one transfer at a time, it is correct."""
    with checks._exercise_tables() as tables:
        conn = tables.connect()
        transfer_no_locks(conn, 4101, 4102, Decimal(30))
        assert checks._balances(tables.admin)[4101] == 70


# --- exercise 2: with_retry ----------------------------------------------------------------------

def retry(conn, work, attempts):  # the solution's: 40001 and 40P01, a growing wait, capped, with jitter
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
            if attempt == attempts:
                raise
            time.sleep(min(0.5, 0.005 * 2**attempt) * random.uniform(0.5, 1.5))


def retry_uncapped(conn, work, attempts):  # the first edition's solution: the wait doubles for ever
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            time.sleep(0.005 * 2**attempt * random.uniform(0.5, 1.5))


def retry_event_wait(conn, work, attempts):  # waits without time.sleep: the check cannot see the cap
    stop = threading.Event()
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            stop.wait(min(0.05, 0.002 * 2**attempt) * random.uniform(0.5, 1.5))


def retry_sleep_imported(conn, work, attempts):  # right: `from time import sleep`, a cap applied after the jitter
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            sleep(min(1.5, 0.005 * 2**attempt * random.uniform(0.5, 1.5)))


def retry_full_jitter(conn, work, attempts):  # right: AWS-style full jitter, sqlstate test, isolation_level property
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    try:
        for attempt in range(attempts):
            try:
                with conn.transaction():
                    return work(conn)
            except psycopg.Error as exc:
                if exc.sqlstate != "40001" or attempt == attempts - 1:
                    raise
            time.sleep(random.uniform(0, min(1.0, 0.005 * 2 ** (attempt + 1))))
    finally:
        conn.isolation_level = None


class GaveUp(Exception):
    pass


def retry_own_error_and_deadlocks(conn, work, attempts):  # right: retries 40P01 too, raises its own error from it
    delay = 0.01
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as exc:
            if attempt == attempts:
                raise GaveUp(f"gave up after {attempts} attempts") from exc
        time.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(1.0, delay * 2)


def retry_linear_capped(conn, work, attempts):  # right: linear growth with a cap the test never reaches
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            time.sleep(min(1.0, 0.01 * attempt) + random.uniform(0, 0.002))


def retry_while_loop(conn, work, attempts):  # right: a while loop, additive jitter, returns work's result
    before, conn.isolation_level = conn.isolation_level, psycopg.IsolationLevel.SERIALIZABLE
    try:
        tries = 0
        while True:
            tries += 1
            try:
                with conn.transaction():
                    return work(conn)
            except psycopg.errors.SerializationFailure:
                if tries >= attempts:
                    raise
                time.sleep(min(1.0, 0.01 * 2 ** tries) + random.uniform(0, 0.01))
    finally:
        conn.isolation_level = before  # the level is put back: the caller's connection is left as it was


def retry_never(conn, work, attempts):
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        work(conn)


def retry_read_committed(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            time.sleep(0.005 * 2**attempt)


def retry_repeatable_read(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            time.sleep(0.005 * 2**attempt)


def _loop(conn, work, attempts, catch, wait=lambda attempt: 0.005 * 2**attempt, extra=0, on_last="raise"):
    for attempt in range(1, attempts + 1 + extra):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except catch as exc:
            if not should_retry(exc):
                raise
            if attempt >= attempts + extra:
                if on_last == "raise":
                    raise
                return None
            time.sleep(wait(attempt))


def should_retry(exc):
    return True


def retry_everything(conn, work, attempts):
    _loop(conn, work, attempts, psycopg.Error)


def retry_every_exception(conn, work, attempts):
    _loop(conn, work, attempts, Exception)


def retry_operational_error(conn, work, attempts):  # too broad: lock timeouts, cancelled queries are retried too
    for i in range(attempts):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                return work(conn)
        except psycopg.OperationalError:
            if i == attempts - 1:
                raise
            time.sleep(0.005 * 2**i)


def retry_by_message(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except Exception as exc:
            if "could not serialize" not in str(exc) or attempt == attempts:
                raise
            time.sleep(0.005 * 2**attempt)


def retry_by_text_everywhere(conn, work, attempts):  # judges by message text, for psycopg and Python errors alike
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except Exception as exc:
            retryable = isinstance(exc, psycopg.errors.SerializationFailure) or "could not serialize" in str(exc)
            if not retryable or attempt == attempts:
                raise
            time.sleep(0.005 * 2**attempt)


def retry_forever(conn, work, attempts):  # ignores attempts
    delay = 0.005
    while True:
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            time.sleep(delay)
            delay = min(0.5, delay * 2)


def retry_no_wait(conn, work, attempts):
    _loop(conn, work, attempts, psycopg.errors.SerializationFailure, wait=lambda attempt: 0)


def retry_constant_wait(conn, work, attempts):
    _loop(conn, work, attempts, psycopg.errors.SerializationFailure, wait=lambda attempt: 0.01)


def retry_constant_jitter(conn, work, attempts):
    _loop(conn, work, attempts, psycopg.errors.SerializationFailure, wait=lambda attempt: random.uniform(0.005, 0.015))


def retry_one_too_many(conn, work, attempts):
    _loop(conn, work, attempts, psycopg.errors.SerializationFailure, extra=1)


def retry_forever_then_quiet(conn, work, attempts):
    _loop(conn, work, attempts, psycopg.errors.SerializationFailure, extra=10, on_last="return")


def retry_swallows_last(conn, work, attempts):
    _loop(conn, work, attempts, psycopg.errors.SerializationFailure, on_last="return")


def retry_one_too_few(conn, work, attempts):
    for attempt in range(1, attempts):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts - 1:
                raise
            time.sleep(0.005 * 2**attempt)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        work(conn)


def retry_inside_transaction(conn, work, attempts):  # catches inside the block: the transaction is aborted
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        for attempt in range(1, attempts + 1):
            try:
                work(conn)
                return
            except psycopg.errors.SerializationFailure:
                if attempt == attempts:
                    raise
                time.sleep(0.005 * 2**attempt)


def retry_gives_up_with_plain_error(conn, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                break
            time.sleep(0.005 * 2**attempt)
    raise RuntimeError("gave up")  # outside the except block: the 40001 is not attached


def retry_wraps_other_errors(conn, work, attempts):  # a bug in work becomes a RuntimeError without its cause
    try:
        retry(conn, work, attempts)
    except psycopg.errors.SerializationFailure:
        raise
    except Exception:
        raise RuntimeError("work failed") from None


def retry_manual_no_rollback(conn, work, attempts):  # autocommit off, retries without rolling back
    conn.autocommit = False
    for attempt in range(1, attempts + 1):
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            work(conn)
            conn.commit()
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            time.sleep(0.005 * 2**attempt)


def retry_sleeps_after_last(conn, work, attempts):  # waits after the last failure too, then raises
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure as exc:
            last = exc
            time.sleep(min(0.5, 0.005 * 2**attempt))
    raise last


def retry_sleeps_before_first(conn, work, attempts):  # waits at the top of every pass, the first included
    for attempt in range(attempts):
        time.sleep(min(0.5, 0.005 * 2**attempt))
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt + 1 == attempts:
                raise


def retry_sets_session_isolation(conn, work, attempts):  # conn.isolation_level changed, never put back
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts:
                raise
            time.sleep(min(0.5, 0.005 * 2**attempt))


def retry_attempts_minus_one(conn, work, attempts):  # range(1, attempts): with attempts=1 the work never runs
    for attempt in range(1, attempts):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                work(conn)
            return
        except psycopg.errors.SerializationFailure:
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.5, 0.005 * 2**attempt))


def test_with_retry_passes_the_solution_and_stops_the_stub(capsys):
    checks.with_retry(retry)
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.with_retry(stub)


@pytest.mark.parametrize("right", [retry_full_jitter, retry_own_error_and_deadlocks, retry_linear_capped,
                                   retry_while_loop, retry_sleep_imported])
def test_with_retry_accepts_right_alternatives(right, capsys):
    checks.with_retry(right)
    assert "Exercise 2 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, said", [
    (retry_never, "escaped from retry_never"),
    (retry_read_committed, "isolation level read committed"),
    (retry_repeatable_read, "isolation level repeatable read"),
    (retry_everything, "(?s)missing column .* 4 times.*DeadlockDetected.*40P01"),
    (retry_every_exception, "missing column .* 4 times"),
    (retry_by_message, "ran the work once, not 3 times"),
    (retry_by_text_everywhere, "could not serialize the report.* 4 times"),
    (retry_forever, "did not finish within 15 s"),
    (retry_no_wait, "back to back"),
    (retry_constant_wait, "did not grow"),
    (retry_constant_jitter, "did not grow"),
    (retry_one_too_many, "ran the work twice, not once"),
    (retry_one_too_few, "ran the work twice, not 3 times"),
    (retry_forever_then_quiet, "returned None"),
    (retry_swallows_last, "returned None"),
    (retry_inside_transaction, "InFailedSqlTransaction|escaped"),
    (retry_gives_up_with_plain_error, "serialization failure itself was lost"),
    (retry_wraps_other_errors, "raised RuntimeError: work failed instead"),
    (retry_manual_no_rollback, "failed transaction|InFailedSqlTransaction"),
    (retry_operational_error, "(?s)lock timeout .*55P03.* 4 times.*OperationalError"),
    (retry_uncapped, r"(?s)asked time.sleep for [\d,.]+ s before retry \d+.*no single wait may exceed 2 s.*cap the wait"),
    (retry_event_wait, "saw 0 call\\(s\\) of time.sleep"),
    (retry_sleeps_after_last, r"(?s)after the last attempt failed \(16 wait\(s\) for 16 attempts.*raise at once"),
    (retry_sleeps_before_first, r"(?s)before the first attempt.*wait only between attempts"),
    (retry_sets_session_isolation, r"(?s)changed the connection's isolation level for good.*SERIALIZABLE.*finally"),
    (retry_attempts_minus_one, r"(?s)\(conn, work, 1\) never called work.*with attempts=1 the work runs once"),
])
def test_with_retry_rejects_plausible_wrong_answers(wrong, said):
    _rejects(checks.with_retry, wrong, said)


def _solution(name):
    """The answer as the solutions notebook writes it (its cell defining `name`), run as the learner runs it."""
    notebook = Path(__file__).resolve().parents[1] / "solutions" / "04_transactions_exercises.ipynb"
    source = next(c.source for c in nbformat.read(notebook, as_version=4).cells if c.source.startswith(f"def {name}("))
    namespace = {"psycopg": psycopg, "time": time, "random": random, "Callable": Callable}
    exec(source, namespace)  # noqa: S102 - the course's own solution cell
    return namespace[name]


def test_the_solutions_notebook_retries_deadlocks_with_a_capped_growing_wait(capsys, monkeypatch):
    answer = _solution("with_retry")
    checks.with_retry(answer)
    assert "Exercise 2 passed" in capsys.readouterr().out
    calls, waits = [], []
    monkeypatch.setattr(time, "sleep", waits.append)

    def deadlocked(conn):
        calls.append(1)
        conn.execute("DO $$ BEGIN RAISE EXCEPTION 'deadlock forced by the test' USING ERRCODE = '40P01'; END $$")

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DeadlockDetected):
            answer(conn, deadlocked, 12)
    assert len(calls) == 12 and len(waits) == 11
    assert max(waits) <= 0.75 and waits[5] > waits[0]  # capped at 0.5 s times at most 1.5, growing before the cap


# --- exercise 3: place_order_with_note -----------------------------------------------------------

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


def order_broad_savepoint(conn, customer, items, note):  # right: catches any database error of the note
    with conn.transaction():
        cur = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,))
        order_id = cur.fetchone()[0]
        cur.executemany("INSERT INTO order_items (order_id, product, quantity) VALUES (%s, %s, %s)",
                        [(order_id, p, q) for p, q in items])
        try:
            with conn.transaction(savepoint_name="note"):
                conn.execute("INSERT INTO notes (order_id, note) VALUES (%s, %s)", (order_id, note))
        except psycopg.Error:
            pass
    return order_id


def order_integrity_error(conn, customer, items, note):  # right: the parent class, with a cursor
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,))
        (order_id,) = cur.fetchone()
        for product, quantity in items:
            cur.execute("INSERT INTO order_items (order_id, product, quantity) VALUES (%s, %s, %s)",
                        (order_id, product, quantity))
        try:
            with conn.transaction():
                cur.execute("INSERT INTO notes (order_id, note) VALUES (%s, %s)", (order_id, note))
        except psycopg.errors.IntegrityError:
            pass
    return order_id


def order_manual_savepoint(conn, customer, items, note):  # right: SAVEPOINT by hand, autocommit off
    conn.autocommit = False
    try:
        order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
        for product, quantity in items:
            conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
        conn.execute("SAVEPOINT note")
        try:
            conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
        except psycopg.errors.CheckViolation:
            conn.execute("ROLLBACK TO SAVEPOINT note")
        conn.commit()
        return order_id
    except BaseException:
        conn.rollback()
        raise


def order_max_id(conn, customer, items, note):  # the highest id, not the one its INSERT got
    with conn.transaction():
        conn.execute("INSERT INTO orders (customer) VALUES (%s)", (customer,))
        order_id = conn.execute("SELECT max(id) FROM orders").fetchone()[0]
        for product, quantity in items:
            conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
        try:
            with conn.transaction():
                conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
        except psycopg.errors.CheckViolation:
            pass
    return order_id


def order_note_after_commit(conn, customer, items, note):  # the order commits first, the note on its own after
    with conn.transaction():
        order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
        for product, quantity in items:
            conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
    try:
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


def order_autocommit_python_items(conn, customer, items, note):  # not atomic: relies on judging items in Python
    if any(quantity <= 0 for _, quantity in items):
        raise ValueError("invalid quantity")
    order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
    for product, quantity in items:
        conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
    try:
        conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
    except psycopg.errors.CheckViolation:
        pass
    return order_id


def order_skips_bad_items(conn, customer, items, note):  # drops the invalid item instead of refusing the order
    return order(conn, customer, [(p, q) for p, q in items if q > 0], note)


def order_python_length(conn, customer, items, note):  # class 2: judges the note in Python
    with conn.transaction():
        order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
        for product, quantity in items:
            conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
        if len(note) <= 40:
            conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
    return order_id


def order_python_length_30(conn, customer, items, note):  # class 2: fits the first limit the check uses
    with conn.transaction():
        order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
        for product, quantity in items:
            conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
        if len(note) <= 30:
            conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
    return order_id


def order_retry_without_note(conn, customer, items, note):  # the whole order again, instead of a savepoint
    def save(with_note):
        with conn.transaction():
            order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id",
                                    (customer,)).fetchone()[0]
            for product, quantity in items:
                conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
            if with_note:
                conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
        return order_id
    try:
        return save(True)
    except psycopg.errors.CheckViolation:
        return save(False)


def order_swallows_item_error(conn, customer, items, note):
    try:
        return order(conn, customer, items, note)
    except psycopg.Error:
        return None


def order_returns_nothing(conn, customer, items, note):
    order(conn, customer, items, note)


def order_returns_first_id(conn, customer, items, note):  # a constant
    order(conn, customer, items, note)
    return 7001


def order_pasted_note(conn, customer, items, note):  # class 1: hand-escaped quotes
    with conn.transaction():
        order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
        for product, quantity in items:
            conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
        try:
            with conn.transaction():
                escaped = note.replace("'", "''")
                conn.execute(f"INSERT INTO notes VALUES (%s, '{escaped}')", (order_id,))
        except psycopg.errors.CheckViolation:
            pass
    return order_id


def order_pasted_quantity(conn, customer, items, note):  # class 1: an integer pasted
    with conn.transaction():
        order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
        for product, quantity in items:
            conn.execute(f"INSERT INTO order_items VALUES (%s, %s, {int(quantity)})", (order_id, product))
        try:
            with conn.transaction():
                conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
        except psycopg.errors.CheckViolation:
            pass
    return order_id


def order_left_open(conn, customer, items, note):  # autocommit off, no rollback when an item fails
    conn.autocommit = False
    order_id = conn.execute("INSERT INTO orders (customer) VALUES (%s) RETURNING id", (customer,)).fetchone()[0]
    for product, quantity in items:
        conn.execute("INSERT INTO order_items VALUES (%s, %s, %s)", (order_id, product, quantity))
    conn.execute("SAVEPOINT note")
    try:
        conn.execute("INSERT INTO notes VALUES (%s, %s)", (order_id, note))
    except psycopg.errors.CheckViolation:
        conn.execute("ROLLBACK TO SAVEPOINT note")
    conn.commit()
    return order_id


def test_place_order_with_note_passes_the_solution_and_stops_the_stub(capsys):
    checks.place_order_with_note(order)
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.place_order_with_note(stub)


@pytest.mark.parametrize("right", [order_broad_savepoint, order_manual_savepoint, order_integrity_error])
def test_place_order_with_note_accepts_right_alternatives(right, capsys):
    checks.place_order_with_note(right)
    assert "Exercise 3 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, said", [
    (order_no_savepoint, "but no order was saved"),
    (order_autocommit, "saved part of the order"),
    (order_autocommit_python_items, "limit of 99 .*saved part of the order"),
    (order_skips_bad_items, "saved part of the order"),
    (order_python_length, "raised CheckViolation"),
    (order_python_length_30, "was not saved"),
    (order_retry_without_note, "inserted the order 2 times"),
    (order_swallows_item_error, "returned None without raising"),
    (order_returns_nothing, "returned None; the order it saved has id"),
    (order_returns_first_id, "returned 7001; the order it saved has id 7002"),
    (order_pasted_note, "wrote the value Don't open before the 24th! into the text"),
    (order_pasted_quantity, "wrote the value 17 into the text"),
    (order_left_open, "still inside a failed transaction"),
    (order_max_id, "returned 9001, the highest id in orders"),
    (order_note_after_commit, "note in another transaction"),
])
def test_place_order_with_note_rejects_plausible_wrong_answers(wrong, said):
    _rejects(checks.place_order_with_note, wrong, said)
