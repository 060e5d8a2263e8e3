"""What the tests of the service checks share (lessons 09 and 10): the solution's file with one thing changed,
the verdict a check gives it, and the problems that verdict names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pgcourse.checks import CheckFailed


def service_env(database_url: str) -> dict[str, str]:
    """The settings the exercises notebooks give the learner's service."""
    return {"DATABASE_URL": database_url, "POOL_MAX": "4", "POOL_TIMEOUT": "2", "STATEMENT_TIMEOUT_MS": "1000"}


def write_variant(tmp_path: Path, source: Path, *replacements: tuple[str, str]) -> Path:
    """`source` with each `old` replaced by `new` (each must be there), under its own name in a folder of its own."""
    text = source.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / source.name
    path.write_text(text)
    return path


def verdict(check, path: Path, env=service_env) -> str:
    """The failure `check` reports on the file at `path`; it must end in a hint."""
    with pytest.raises(CheckFailed) as caught:
        check(path, env)
    text = str(caught.value)
    assert "Hint:" in text
    return text


def named_in(text: str, problems: dict) -> list[str]:
    """The keys of `problems` whose titles the verdict lists, in its order."""
    names = {v[0]: k for k, v in problems.items()}
    return [names[m] for m in re.findall(r"^- (.+?): ", text, re.M) if m in names]
