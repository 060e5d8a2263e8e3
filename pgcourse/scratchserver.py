"""A throwaway PostgreSQL server that a lesson may stop and start: its own data directory, port and role.

Stopping the course server would break every other notebook and the learner's session, so a lesson that
needs a server going down (lesson 10's health checks) starts one of its own: `initdb` into a temporary
directory, a free port on 127.0.0.1, the course's binaries (`pgcourse.binaries`, so `PGCOURSE_BINDIR`
applies), one login role with a random SCRAM password owning a database of the same name. As root the
server runs as the course's service user, exactly as the course server does (`pgcourse.osuser`).

    with ScratchServer() as scratch:
        psycopg.connect(scratch.url)
        scratch.stop()   # fast shutdown: sessions ended, new connections refused
        scratch.start()  # same port, same role, same data
    # closed: stopped, directory deleted
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from . import osuser
from .binaries import Binaries, find_binaries, reachable_by
from .errors import ServerError
from .webservice import free_port

__all__ = ["ScratchServer"]

ROLE = "scratch"
SETTINGS = {  # small and fast: nothing here needs to survive a crash
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "20",
    "shared_buffers": "'16MB'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "lc_messages": "'C'",
    "timezone": "'UTC'",
    "password_encryption": "'scram-sha-256'",
}

_OPEN: set[ScratchServer] = set()


@atexit.register
def _close_all() -> None:  # a kernel that ends mid-lesson leaves no server behind
    for server in list(_OPEN):
        try:
            server.close()
        except Exception:
            pass


class ScratchServer:
    """A PostgreSQL server of its own in a temporary directory: `url`, `stop()`, `start()`, `close()`.

    `timings` holds how long `initdb` and the first start took, in seconds.
    """

    def __init__(self, bindir: str | None = None) -> None:
        self.user = osuser.ensure_service_user() if osuser.is_root() else None
        self.binaries: Binaries = reachable_by(self.user, find_binaries(bindir))
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.dir: Path | None = None
        self.timings: dict[str, float] = {}

    # -- where things are --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{ROLE}"

    @property
    def data(self) -> Path:
        return self._dir / "data"

    @property
    def log(self) -> Path:
        return self._dir / "server.log"

    @property
    def _dir(self) -> Path:
        if self.dir is None:
            raise ServerError("This scratch server is closed.", "create a new ScratchServer")
        return self.dir

    def _run(self, args: list[str], what: str) -> None:
        done = osuser.run_as(self.user, args, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            if self.dir is not None and self.log.exists():
                tail += "\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-8:])
            raise ServerError(f"The scratch server's {what} failed:\n{tail}")

    # -- life cycle --------------------------------------------------------------------------------
    def create(self) -> ScratchServer:
        """initdb, start, and make the role and its database; on any failure, stop and delete what was made."""
        self.dir = Path(tempfile.mkdtemp(prefix="pgcourse-scratch-"))  # mode 700, under /tmp
        _OPEN.add(self)
        try:
            return self._create()
        except BaseException:  # `with` calls no __exit__ when __enter__ raises: clean up here
            self.close()
            raise

    def _create(self) -> ScratchServer:
        osuser.chown(self.dir, self.user)
        if self.user is not None and not osuser.can_reach(self.user, self.dir, "w"):
            raise ServerError(f"The service user {self.user.pw_name!r} cannot reach {self.dir}.",
                              "point TMPDIR at a folder every user may enter, such as /tmp")
        started = time.perf_counter()
        self._run([self.binaries["initdb"], "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                   "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"],
                  "initdb")
        self.timings["initdb"] = time.perf_counter() - started
        self.port = free_port()
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.data}'"}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# pgcourse.scratchserver\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        started = time.perf_counter()
        self.start()
        self.timings["start"] = time.perf_counter() - started
        self._make_role()
        return self

    def _make_role(self) -> None:
        """The login role and its database, made by the bootstrap superuser over the unix socket.

        The socket lies in the mode-700 data directory, so `trust` there admits only the server's user and root.
        """
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=str(self.data), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE),
                                                                           sql.Literal(self.password)))
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(ROLE), sql.Identifier(ROLE)))

    def start(self) -> None:
        """Start the server (after `stop()`): same port, role and data."""
        self._run([self.binaries["pg_ctl"], "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start"],
                  "start")

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended, then new connections are refused."""
        self._run([self.binaries["pg_ctl"], "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"], "stop")

    @property
    def running(self) -> bool:
        if self.dir is None:
            return False
        done = osuser.run_as(self.user, [self.binaries["pg_ctl"], "-D", str(self.data), "status"],
                             capture_output=True, text=True)
        return done.returncode == 0

    def close(self) -> None:
        """Stop the server if it runs and delete its directory."""
        if self.dir is None:
            return
        try:
            if self.running:
                osuser.run_as(self.user, [self.binaries["pg_ctl"], "-D", str(self.data), "-m", "immediate",
                                          "-w", "stop"], capture_output=True, check=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
            _OPEN.discard(self)

    def __enter__(self) -> ScratchServer:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.dir is None else ("running" if self.running else "stopped")
        return f"<ScratchServer PostgreSQL {self.binaries.major} {state}>"
