"""The progress board: every check records its outcome in the server, in a schema the learner roles
may insert into but read only their own rows of (row-level security); the instructor reads them all.

(A skeleton: the functions below are the interface the room and provisioning call.)
"""

from __future__ import annotations

PROGRESS_DB = "course_progress"


def ensure_board(admin) -> None:
    """Create (or bring up to date) the progress database, its schema, table and policies."""


def enroll(admin, role: str) -> None:
    """Let `role` record its outcomes and read its own."""
