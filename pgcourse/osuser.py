"""Run PostgreSQL as an unprivileged system user when the launcher runs as root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .errors import ServerError

SERVICE_USER = os.environ.get("PGCOURSE_SERVICE_USER", "pgcourse")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def ensure_service_user(name: str = SERVICE_USER, say=print) -> pwd.struct_passwd:
    """Return the system user that runs the server, creating it (with a home) if needed."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if not os.path.exists(useradd):
        raise ServerError("PostgreSQL refuses to run as root, and this system has no useradd to create"
                          f" the user {name!r} that would run it.", "run the course as a normal user")
    made = subprocess.run([useradd, "--system", "--create-home", "--home-dir", f"/var/lib/{name}",
                           "--shell", "/usr/sbin/nologin", name], capture_output=True, text=True)
    try:
        user = pwd.getpwnam(name)  # made now, or by a second suite running at the same moment
    except KeyError:
        raise ServerError(f"Could not create the system user {name!r} that runs PostgreSQL:"
                          f" {made.stderr.strip()}", "run the course as a normal user") from None
    if made.returncode == 0:
        say(f"Created the system user {name!r} to run PostgreSQL (PostgreSQL refuses to run as root).")
    return user


def run_as(user: pwd.struct_passwd | None, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command as `user` (None: as ourselves), with that user's HOME."""
    if user is None:
        return subprocess.run(args, **kwargs)
    env = dict(kwargs.pop("env", None) or os.environ)
    env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return subprocess.run(args, user=user.pw_uid, group=user.pw_gid, extra_groups=[], env=env,
                          cwd=kwargs.pop("cwd", "/"), **kwargs)


def can_reach(user: pwd.struct_passwd | None, path: Path, access: str = "x") -> bool:
    """True if `user` may reach `path` with the given access (r, w or x) through every parent."""
    if user is None:
        return os.access(path, {"r": os.R_OK, "w": os.W_OK, "x": os.X_OK}[access])
    return run_as(user, ["test", f"-{access}", str(path)], capture_output=True).returncode == 0


def chown(path: Path, user: pwd.struct_passwd | None, recursive: bool = False) -> None:
    """Give `path` (and with recursive, everything below it) to `user`."""
    if user is None:
        return
    os.chown(path, user.pw_uid, user.pw_gid)
    if recursive:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)
