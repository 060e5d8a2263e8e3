"""What a lesson needs to know when it runs in a room (one server, many learners), read from the
environment that `python -m pgcourse room create` writes for each learner (the hub hands it out).

Alone, none of these variables is set, and every function here gives the lesson's usual number.
"""

from __future__ import annotations

import os
import re

LEARNER_VAR = "COURSE_LEARNER"  # the learner's name in the room (absent alone)
LIMIT_VAR = "COURSE_CONNECTION_LIMIT"  # the learner role's CONNECTION LIMIT in the room (absent alone)

# Connections per learner in a room, from each notebook's peak measured by benchmarks/connections.py (the
# table is docs/connections.json). The largest is lesson 07a's: 30 at once (10 connections each through
# asyncpg, psycopg's async and its sync connection); 03a's engine-per-request lab comes next with 25 (20
# engines, its pool of 4 and a monitor; sampled every 20 ms, the benchmark saw 24), then exercises 03 (20),
# 09c and exercises 04 (16), 08a (15), 03b (12), 01b (11); every other notebook holds 10 or fewer.
# Two more let a second notebook stay open beside it (a setup cell's connection, a check recording its
# outcome on the progress board). `room create` gives each learner role this CONNECTION LIMIT unless told
# otherwise.
PER_LEARNER = 32
LIMITED_PER_LEARNER = 5  # the learner's limited role, as provision.LIMITED_CONNECTIONS (lessons 03a, 09a-09c: 5)
ADMIN_RESERVE = 10  # connections kept for the instructor's board, monitor and admin tools
# The smallest CONNECTION LIMIT every notebook runs under: the largest peak of a notebook that does not size
# its bursts with connection_limit() (07a: 30). Below it such a notebook fails with "too many connections for
# role". Lessons that read connection_limit() (03a) run smaller bursts instead, and say so in a room.
MIN_CONNECTION_LIMIT = 30


def learner() -> str | None:
    """The learner's name in the room, or None alone."""
    return os.environ.get(LEARNER_VAR) or None


def in_room() -> bool:
    return learner() is not None


def connection_limit(alone: int) -> int:
    """How many connections a lesson may hold at once: `alone` when alone, at most the room's limit.

    A lesson sizes a burst or a pool with it (`connection_limit(25)`: 25 alone, 10 in a room whose learners
    may open 10) and, where the number it got differs from `alone`, says so in a generated sentence."""
    raw = os.environ.get(LIMIT_VAR, "")
    if not re.fullmatch(r"[0-9]{1,5}", raw):
        return alone
    return max(1, min(alone, int(raw)))


def demo_role(name: str) -> str:
    """A demo role's name (lessonNN_...), made unique to the learner in a room (demo roles are server-wide).

    Alone `name` itself; in a room `name_<learner>`. pgcourse.create_demo_role takes 1-40 characters after
    `lessonNN_`: the longest demo name (`lesson02_question`, 8) with a 16-character learner name is 25."""
    who = learner()
    return f"{name}_{who}" if who else name
