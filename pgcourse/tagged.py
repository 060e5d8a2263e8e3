"""What the server shows for the sessions of tagged tasks: `pg_stat_activity` rows whose application_name
starts with a tag, read once or polled until none of them is still running a query.

A lesson tags each task's connection (`application_name="gather 1"`, ...) and asks an observer
connection of its own (a psycopg AsyncConnection in autocommit mode) what the server sees.
"""

from __future__ import annotations

import asyncio
import time

import pandas as pd

ACTIVITY = """
SELECT application_name AS session, pid, state, query,
       extract(epoch FROM state_change - query_start)::float8 AS ran_s
  FROM pg_stat_activity
 WHERE datname = current_database() AND left(application_name, length(%(tag)s)) = %(tag)s
 ORDER BY application_name, query, pid"""  # by content first: the same order every run


async def tagged_sessions(observer, tag: str) -> pd.DataFrame:
    """The sessions whose application_name starts with `tag`: session, pid, state, last query, ran_s.

    `ran_s` is how long the last query ran (from its start to the session's last change of state),
    so for a session that is no longer active it is the time the server spent on that query.
    """
    cursor = await observer.execute(ACTIVITY, {"tag": tag})
    rows = await cursor.fetchall()
    return pd.DataFrame(rows, columns=["session", "pid", "state", "query", "ran_s"])


async def until_settled(observer, tag: str, *, timeout: float = 10.0, interval: float = 0.02) -> pd.DataFrame:
    """Poll the tagged sessions until none is 'active' (or `timeout` seconds pass); return the last view."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = await tagged_sessions(observer, tag)
        if not (sessions["state"] == "active").any() or time.monotonic() >= deadline:
            return sessions
        await asyncio.sleep(interval)


def readable(sessions: pd.DataFrame) -> pd.DataFrame:
    """The view for a notebook: no pid, and `ran_s` as a duration the sanitize file knows (`ran`), or
    'still running' for an active session, one line per session."""
    from .bench import duration

    shown = sessions.drop(columns=["ran_s", "pid"])
    shown["ran"] = [("still running" if state == "active" else duration(s) if pd.notna(s) else "")
                    for state, s in zip(sessions["state"], sessions["ran_s"], strict=True)]
    shown["query"] = shown["query"].map(lambda q: " ".join(str(q).split()))
    return shown.set_index("session")
