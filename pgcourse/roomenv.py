"""What a lesson needs to know when it runs in a room (one server, many learners), read from the
environment that `python -m pgcourse room create` writes for each learner (the hub hands it out).

Alone, none of these variables is set, and every function here gives the lesson's usual number.
"""

from __future__ import annotations

import os
import re

LEARNER_VAR = "COURSE_LEARNER"  # the learner's name in the room (absent alone)
LIMIT_VAR = "COURSE_CONNECTION_LIMIT"  # the learner role's CONNECTION LIMIT in the room (absent alone)

# Connections per learner in a room: measured per lesson (see benchmarks/ and docs/instructor.md);
# `room create` gives each learner role this CONNECTION LIMIT unless told otherwise.
PER_LEARNER = 12  # placeholder until the per-lesson peaks are measured
LIMITED_PER_LEARNER = 5  # the learner's limited role, as provision.LIMITED_CONNECTIONS
ADMIN_RESERVE = 10  # connections kept for the instructor's board, monitor and admin tools


def learner() -> str | None:
    """The learner's name in the room, or None alone."""
    return os.environ.get(LEARNER_VAR) or None


def in_room() -> bool:
    return learner() is not None


def connection_limit(alone: int) -> int:
    """How many connections a lesson may open at once: `alone` when alone, at most the room's limit."""
    raw = os.environ.get(LIMIT_VAR, "")
    if not re.fullmatch(r"[0-9]{1,5}", raw):
        return alone
    return max(1, min(alone, int(raw)))


def demo_role(name: str) -> str:
    """A demo role's name (lessonNN_...), made unique to the learner in a room (demo roles are server-wide)."""
    who = learner()
    return f"{name}_{who}" if who else name
