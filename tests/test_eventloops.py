"""pgcourse.eventloops: a coroutine in a new loop on a worker thread, stranded objects collected quietly,
log records counted, psycopg's ProactorEventLoop message read from its source."""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings

import pytest

from pgcourse.eventloops import (
    collect_stranded,
    counted_logs,
    outcome,
    psycopg_proactor_messages,
    run_in_new_loop,
)


def test_outcome_is_a_value_or_a_short_error_line():
    assert outcome(3) == "3"
    assert outcome("3 rows") == "3 rows"
    assert outcome(ValueError("bad\nsecond line")) == "ValueError: bad"
    assert outcome(TimeoutError()) == "TimeoutError"
    long = RuntimeError(
        "Task <Task pending name='Task-4' coro=<f() running at /x/y.py:19> cb=[g(<Future p>)()]>"
        " got Future <Future pending cb=[h()]> attached to a different loop"
    )
    assert outcome(long) == "RuntimeError: Task <Task ...> got Future <Future ...> attached to a different loop"


def test_each_call_gets_a_new_loop_in_another_thread():
    seen = []

    async def where():
        seen.append((id(asyncio.get_running_loop()), threading.get_ident()))
        return "done"

    assert run_in_new_loop(where) == "done"
    assert run_in_new_loop(where) == "done"
    assert seen[0][1] != threading.get_ident()
    assert len(seen) == 2


def test_errors_and_timeouts_come_back_as_text_and_warnings_stay_inside():
    async def fails():
        raise LookupError("nothing here")

    async def hangs():
        await asyncio.sleep(5)

    async def leaves_a_coroutine():
        asyncio.sleep(0)  # never awaited: Python warns when it is collected
        return 1

    assert run_in_new_loop(fails) == "LookupError: nothing here"
    assert run_in_new_loop(hangs, timeout=0.05) == "TimeoutError"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_in_new_loop(leaves_a_coroutine) == "1"
    assert not caught


def test_collect_stranded_counts_the_warnings_it_silenced():
    class Leaky:
        def __del__(self):
            warnings.warn("unclosed thing", ResourceWarning, stacklevel=1)

    a, b = Leaky(), Leaky()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    del a, b
    assert collect_stranded() >= 2


def test_counted_logs_count_by_message_and_print_nothing(capsys):
    log = logging.getLogger("eventloops_test.child")
    with counted_logs("eventloops_test") as counts:
        log.warning("closing %s", "<Conn at 0xdeadbeef>")
        log.warning("closing %s", "<Conn at 0x1234>")
    log.warning("after")  # not counted once the block ends
    assert counts == {"WARNING: closing <Conn>": 2}
    assert "closing" not in capsys.readouterr().err


def test_psycopg_message_is_read_from_the_installed_source():
    messages = psycopg_proactor_messages()
    assert len(messages) == 2
    for message in messages.values():
        assert message.startswith("Psycopg cannot use the 'ProactorEventLoop' to run in async mode.")
    assert any("WindowsSelectorEventLoopPolicy" in m for m in messages.values())
    assert any("loop_factory" in m for m in messages.values())


@pytest.mark.parametrize("bad", [None, 0])
def test_a_non_callable_is_an_error_outcome(bad):
    assert run_in_new_loop(bad).startswith("TypeError")
