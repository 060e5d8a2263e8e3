"""The git-ignored .env file: DATABASE_URL and the course's other connection settings."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

HEADER = ("# The course's connection settings, written by `.venv/bin/python -m pgcourse db ...`.\n"
          "# Git-ignored: it holds passwords. Delete it and run `make db-start` to get new ones.\n")


def read(path: Path) -> dict[str, str]:
    """The settings in .env (empty if there is none)."""
    if not path.exists():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def write(path: Path, values: dict[str, str], server: str) -> None:
    """Replace .env with these values; `server` is "bundled" or "external"."""
    lines = [HEADER, f"COURSE_SERVER={server}\n"]
    lines += [f"{key}='{value}'\n" for key, value in values.items()]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(lines)
    tmp.replace(path)
