"""pgcourse.tagged: the server's view of tagged sessions, read once and polled until they settle."""

from __future__ import annotations

import asyncio
import os

import psycopg

from pgcourse.tagged import readable, tagged_sessions, until_settled


async def _connect(name: str | None = None) -> psycopg.AsyncConnection:
    extra = {"application_name": name} if name else {}
    return await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"], autocommit=True, **extra)


def test_only_sessions_whose_name_starts_with_the_tag_are_seen(checks_database):
    async def scenario():
        observer, mine, similar = await _connect(), await _connect("tag_x 1"), await _connect("tagAx 1")
        try:
            await mine.execute("SELECT 1")
            seen = await tagged_sessions(observer, "tag_x")  # '_' is a character here, not a LIKE wildcard
            return seen
        finally:
            for conn in (observer, mine, similar):
                await conn.close()

    seen = asyncio.run(scenario())
    assert list(seen["session"]) == ["tag_x 1"]
    assert list(seen["state"]) == ["idle"] and list(seen["query"]) == ["SELECT 1"]


def test_until_settled_waits_for_a_running_query_and_reports_how_long_it_ran(checks_database):
    async def scenario():
        observer, worker = await _connect(), await _connect("settle 1")
        try:
            running = asyncio.create_task(worker.execute("SELECT pg_sleep(0.4)"))
            await asyncio.sleep(0.15)
            during = await tagged_sessions(observer, "settle")
            after = await until_settled(observer, "settle")
            await running
            return during, after
        finally:
            await observer.close()
            await worker.close()

    during, after = asyncio.run(scenario())
    assert list(during["state"]) == ["active"]
    assert list(after["state"]) == ["idle"] and after["ran_s"].iloc[0] >= 0.35
    shown = readable(after)
    assert shown.loc["settle 1", "ran"].endswith(" ms") and shown.loc["settle 1", "query"] == "SELECT pg_sleep(0.4)"


def test_until_settled_gives_up_after_its_timeout(checks_database):
    async def scenario():
        observer, worker = await _connect(), await _connect("stuck 1")
        try:
            running = asyncio.create_task(worker.execute("SELECT pg_sleep(1)"))
            await asyncio.sleep(0.1)
            view = await until_settled(observer, "stuck", timeout=0.2)
            await running
            return view
        finally:
            await observer.close()
            await worker.close()

    assert list(asyncio.run(scenario())["state"]) == ["active"]


def test_readable_hides_pids_and_says_still_running():
    import pandas as pd

    view = pd.DataFrame([["a 1", 101, "active", "SELECT pg_sleep($1)", 0.0],
                         ["a 2", 102, "idle", "SELECT\n  1", 0.0123],
                         ["a 3", 103, "idle", "", None]], columns=["session", "pid", "state", "query", "ran_s"])
    shown = readable(view)
    assert "pid" not in shown.columns
    assert list(shown["ran"]) == ["still running", "12.3 ms", ""] and shown.loc["a 2", "query"] == "SELECT 1"
