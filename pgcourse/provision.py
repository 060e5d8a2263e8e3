"""Course objects on a server: roles, the template database with the dataset, the course database.

Used for the bundled server and for a learner's own server (`python -m pgcourse db provision`).
The learner role's extra rights are listed in LEARNER_RIGHTS, the one place that defines them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import dataset

LEARNER = "learner"
LIMITED = "learner_limited"
LIMITED_CONNECTIONS = 5
COURSE_DB = "course"
TEMPLATE_DB = "course_template"

# The learner role is not a superuser. These are the only extra rights it gets, and why.
LEARNER_RIGHTS = {
    "CREATEROLE": "lesson 02 creates demo roles with awkward passwords",
    "pg_read_all_stats": "see every session in pg_stat_activity and every query in pg_stat_statements",
    "pg_read_server_files": "lesson 05 compares server-side COPY FROM a file",
    "EXECUTE on pg_stat_statements_reset": "lessons reset query statistics before measuring",
}


@dataclass(frozen=True)
class Admin:
    """How to reach the server as a role that may create roles and databases."""

    conninfo: str

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(make_conninfo(self.conninfo, dbname=dbname), autocommit=True, **kwargs)


def learner_url(host: str, port: int, password: str, dbname: str = COURSE_DB, user: str = LEARNER) -> str:
    """A postgresql:// URL for the learner (or limited) role, password percent-encoded."""
    from urllib.parse import quote

    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(dbname, safe='')}"


def with_dbname(url: str, dbname: str) -> str:
    """The same URL pointing at another database."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def ensure_roles(admin: Admin, learner_password: str, limited_password: str) -> None:
    """Create or update the learner and limited roles with these passwords and rights."""
    with admin.connect() as conn:
        for role, password, extra in (
            (LEARNER, learner_password, sql.SQL("CREATEROLE")),
            (LIMITED, limited_password, sql.SQL("CONNECTION LIMIT {}").format(LIMITED_CONNECTIONS)),
        ):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = sql.SQL("ALTER" if exists else "CREATE")
            # Utility statements take no bound parameters: compose the literal safely instead.
            conn.execute(sql.SQL("{} ROLE {} LOGIN NOSUPERUSER {} PASSWORD {}").format(
                verb, sql.Identifier(role), extra, sql.Literal(password)))
        conn.execute(sql.SQL("GRANT pg_read_all_stats, pg_read_server_files TO {}").format(
            sql.Identifier(LEARNER)))


def set_passwords(admin: Admin, learner_password: str, limited_password: str) -> None:
    """Give both roles new passwords (used when .env was lost)."""
    with admin.connect() as conn:
        for role, password in ((LEARNER, learner_password), (LIMITED, limited_password)):
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))


def database_exists(admin: Admin, name: str) -> bool:
    with admin.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def build_template(admin: Admin, scale: float = 1.0) -> float:
    """(Re)create the template database holding the pristine dataset; return seconds taken."""
    started = time.perf_counter()
    with admin.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE_DB,)).fetchone():
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(TEMPLATE_DB)))
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8'").format(
            sql.Identifier(TEMPLATE_DB), sql.Identifier(LEARNER)))
    with admin.connect(TEMPLATE_DB) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute(sql.SQL("""
            DO $$ DECLARE f regprocedure; BEGIN
              FOR f IN SELECT oid FROM pg_proc WHERE proname = 'pg_stat_statements_reset' LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO {}', f);
              END LOOP; END $$""").format(sql.Identifier(LEARNER)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(LEARNER)))  # the learner owns the data
        conn.autocommit = False
        dataset.load(conn, scale)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (FREEZE, ANALYZE)")
    with admin.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
            sql.Identifier(TEMPLATE_DB)))
    return time.perf_counter() - started


@dataclass(frozen=True)
class EndedSession:
    pid: int
    user: str
    application: str
    state: str

    def __str__(self) -> str:
        app = f" ({self.application})" if self.application else ""
        return f"pid {self.pid}, {self.user}{app}, {self.state}"


def clone(admin: Admin, name: str) -> list[EndedSession]:
    """Drop database `name` (ending its sessions) and create it afresh from the template."""
    with admin.connect() as conn:
        ended = [EndedSession(*row) for row in conn.execute(
            "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(state, '')"
            " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid", (name,))]
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        strategy = sql.SQL(" STRATEGY FILE_COPY") if conn.info.server_version >= 150000 else sql.SQL("")
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}{}").format(
            sql.Identifier(name), sql.Identifier(TEMPLATE_DB), sql.Identifier(LEARNER), strategy))
    return ended


def drop(admin: Admin, name: str) -> None:
    """Drop a database, ending any session still in it."""
    with admin.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def provision(admin: Admin, learner_password: str, limited_password: str, scale: float = 1.0,
              rebuild: bool = False, say=print) -> None:
    """Create everything the course needs on the server behind `admin`."""
    with admin.connect() as conn:
        if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            from .errors import ServerError
            raise ServerError(
                f"The role {conninfo_to_dict(admin.conninfo).get('user', 'in that URL')!r} is not a superuser,"
                " and provisioning grants predefined roles and creates an extension.",
                "give `db provision` a URL of a superuser (it is used once, and not saved)")
    ensure_roles(admin, learner_password, limited_password)
    if rebuild or not database_exists(admin, TEMPLATE_DB):
        say(f"Loading the sample database into {TEMPLATE_DB!r} ...")
        seconds = build_template(admin, scale)
        say(f"Loaded the sample database in {seconds:.1f} s.")
    if rebuild or not database_exists(admin, COURSE_DB):
        clone(admin, COURSE_DB)
