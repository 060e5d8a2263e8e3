"""Fixtures shared by the tests of the exercise checks."""

from __future__ import annotations

import pytest

from pgcourse import target
from pgcourse.notebooks import fresh_database


@pytest.fixture(scope="module")
def checks_database(request):
    """DATABASE_URL pointing at a fresh clone of the course database, for one test module."""
    tgt = target.load(say=lambda *_: None)
    with fresh_database(tgt, request.module.__name__.rsplit(".", 1)[-1]) as name, pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATABASE_URL", tgt.environment(name)["DATABASE_URL"])
        yield name
