"""Which server the course uses: the bundled one, or the learner's own (chosen explicitly)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import envfile, provision
from .errors import ServerError
from .server import ROOT, Cluster


@dataclass
class Target:
    """The course server as the tools see it: the learner's URLs and an admin connection."""

    kind: str  # "bundled" or "external"
    database_url: str
    limited_url: str
    admin: provision.Admin
    cluster: Cluster | None = None
    started_here: bool = False

    def environment(self, dbname: str | None = None) -> dict[str, str]:
        """The variables a kernel needs, optionally pointing at another database."""
        url, limited = self.database_url, self.limited_url
        if dbname:
            url, limited = provision.with_dbname(url, dbname), provision.with_dbname(limited, dbname)
        env = {"DATABASE_URL": url, "LIMITED_DATABASE_URL": limited}
        if self.cluster is not None:  # the bundled psql first on PATH, for `!psql` in a cell
            env["PATH"] = f"{self.cluster.binaries.bindir}{os.pathsep}{os.environ.get('PATH', '')}"
            env["COURSE_SOCKET_DIR"] = str(self.cluster.socket_dir)  # lesson 03 compares socket and TCP
        return env


def env_path(root: Path = ROOT) -> Path:
    return root / os.environ.get("PGCOURSE_ENV", ".env")


def load(root: Path = ROOT, *, start: bool = True, say=print) -> Target:
    """The configured target; the bundled server is started first when `start` is true."""
    values = envfile.read(env_path(root))
    shell_url = os.environ.get("DATABASE_URL")
    if values.get("COURSE_SERVER") == "external":
        target = Target("external", values["DATABASE_URL"], values["LIMITED_DATABASE_URL"],
                        provision.Admin(values["COURSE_ADMIN_URL"]))
        say("Using your own server (COURSE_SERVER=external in .env), not the bundled one.")
    else:
        cluster = Cluster(root, say=say)
        was_running = cluster.status().running
        if start:
            cluster.start()
        elif not was_running:
            raise ServerError("The course server is not running.", "run `make db-start`")
        values = envfile.read(cluster.env_path)
        target = Target("bundled", values["DATABASE_URL"], values["LIMITED_DATABASE_URL"], cluster.admin,
                        cluster, started_here=start and not was_running)
    if shell_url and shell_url != target.database_url:
        say("Note: your shell sets DATABASE_URL to another server; the course ignores it and uses .env"
            " (to use your own server, see README: 'Use your own PostgreSQL server').")
    return target
