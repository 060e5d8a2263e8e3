"""The learner role cannot escape: every way out we know of, tried as the learner, must fail.

Each attempt connects as the learner (or a role it made) and must fail with a permission error
(SQLSTATE 42501), on the course server (the bundled PostgreSQL 18 under `make test`, 15 under
`make test-pg15`), as a room learner on that same server (`python -m pgcourse room create`: the
rights of a shared server, another role name) and, where Debian's PostgreSQL 15 binaries exist, on
a second server started from them. The attempts are data (the lists below), so a new escape is one more line. Then each
lesson need is shown to work through its narrow mechanism, and `db provision` on someone's own
server is shown to report what it grants and to refuse a learner role that could already escape.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgcourse import envfile, osuser, provision, room, target
from pgcourse.binaries import find_binaries, reachable_by
from pgcourse.notebooks import fresh_database
from pgcourse.server import ROOT, Cluster

PG15 = Path(os.environ.get("PGCOURSE_PG15", "/usr/lib/postgresql/15/bin"))
SCALE = 0.001
DENIED = "42501"  # insufficient_privilege


@dataclass
class Server:
    """One server under attack: the learner's URL to a fresh course database, and the admin."""

    label: str
    major: int
    url: str
    limited_url: str
    dbname: str
    admin: provision.Admin
    course_files: Path | None  # None when the course folder is not on this machine
    data_dir: Path | None
    whole_server: bool = True  # the learner owns the whole server (bundled); else `db provision` without it
    role: str = provision.LEARNER  # the learner's role name: room_<name> for a room learner
    limited_role: str = provision.LIMITED

    @property
    def in_room(self) -> bool:
        return self.role != provision.LEARNER

    def own(self, statements: list) -> list[str]:
        """The attempts written for `learner` and `learner_limited`, aimed at this server's two roles.

        A room learner is a member of its own limited role (to see its limited sessions' queries, as
        lesson 03 does), so what a member may do to that role alone is not an escape there: dropping or
        taking over its objects, and (before PostgreSQL 16, which has no SET option) becoming it."""
        names = {"learner": self.role, "learner_limited": self.limited_role}
        texts = [re.sub(r"\blearner(?:_limited)?\b", lambda m: names[m.group(0)],
                        s if isinstance(s, str) else s.as_string()) for s in statements]
        if not self.in_room:
            return texts
        own = {f"DROP OWNED BY {self.limited_role}", f"REASSIGN OWNED BY {self.role} TO {self.limited_role}"}
        if self.major < 16:
            own.add(f"SET ROLE {self.limited_role}")
        return [t for t in texts if t not in own]

    def demo(self, name: str) -> str:
        """A demo role's name this learner may make: in a room, its own name after it (roomenv.demo_role)."""
        return f"{name}_{self.role.removeprefix('room_')}" if self.in_room else name

    @property
    def admin_name(self) -> str:
        with self.admin.connect() as conn:
            return conn.execute("SELECT current_user").fetchone()[0]

    def learner(self, **kwargs) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.url, connect_timeout=10, **kwargs)

    def url_for(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        parts = psycopg.conninfo.conninfo_to_dict(self.url)
        parts.update(dbname=dbname, **({"user": user} if user else {}), **({"password": password} if password else {}))
        return psycopg.conninfo.make_conninfo(**parts)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # the server's user (as root: pgcourse) must reach it
    return path


def course_server(tgt: target.Target, dbname: str) -> Server:
    env = tgt.environment(dbname)
    cluster = tgt.cluster
    with tgt.admin.connect() as conn:
        major = conn.info.server_version // 10000
        stamp = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                             (provision.TEMPLATE_DB,)).fetchone()[0] or ""
    return Server(f"course server (PostgreSQL {major})", major, env["DATABASE_URL"], env["LIMITED_DATABASE_URL"],
                  dbname, tgt.admin, cluster.course_files if cluster else None, cluster.data if cluster else None,
                  whole_server=cluster is not None or stamp.endswith("whole server"))


def pg15_wanted() -> bool:
    """A second server from Debian's 15 binaries, unless the course server is already a 15."""
    if not (PG15 / "postgres").exists():
        return False
    return find_binaries(os.environ.get("PGCOURSE_BINDIR")).major != 15


SERVERS = ["course server", "room learner"] + (["PostgreSQL 15"] if pg15_wanted() else [])


class NoRestart:
    """Stands in for the course server in room.create: the suite never restarts the shared server."""

    def stop(self):
        raise AssertionError("room.create would restart the course server")

    start = stop


def room_server(tgt: target.Target, base: Path) -> tuple[Server, room.Room, Path]:
    """A room learner (a name unique to this run) on the course server, in a room file of its own."""
    name = "e" + secrets.token_hex(4)
    path = base / ".room" / "room.json"
    port = int(psycopg.conninfo.conninfo_to_dict(tgt.database_url)["port"])
    made = room.create(tgt.admin, [name], host="127.0.0.1", port=port, kind=tgt.kind, connection_limit=4, path=path,
                       say=lambda *_: None, cluster=NoRestart())
    learner = made.learners[name]
    plain = course_server(tgt, learner.database)
    return Server(f"room learner (PostgreSQL {plain.major})", plain.major, learner.env["DATABASE_URL"],
                  learner.env["LIMITED_DATABASE_URL"], learner.database, tgt.admin, plain.course_files, plain.data_dir,
                  whole_server=False, role=learner.role, limited_role=learner.limited_role), made, path


@pytest.fixture(scope="module", params=SERVERS)
def server(request):
    if request.param == "course server":
        tgt = target.load(say=lambda *_: None)
        with fresh_database(tgt, "escape") as name:
            yield course_server(tgt, name)
        return
    if request.param == "room learner":
        tgt = target.load(say=lambda *_: None)
        base = Path(tempfile.mkdtemp(prefix="pgcourse-escape-room-"))
        made = None
        try:
            learner_server, made, path = room_server(tgt, base)
            yield learner_server
        finally:
            if made is not None:
                room.drop(tgt.admin, made, path=path, say=lambda *_: None)
            shutil.rmtree(base, ignore_errors=True)
        return
    base = open_dir("pgcourse-escape15-")
    cluster = Cluster(base, env_path=base / ".env", bindir=str(PG15), port=free_port(), scale=SCALE,
                      say=lambda *_: None)
    try:
        cluster.start()
        values = envfile.read(cluster.env_path)
        tgt = target.Target("bundled", values["DATABASE_URL"], values["LIMITED_DATABASE_URL"], cluster.admin, cluster)
        with fresh_database(tgt, "escape") as name:
            yield course_server(tgt, name)
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


# ---- how an attempt is judged ---------------------------------------------------------------------
def attempt(conn: psycopg.Connection, statement, params=None) -> psycopg.Error | None:
    """Run `statement`; the error it raised, or None if it went through (an escape)."""
    try:
        conn.execute(statement, params)
    except psycopg.Error as exc:
        if not conn.autocommit:
            conn.rollback()
        return exc
    return None


def escapes(conn: psycopg.Connection, statements, params=None) -> list[str]:
    """Every statement that did not fail with a permission error, with what happened instead."""
    found = []
    for statement in statements:
        error = attempt(conn, statement, params)
        text = statement if isinstance(statement, str) else statement.as_string(conn)
        if error is None:
            found.append(f"{text}: SUCCEEDED")
        elif error.sqlstate != DENIED:
            found.append(f"{text}: failed with {error.sqlstate} ({str(error).splitlines()[0]}), not {DENIED}")
    return found


def refused(conn: psycopg.Connection, statement, params=None) -> psycopg.Error:
    error = attempt(conn, statement, params)
    assert error is not None, f"ESCAPE: {statement} succeeded"
    assert error.sqlstate == DENIED, f"{statement}: {error.sqlstate} {error}"
    return error


def verifier(conn: psycopg.Connection, role: str, password: str) -> str:
    """A SCRAM-SHA-256 verifier, computed by libpq on the client: the password never travels."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


# ---- the attempts ---------------------------------------------------------------------------------
# The issue's sequence, in order; each step must fail, the first one already.
ISSUE_SEQUENCE = ["GRANT pg_execute_server_program TO learner",
                  "SET ROLE pg_execute_server_program",
                  "COPY (SELECT 1) TO PROGRAM 'id > /tmp/pgcourse-escape-id'"]

SERVER_FILES_AND_PROGRAMS = [
    "COPY (SELECT 1) TO PROGRAM 'id'",
    "COPY pg_temp.sink FROM PROGRAM 'id'",
    "COPY (SELECT 1) TO '/tmp/pgcourse-escape-out'",
    "COPY pg_temp.sink FROM '/etc/passwd'",
    "COPY pg_temp.sink FROM 'pg_hba.conf'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_read_file('pg_hba.conf')",
    "SELECT pg_read_binary_file('global/pg_control')",
    "SELECT pg_stat_file('postgresql.conf')",
    "SELECT pg_ls_dir('.')",
    "SELECT pg_ls_logdir()",
    "SELECT pg_ls_waldir()",
    "SELECT pg_ls_tmpdir()",
    "SELECT pg_ls_archive_statusdir()",
    "SELECT pg_current_logfile()",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_export(lo_from_bytea(0, 'x'), '/tmp/pgcourse-escape-lo')",
    "LOAD '/tmp/pgcourse-escape.so'",
]

SERVER_SETTINGS_AND_CONTROL = [
    "ALTER SYSTEM SET log_statement = 'none'",
    "ALTER SYSTEM SET shared_preload_libraries = 'x'",
    "SET log_statement = 'none'",
    "SET session_replication_role = replica",
    "SET allow_system_table_mods = on",
    "SELECT set_config('log_min_messages', 'panic', false)",
    "SELECT pg_reload_conf()",
    "SELECT pg_rotate_logfile()",
    "SELECT pg_switch_wal()",
    "SELECT pg_create_restore_point('x')",
    "SELECT pg_promote()",
    "SELECT pg_create_physical_replication_slot('pgcourse_escape')",
    "SELECT pg_create_logical_replication_slot('pgcourse_escape', 'pgoutput')",
    "CHECKPOINT",
    "CREATE TABLESPACE escape LOCATION '/tmp'",
    "CREATE SUBSCRIPTION escape CONNECTION 'host=127.0.0.1 dbname=postgres' PUBLICATION p WITH (connect = false)",
    "CREATE PUBLICATION escape FOR ALL TABLES",
    "CREATE EVENT TRIGGER escape ON ddl_command_start EXECUTE FUNCTION pg_catalog.pg_backend_pid()",
    "CREATE LANGUAGE escape HANDLER plpgsql_call_handler",
    "CREATE FUNCTION escape_c() RETURNS int LANGUAGE c AS 'libc.so.6', 'getpid'",
    "CREATE FUNCTION escape_internal() RETURNS int LANGUAGE internal AS 'pg_backend_pid'",
    "CREATE OPERATOR CLASS escape_ops FOR TYPE int USING btree AS OPERATOR 1 <",
    "CREATE TEXT SEARCH PARSER escape (START = prsd_start, GETTOKEN = prsd_nexttoken, END = prsd_end,"
    " LEXTYPES = prsd_lextype)",
    "UPDATE pg_catalog.pg_authid SET rolsuper = true WHERE rolname = current_user",
    "CREATE DATABASE escape",
]

ROLES_AND_IDENTITY = [
    "CREATE ROLE escape",
    "CREATE ROLE escape SUPERUSER",
    "CREATE ROLE escape LOGIN IN ROLE pg_monitor",
    "CREATE ROLE escape IN ROLE pg_execute_server_program",
    "CREATE ROLE escape ADMIN learner",
    "CREATE ROLE escape ROLE learner",
    "CREATE ROLE escape BYPASSRLS",
    "CREATE ROLE escape REPLICATION",
    "CREATE USER escape CREATEDB",
    "ALTER ROLE learner SUPERUSER",
    "ALTER ROLE learner CREATEROLE",
    "ALTER ROLE learner CREATEDB",
    "ALTER ROLE learner REPLICATION",
    "ALTER ROLE learner BYPASSRLS",
    "ALTER ROLE learner CONNECTION LIMIT 1000",
    "ALTER ROLE learner_limited PASSWORD 'taken'",
    "ALTER ROLE learner_limited CONNECTION LIMIT -1",
    "ALTER ROLE learner_limited SET work_mem = '1GB'",
    "ALTER ROLE learner_limited RENAME TO escape",
    "DROP ROLE learner_limited",
    "GRANT learner TO learner_limited",
    "GRANT learner_limited TO learner",
    "COMMENT ON ROLE learner IS 'pgcourse demo role of learner'",
    "COMMENT ON ROLE learner_limited IS 'pgcourse demo role of learner'",
    "SET ROLE learner_limited",
    "SET SESSION AUTHORIZATION learner_limited",
    "REASSIGN OWNED BY learner TO learner_limited",
    "DROP OWNED BY learner_limited",
]


def admin_statements(admin: str) -> list[sql.Composed]:
    a = sql.Identifier(admin)
    return [sql.SQL(s).format(a) for s in (
        "ALTER ROLE {} PASSWORD 'taken'", "ALTER ROLE {} NOLOGIN", "DROP ROLE {}", "SET ROLE {}",
        "SET SESSION AUTHORIZATION {}", "GRANT {} TO learner", "ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT ALL ON TABLES TO learner",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO PUBLIC",
        "REASSIGN OWNED BY {} TO learner", "DROP OWNED BY {}", "ALTER SCHEMA public OWNER TO {}",
        "CREATE SCHEMA escape AUTHORIZATION {}")]


def database_statements(dbname: str) -> list[sql.Composed]:
    return [sql.SQL(s).format(sql.Identifier(dbname), sql.Identifier(provision.TEMPLATE_DB)) for s in (
        "ALTER DATABASE {1} ALLOW_CONNECTIONS true", "ALTER DATABASE {1} IS_TEMPLATE false", "DROP DATABASE {1}",
        "ALTER DATABASE {1} RENAME TO escape", "ALTER DATABASE {1} SET search_path = public",
        "ALTER DATABASE postgres ALLOW_CONNECTIONS false", "ALTER DATABASE template1 SET search_path = public",
        "DROP DATABASE postgres", "ALTER DATABASE {0} SET log_statement = 'none'",
        "ALTER DATABASE {0} SET session_preload_libraries = 'x'", "CREATE DATABASE escape TEMPLATE {1}",
    )]


TOOLS_SCHEMA = [
    "CREATE FUNCTION pgcourse.escape() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE OR REPLACE FUNCTION pgcourse.course_file_directory() RETURNS text LANGUAGE sql AS $$SELECT '/'$$",
    "CREATE OR REPLACE FUNCTION pgcourse.check_demo_role_name(role_name text) RETURNS void LANGUAGE sql AS ''",
    "ALTER FUNCTION pgcourse.create_demo_role(text, text, integer) SET search_path = public",
    "ALTER FUNCTION pgcourse.drop_demo_role(text) OWNER TO learner",
    "ALTER FUNCTION pgcourse.check_demo_role_name(text) RENAME TO escape",
    "DROP FUNCTION pgcourse.demo_role_marker()",
    "DROP SCHEMA pgcourse CASCADE",
    "ALTER SCHEMA pgcourse RENAME TO escape",
    "CREATE TABLE pgcourse.escape (id int)",
    "SELECT pgcourse.check_demo_role_name('x')",
    "SELECT pgcourse.demo_role_marker()",
    "CREATE FUNCTION pg_catalog.escape() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE OR REPLACE FUNCTION pg_catalog.format(text) RETURNS text LANGUAGE sql AS 'SELECT $1'",
]

BAD_DEMO_NAMES = ["learner", "learner_limited", "course_admin", "postgres", "pg_monitor", "pg_execute_server_program",
                  "lesson02", "lesson02_", "lesson2_x", "Lesson02_x", "lesson02_X", "lesson02_x ",
                  "lesson02_x\n", "lesson02_x; DROP ROLE learner", "lesson02_x\" SUPERUSER --",
                  "lesson02_x' SUPERUSER --", "lesson02_" + "a" * 41, "xlesson02_x", "lesson02_x-y", ""]


# ---- the issue's sequence, and the learner's rights -----------------------------------------------
def test_the_issue_sequence_fails_at_its_first_step(server):
    marker = Path("/tmp/pgcourse-escape-id")
    marker.unlink(missing_ok=True)
    with server.learner() as conn:
        sequence = server.own(ISSUE_SEQUENCE)
        first = refused(conn, sequence[0])
        assert "pg_execute_server_program" in str(first)
        assert escapes(conn, sequence[1:]) == []
    assert not marker.exists()


def test_the_learner_holds_exactly_its_listed_rights(server):
    whole = provision.rights_for(server.major, whole_server=server.whole_server)
    with server.learner() as conn:
        attributes = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
                                  " FROM pg_roles WHERE rolname = current_user").fetchone()
        assert attributes == (False,) * 5
        member_of = {r for (r,) in conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)")}
        own_limited = {server.limited_role} if server.in_room else set()  # a room learner sees its limited sessions
        assert member_of == {r.name for r in whole if r.name.startswith("pg_")} | own_limited
        for withheld in provision.WITHHELD:
            if withheld.kind == "role" and server.major in withheld.exists:
                assert not conn.execute("SELECT pg_has_role(current_user, %s, 'USAGE')", (withheld.name,)).fetchone()[0]
        for function in ("create_demo_role(text, text, integer)", "drop_demo_role(text)",
                         "copy_from_course_file(regclass, text, text, boolean)", "course_file_directory()"):
            assert conn.execute("SELECT has_function_privilege(%s, 'EXECUTE')", (f"pgcourse.{function}",)).fetchone()[0]
            for role in (server.limited_role, "public"):
                assert not conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')",
                                        (role, f"pgcourse.{function}")).fetchone()[0], (role, function)


# ---- predefined roles, server files and programs, server settings ---------------------------------
def test_granting_itself_any_predefined_role_is_refused(server):
    with server.learner() as conn:
        predefined = [r for (r,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname ~ '^pg_' AND rolname <> 'pg_database_owner' ORDER BY 1")]
        expected = {w.name for w in provision.WITHHELD if w.kind == "role" and server.major in w.exists}
        assert expected <= set(predefined), "every withheld role of this version is tried"
        statements = []
        for role in predefined:
            r = sql.Identifier(role)
            me, limited = sql.Identifier(server.role), sql.Identifier(server.limited_role)
            statements += [sql.SQL("GRANT {} TO {}").format(r, me), sql.SQL("GRANT {} TO {}").format(r, limited),
                           sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(r, me)]
            if role not in {r.name for r in provision.rights_for(server.major, whole_server=True)}:
                statements.append(sql.SQL("SET ROLE {}").format(r))
        assert escapes(conn, statements) == []


def test_server_files_and_programs_are_out_of_reach(server):
    with server.learner() as conn:
        conn.execute("CREATE TEMP TABLE sink (line text)")
        assert escapes(conn, SERVER_FILES_AND_PROGRAMS) == []
        if server.course_files is not None:  # the course folder itself, by its path, is a server path too
            path = str(server.course_files / "anything.csv")
            assert escapes(conn, [sql.SQL("COPY pg_temp.sink FROM {}").format(sql.Literal(path))]) == []


def test_server_settings_and_control_are_out_of_reach(server):
    with server.learner() as conn:
        assert escapes(conn, SERVER_SETTINGS_AND_CONTROL) == []


def test_untrusted_languages_and_extensions_are_refused(server):
    with server.learner() as conn:
        untrusted = [name for (name,) in conn.execute(
            "SELECT name FROM pg_available_extension_versions GROUP BY name HAVING NOT bool_or(trusted)"
            " AND name NOT IN (SELECT extname FROM pg_extension) ORDER BY 1")]
        assert "dblink" in untrusted and "file_fdw" in untrusted and "postgres_fdw" in untrusted
        statements = [sql.SQL("CREATE EXTENSION {} CASCADE").format(sql.Identifier(name)) for name in untrusted]
        assert escapes(conn, statements) == []


def test_sessions_of_other_roles_cannot_be_signalled(server):
    with server.admin.connect() as admin, server.learner() as conn:
        pid = admin.info.backend_pid
        assert escapes(conn, ["SELECT pg_terminate_backend(%s)", "SELECT pg_cancel_backend(%s)"], (pid,)) == []


# ---- roles, databases, the tools schema ----------------------------------------------------------
def test_other_roles_and_its_own_attributes_cannot_be_changed(server):
    with server.learner() as conn:
        assert escapes(conn, server.own(ROLES_AND_IDENTITY + admin_statements(server.admin_name))) == []


def test_role_settings_do_not_change_who_logs_in(server):
    db, me = sql.Identifier(server.dbname), sql.Identifier(server.role)
    with server.learner() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} SET role = {}").format(me, sql.Literal(server.admin_name)))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET session_authorization = {}").format(
            me, db, sql.Literal(server.admin_name)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET role = {}").format(db, sql.Literal(server.admin_name)))
    try:
        with server.learner() as conn:
            who = conn.execute("SELECT current_user, session_user, (SELECT rolsuper FROM pg_roles"
                               " WHERE rolname = current_user)").fetchone()
        assert who == (server.role, server.role, False)
        with server.admin.connect(server.dbname) as conn:  # the course's tools stay the admin themselves
            assert conn.execute("SELECT current_user").fetchone()[0] == server.admin_name
    finally:
        with server.learner() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(me))
            conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(me, db))
            conn.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(db))


def test_the_template_and_other_databases_are_closed(server):
    other_owner = "escape_other_learner"
    with server.admin.connect() as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(other_owner)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(other_owner)))
    try:
        provision.clone(server.admin, "escape_other", owner=other_owner)  # another learner's database
        for dbname in (provision.TEMPLATE_DB, "postgres", "template1", "escape_other"):
            with pytest.raises(psycopg.OperationalError) as failed:
                psycopg.connect(server.url_for(dbname), connect_timeout=10).close()
            if dbname != provision.TEMPLATE_DB:  # the template refuses even superusers: it accepts no connections
                assert "permission denied for database" in str(failed.value), str(failed.value)
        with server.learner() as conn:
            for dbname in (provision.TEMPLATE_DB, "postgres", "template1", "escape_other"):
                assert not conn.execute("SELECT has_database_privilege(%s, 'CONNECT')", (dbname,)).fetchone()[0]
            assert escapes(conn, database_statements(server.dbname)) == []
            assert escapes(conn, [sql.SQL("DROP DATABASE escape_other"),
                                  sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                                      sql.Identifier(server.dbname), sql.Identifier(server.admin_name))]) == []
    finally:
        provision.drop(server.admin, "escape_other")
        with server.admin.connect() as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(other_owner)))


def test_the_tools_schema_cannot_be_changed(server):
    with server.learner() as conn:
        assert escapes(conn, server.own(TOOLS_SCHEMA)) == []
        # GRANT without the grant option only warns; what matters is that nothing was granted
        limited = sql.Identifier(server.limited_role)
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION pgcourse.create_demo_role(text, text, integer) TO {}").format(
            limited))
        conn.execute("GRANT USAGE ON SCHEMA pgcourse TO PUBLIC")
        assert not conn.execute("SELECT has_function_privilege(%s, 'pgcourse.create_demo_role(text, text, integer)',"
                                " 'EXECUTE')", (server.limited_role,)).fetchone()[0]
        assert not conn.execute("SELECT has_schema_privilege(%s, 'pgcourse', 'USAGE')",
                                (server.limited_role,)).fetchone()[0]


def test_functions_on_the_search_path_are_never_called_by_the_tools_or_the_admin(server):
    """The learner owns its database: it may shadow pg_catalog's functions in public and put public first,
    for its sessions, its role and its database. The tools (pinned search_path) and the admin's sessions
    (pinned by connection option) never call them."""
    trojans = {
        "regexp_replace(text, text, text)": "text", "current_setting(text)": "text", "strpos(text, text)": "integer",
        "length(text)": "integer", "quote_literal(text)": "text", "pg_stat_file(text, boolean)": "record",
        "shobj_description(oid, name)": "text", "obj_description(oid, name)": "text",
        "has_table_privilege(name, regclass, text)": "boolean", "pg_get_userbyid(oid)": "name",
        "has_database_privilege(name, oid, text)": "boolean",
    }
    db = sql.Identifier(server.dbname)
    with server.learner() as conn:
        conn.execute("CREATE TABLE public.trojan_calls (who text)")
        conn.execute("GRANT INSERT ON public.trojan_calls TO PUBLIC")
        for signature, returns in trojans.items():
            name = signature.split("(")[0]
            conn.execute(sql.SQL(
                "CREATE FUNCTION public.{}({}) RETURNS {} LANGUAGE plpgsql AS $$ BEGIN"
                " INSERT INTO public.trojan_calls VALUES (current_user); RETURN NULL; END $$").format(
                sql.Identifier(name), sql.SQL(signature.split("(")[1].rstrip(")")), sql.SQL(returns)))
        conn.execute("CREATE FUNCTION public.trojan_match(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN"
                     " INSERT INTO public.trojan_calls VALUES (current_user); RETURN true; END $$")
        conn.execute("CREATE OPERATOR public.~ (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trojan_match)")
        conn.execute("CREATE TEMP TABLE pg_authid (oid oid, rolname name)")  # a temp table shadowing a catalog
        conn.execute(sql.SQL("ALTER ROLE {} SET search_path = public, pg_catalog").format(sql.Identifier(server.role)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = public, pg_catalog").format(db))
        conn.execute("SET search_path = pg_temp, public, pg_catalog")
        assert conn.execute("SELECT length('x')").fetchone()[0] is None, "the trojans work for the learner"
        conn.execute("TRUNCATE public.trojan_calls")
    try:
        with server.learner() as conn:
            conn.execute("SET search_path = pg_temp, public, pg_catalog")
            conn.execute("CREATE TABLE public.target (id int, s text)")
            trojan = server.demo("lesson99_trojan")
            pw = verifier(conn, trojan, "pw")
            conn.execute("SELECT pgcourse.create_demo_role(%s, %s)", (trojan, pw))
            conn.execute("SELECT pgcourse.drop_demo_role(%s)", (trojan,))
            conn.execute("SELECT pgcourse.course_file_directory()")
            attempt(conn, "SELECT pgcourse.copy_from_course_file('public.target', 'no-such-file.csv')")
            attempt(conn, "SELECT pgcourse.create_demo_role('learner')")
        provision.upgrade_course_database(server.admin, server.whole_server, name=server.dbname, say=lambda *_: None,
                                          role=server.role, limited=server.limited_role)
        with server.admin.connect(server.dbname) as admin:
            calls = admin.execute("SELECT who FROM public.trojan_calls").fetchall()
        assert calls == [], f"a trojan ran inside the course's tools or the admin's session: {calls}"
    finally:
        with server.learner() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} RESET search_path").format(sql.Identifier(server.role)))
            conn.execute(sql.SQL("ALTER DATABASE {} RESET search_path").format(db))


# ---- abusing pgcourse.create_demo_role / drop_demo_role -------------------------------------------
def test_demo_role_functions_refuse_what_is_not_a_demo_role(server):
    with server.learner() as conn:
        pw = verifier(conn, "lesson02_x", "pw")
        statements = []
        for name in [*BAD_DEMO_NAMES, server.admin_name, server.role, server.limited_role]:
            statements += [sql.SQL("SELECT pgcourse.create_demo_role({}, {})").format(sql.Literal(name), sql.Literal(pw)),
                           sql.SQL("SELECT pgcourse.drop_demo_role({})").format(sql.Literal(name))]
        statements.append(sql.SQL("SELECT pgcourse.create_demo_role(NULL, {})").format(sql.Literal(pw)))
        assert escapes(conn, statements) == []
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE '%lesson02_x%'").fetchone()[0] == 0


def test_demo_role_functions_take_a_verifier_and_nothing_else(server):
    with server.learner() as conn:
        good = verifier(conn, "lesson02_v", "pw")
        bad = ["secret", "md5" + "0" * 32, good + " SUPERUSER", good + "' SUPERUSER --", good + "\nSUPERUSER",
               "SCRAM-SHA-256$4096:abc$def:ghi' SUPERUSER '", "' SUPERUSER IN ROLE pg_monitor '",
               "x' CREATEDB CONNECTION LIMIT -1 PASSWORD 'x", good.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
               good + "=" * 400, ""]
        statements = [sql.SQL("SELECT pgcourse.create_demo_role('lesson02_v', {})").format(sql.Literal(v)) for v in bad]
        statements += [sql.SQL("SELECT pgcourse.create_demo_role('lesson02_v', {}, {})").format(
            sql.Literal(good), sql.Literal(limit)) for limit in (-1, 0, 11, 10_000, None)]
        assert escapes(conn, statements) == []
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'lesson02_v'").fetchone()[0] == 0


def test_prefixed_roles_not_made_by_the_caller_are_refused(server):
    admin_made, others = "lesson09_admin_made", "lesson09_someone_elses"
    with server.admin.connect() as admin:
        for role in (admin_made, others):
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE ROLE {} CREATEDB").format(sql.Identifier(admin_made)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(others)))
        admin.execute(sql.SQL("COMMENT ON ROLE {} IS 'pgcourse demo role of someone_else'").format(sql.Identifier(others)))
    try:
        with server.learner() as conn:
            pw = verifier(conn, admin_made, "pw")
            statements = [sql.SQL(s).format(sql.Literal(role), sql.Literal(pw))
                          for role in (admin_made, others)
                          for s in ("SELECT pgcourse.create_demo_role({}, {})", "SELECT pgcourse.drop_demo_role({})")]
            assert escapes(conn, statements) == []
        with server.admin.connect() as admin:
            assert admin.execute("SELECT rolcreatedb, rolpassword IS NULL FROM pg_authid WHERE rolname = %s",
                                 (admin_made,)).fetchone() == (True, True)
    finally:
        with server.admin.connect() as admin:
            for role in (admin_made, others):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_a_demo_role_has_nothing_and_cannot_be_given_anything(server):
    role = server.demo("lesson02_nothing")
    with server.learner() as conn:
        conn.execute("SELECT pgcourse.create_demo_role(%s, %s, 2)", (role, verifier(conn, role, "pw")))
        try:
            row = conn.execute("SELECT rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,"
                               " rolbypassrls, rolconnlimit FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            assert row == (False, False, False, False, True, False, False, 2)
            assert conn.execute("SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole OR roleid = %s::regrole",
                                (role, role)).fetchone()[0] == 0
            r = sql.Identifier(role)
            statements = server.own([sql.SQL(s).format(r) for s in (
                "GRANT pg_monitor TO {}", "GRANT pg_execute_server_program TO {}", "GRANT learner TO {}",
                "GRANT {} TO learner", "GRANT learner_limited TO {}", "ALTER ROLE {} SUPERUSER", "ALTER ROLE {} CREATEROLE",
                "ALTER ROLE {} CREATEDB", "ALTER ROLE {} BYPASSRLS", "ALTER ROLE {} REPLICATION",
                "ALTER ROLE {} CONNECTION LIMIT -1", "ALTER ROLE {} PASSWORD 'plain'", "ALTER ROLE {} RENAME TO escape",
                "COMMENT ON ROLE {} IS 'x'", "SET ROLE {}", "DROP ROLE {}")])
            assert escapes(conn, statements) == []
            with psycopg.connect(server.url_for(server.dbname, role, "pw"), autocommit=True) as demo:
                assert demo.execute("SELECT current_user").fetchone()[0] == role
                assert escapes(demo, [*server.own(["SET ROLE learner"]), "SELECT pgcourse.create_demo_role('lesson02_more')",
                                      sql.SQL("SELECT pgcourse.drop_demo_role({})").format(sql.Literal(role)),
                                      "CREATE ROLE escape", sql.SQL("GRANT pg_monitor TO {}").format(r)]) == []
            for dbname in ("postgres", "template1", provision.TEMPLATE_DB):
                with pytest.raises(psycopg.OperationalError):
                    psycopg.connect(server.url_for(dbname, role, "pw"), connect_timeout=10).close()
        finally:
            conn.execute("SELECT pgcourse.drop_demo_role(%s)", (role,))


def test_a_learner_may_hold_at_most_fifty_demo_roles(server):
    if server.in_room:
        pytest.skip("a room learner's demo roles stop earlier, at their connection budget (tests/test_room.py)")
    with server.learner() as conn:
        held = conn.execute("SELECT count(*) FROM pg_roles WHERE shobj_description(oid, 'pg_authid')"
                            " = 'pgcourse demo role of ' || current_user").fetchone()[0]  # a notebook running beside
        tag = secrets.token_hex(3)
        names = [f"lesson99_many_{tag}_{i}" for i in range(50 - held)]
        try:
            for name in names:
                conn.execute("SELECT pgcourse.create_demo_role(%s)", (name,))
            refused(conn, "SELECT pgcourse.create_demo_role('lesson99_one_too_many')")
        finally:
            for name in names:
                conn.execute("SELECT pgcourse.drop_demo_role(%s)", (name,))


# ---- abusing pgcourse.copy_from_course_file -------------------------------------------------------
@pytest.fixture
def course_file(server):
    """Write a file into the course folder (as lesson 05 does); every file made is removed afterwards."""
    if server.course_files is None:
        pytest.skip("the course folder is on the server's machine, not this one")
    made: list[Path] = []

    def write(name: str, text: str = "1,one\n2,two\n") -> Path:
        path = server.course_files / name
        path.write_text(text)
        path.chmod(0o644)
        made.append(path)
        return path

    write.made = made
    yield write
    for path in made:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


def test_copy_takes_only_a_bare_name_in_the_course_folder(server, course_file):
    course_file("good.csv")
    names = ["../data/pg_hba.conf", "..", "../course_files/good.csv", "/etc/passwd", "/tmp/good.csv", "./good.csv",
             "sub/good.csv", ".hidden", "good.csv/..", "~/good.csv", "$(id).csv", "good.csv;id", "good.csv\n",
             "good.csv\nid", "good csv", "good.csv' (FORMAT csv); COPY x TO PROGRAM 'id", "%2e%2e/pg_hba.conf",
             "..%2fpg_hba.conf", "", "a" * 101]
    formats = ["csv, PROGRAM 'id'", "csv) TO PROGRAM 'id' --", "program", "CSV", ""]
    with server.learner() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.loaded (id integer, s text)")
        statements = [sql.SQL("SELECT pgcourse.copy_from_course_file('public.loaded', {})").format(sql.Literal(n))
                      for n in names]
        statements.append(sql.SQL("SELECT pgcourse.copy_from_course_file('public.loaded', NULL)"))
        statements += [sql.SQL("SELECT pgcourse.copy_from_course_file('public.loaded', 'good.csv', {})").format(
            sql.Literal(f)) for f in formats]
        assert escapes(conn, statements) == []
        assert conn.execute("SELECT count(*) FROM public.loaded").fetchone()[0] == 0


def test_copy_refuses_links_folders_and_pipes(server, course_file):
    outside = server.course_files.parent / "escape-outside.csv"  # a file beside the course folder
    outside.write_text("1,secret\n")
    outside.chmod(0o644)
    links = server.course_files
    for name in ("to-hba.csv", "to-passwd.csv", "to-outside.csv", "to-inside.csv", "hard.csv", "pipe.csv"):
        (links / name).unlink(missing_ok=True)  # left by an interrupted run
    shutil.rmtree(links / "folder.csv", ignore_errors=True)
    try:
        (links / "to-hba.csv").symlink_to(server.data_dir / "pg_hba.conf")
        (links / "to-passwd.csv").symlink_to("/etc/passwd")
        (links / "to-outside.csv").symlink_to("../escape-outside.csv")
        course_file("inside.csv")
        (links / "to-inside.csv").symlink_to("inside.csv")
        os.link(outside, links / "hard.csv")
        (links / "folder.csv").mkdir()
        os.mkfifo(links / "pipe.csv")
        course_file.made.extend(links / n for n in ("to-hba.csv", "to-passwd.csv", "to-outside.csv", "to-inside.csv",
                                                     "hard.csv", "folder.csv", "pipe.csv"))
        with server.learner(options="-c statement_timeout=10s") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS public.loaded_lines (line text)")
            names = ["to-hba.csv", "to-passwd.csv", "to-outside.csv", "to-inside.csv", "hard.csv", "folder.csv",
                     "pipe.csv"]
            statements = [sql.SQL("SELECT pgcourse.copy_from_course_file('public.loaded_lines', {}, 'text')").format(
                sql.Literal(n)) for n in names]
            assert escapes(conn, statements) == []
            assert conn.execute("SELECT count(*) FROM public.loaded_lines").fetchone()[0] == 0
    finally:
        outside.unlink(missing_ok=True)


TABLES_THAT_RUN_CODE = {
    "a trigger": "CREATE TABLE t (id integer, s text);"
                 " CREATE TRIGGER t BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION spy_trigger()",
    "a statement trigger": "CREATE TABLE t (id integer, s text);"
                           " CREATE TRIGGER t AFTER INSERT ON t FOR EACH STATEMENT EXECUTE FUNCTION spy_trigger()",
    "a CHECK constraint": "CREATE TABLE t (id integer, s text CHECK (spy(s)))",
    "a CHECK of a builtin that runs SQL": "CREATE TABLE t (id integer, s text CHECK (query_to_xml('SELECT spy(''x'')',"
                                          " false, false, '') IS NOT NULL))",
    "an index on an expression": "CREATE TABLE t (id integer, s text); CREATE INDEX ON t ((spy(s)))",
    "a partial index": "CREATE TABLE t (id integer, s text); CREATE INDEX ON t (id) WHERE spy(s)",
    "a generated column": "CREATE TABLE t (id integer, s text, g boolean GENERATED ALWAYS AS (spy(s)) STORED)",
    "a domain column": "CREATE DOMAIN spied AS text CHECK (spy(VALUE)); CREATE TABLE t (id integer, s spied)",
    "an enum column": "CREATE TYPE mood AS ENUM ('one', 'two'); CREATE TABLE t (id integer, s mood)",
    "a composite column": "CREATE TYPE pair AS (a text); CREATE TABLE t (id integer, s pair)",
    "a view": "CREATE TABLE base (id integer, s text); CREATE VIEW t AS SELECT * FROM base;"
              " CREATE TRIGGER t INSTEAD OF INSERT ON t FOR EACH ROW EXECUTE FUNCTION spy_trigger()",
    "a partitioned table": "CREATE TABLE t (id integer, s text) PARTITION BY RANGE (id);"
                           " CREATE TABLE t1 PARTITION OF t FOR VALUES FROM (0) TO (100)",
    "a partition": "CREATE TABLE parent (id integer, s text) PARTITION BY LIST ((spy(s)));"
                   " CREATE TABLE t PARTITION OF parent FOR VALUES IN (true)",
}


@pytest.mark.parametrize("kind", TABLES_THAT_RUN_CODE)
def test_copy_refuses_a_table_that_would_run_code_as_the_admin(server, course_file, kind):
    course_file("two.csv", "1,one\n2,two\n")
    with server.learner() as conn:
        conn.execute("DROP SCHEMA IF EXISTS spyland CASCADE")
        conn.execute("CREATE SCHEMA spyland")
        conn.execute("SET search_path = spyland, public")
        conn.execute("CREATE TABLE spyland.calls (who text)")
        conn.execute("GRANT USAGE ON SCHEMA spyland TO PUBLIC")
        conn.execute("GRANT INSERT ON spyland.calls TO PUBLIC")
        conn.execute("CREATE FUNCTION spyland.spy(text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN"
                     " INSERT INTO spyland.calls VALUES (current_user); RETURN true; END $$")
        conn.execute("CREATE FUNCTION spyland.spy_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                     " INSERT INTO spyland.calls VALUES (current_user); RETURN NEW; END $$")
        conn.execute(TABLES_THAT_RUN_CODE[kind])
        conn.execute("TRUNCATE spyland.calls")
        refused(conn, "SELECT pgcourse.copy_from_course_file('spyland.t', 'two.csv')")
        assert conn.execute("SELECT who FROM spyland.calls").fetchall() == []
        conn.execute("DROP SCHEMA spyland CASCADE")


def test_copy_never_evaluates_column_defaults(server, course_file):
    """Defaults are allowed: COPY without a column list fills every column from the file, so a default
    (a learner's function) never runs as the admin."""
    course_file("two.csv", "1,one\n2,two\n")
    with server.learner() as conn:
        conn.execute("CREATE TABLE public.spy_calls (who text)")
        conn.execute("GRANT INSERT ON public.spy_calls TO PUBLIC")
        conn.execute("CREATE FUNCTION public.spy_default() RETURNS text LANGUAGE plpgsql AS $$ BEGIN"
                     " INSERT INTO public.spy_calls VALUES (current_user); RETURN 'x'; END $$")
        conn.execute("CREATE TABLE public.with_default (id integer, s text DEFAULT public.spy_default())")
        assert conn.execute("SELECT pgcourse.copy_from_course_file('public.with_default', 'two.csv')").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM public.spy_calls").fetchone()[0] == 0


def test_copy_refuses_other_isolation_levels_and_tables_it_may_not_insert_into(server, course_file):
    course_file("two.csv")
    with server.admin.connect(server.dbname) as admin:
        admin.execute("CREATE TABLE public.admins_table (id integer, s text)")
        admin.execute("CREATE SCHEMA admins_schema")  # INSERT on a table, but no USAGE on its schema
        admin.execute("CREATE TABLE admins_schema.open_table (id integer, s text)")
        admin.execute(sql.SQL("GRANT INSERT ON admins_schema.open_table TO {}").format(sql.Identifier(server.role)))
        open_table = admin.execute("SELECT 'admins_schema.open_table'::regclass::oid").fetchone()[0]
    with server.learner() as conn:
        conn.execute("CREATE TABLE public.plain (id integer, s text)")
        refused(conn, "SELECT pgcourse.copy_from_course_file(%s::oid::regclass, 'two.csv')", (open_table,))
        for statement in ("SELECT pgcourse.copy_from_course_file('public.admins_table', 'two.csv')",
                          "SELECT pgcourse.copy_from_course_file('pg_catalog.pg_authid', 'two.csv')",
                          "SELECT pgcourse.copy_from_course_file('pgcourse.create_demo_role'::regproc::oid::regclass,"
                          " 'two.csv')"):
            error = attempt(conn, statement)
            assert error is not None and error.sqlstate in (DENIED, "42P01"), f"{statement}: {error}"
        for level in ("REPEATABLE READ", "SERIALIZABLE"):
            with server.learner(autocommit=False) as tx:
                tx.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL {}").format(sql.SQL(level)))
                refused(tx, "SELECT pgcourse.copy_from_course_file('public.plain', 'two.csv')")
    with server.admin.connect(server.dbname) as admin:
        assert admin.execute("SELECT count(*) FROM public.admins_table").fetchone()[0] == 0
        assert admin.execute("SELECT count(*) FROM admins_schema.open_table").fetchone()[0] == 0


def test_copy_sees_a_trigger_committed_while_it_waited(server, course_file):
    """Another session adds a trigger and commits while the COPY waits for the table: the function locks
    the table before it inspects it, so it sees the trigger and refuses."""
    course_file("two.csv")
    with server.learner() as conn:
        conn.execute("CREATE TABLE public.raced (id integer, s text)")
        conn.execute("CREATE TABLE public.race_calls (who text)")
        conn.execute("GRANT INSERT ON public.race_calls TO PUBLIC")
        conn.execute("CREATE FUNCTION public.race_spy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                     " INSERT INTO public.race_calls VALUES (current_user); RETURN NEW; END $$")
    outcome: dict[str, object] = {}
    with server.learner(autocommit=False) as ddl:
        ddl.execute("CREATE TRIGGER raced BEFORE INSERT ON public.raced FOR EACH ROW EXECUTE FUNCTION public.race_spy()")

        def load():
            with server.learner() as conn:
                outcome["error"] = attempt(conn, "SELECT pgcourse.copy_from_course_file('public.raced', 'two.csv')")

        loader = threading.Thread(target=load)
        loader.start()
        deadline = time.monotonic() + 10
        with server.admin.connect() as admin:
            while time.monotonic() < deadline and not admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = %s",
                    (server.dbname,)).fetchone()[0]:
                time.sleep(0.05)
        ddl.commit()
        loader.join(20)
    error = outcome["error"]
    assert error is not None and error.sqlstate == DENIED and "triggers" in str(error), error
    with server.learner() as conn:
        assert conn.execute("SELECT count(*) FROM public.race_calls").fetchone()[0] == 0


# ---- each lesson need still works, through its narrow mechanism -----------------------------------
def test_lessons_01_and_02_make_log_in_with_and_drop_demo_roles(server):
    role, password = server.demo("lesson02_percent"), "pa%ss @/:#?'\"ü"
    with server.learner() as conn:
        conn.execute("SELECT pgcourse.drop_demo_role(%s)", (role,))
        assert conn.execute("SELECT pgcourse.create_demo_role(%s, %s)",
                            (role, verifier(conn, role, password))).fetchone()[0] == "created"
        assert conn.execute("SELECT pgcourse.create_demo_role(%s, %s)",
                            (role, verifier(conn, role, password))).fetchone()[0] == "updated"
        with psycopg.connect(server.url_for(server.dbname, role, password)) as demo:
            assert demo.execute("SELECT current_user").fetchone()[0] == role
            # lesson 01: a role sets its own password with a composed literal (no CREATEROLE needed)
            demo.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal("new one")))
        with psycopg.connect(server.url_for(server.dbname, role, "new one")) as demo:
            assert demo.execute("SELECT current_user").fetchone()[0] == role
        conn.execute(sql.SQL("GRANT SELECT ON customers TO {}").format(sql.Identifier(role)))
        assert conn.execute("SELECT pgcourse.drop_demo_role(%s)", (role,)).fetchone()[0] is True
        assert conn.execute("SELECT pgcourse.drop_demo_role(%s)", (role,)).fetchone()[0] is False
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 0


def test_lesson_05_loads_a_file_of_the_course_folder_on_the_server(server, course_file):
    course_file("readings.csv", "id,sensor,value,tags\n1,a,1.50,{}\n2,b,-2.25,\"{\"\"ok\"\": true}\"\n")
    course_file("readings.txt", "3\tc\t3.00\t[]\n")
    with server.learner() as conn:
        directory = conn.execute("SELECT pgcourse.course_file_directory()").fetchone()[0]
        assert Path(directory) == server.course_files
        conn.execute("CREATE TABLE public.sensors (name text PRIMARY KEY)")
        conn.execute("INSERT INTO public.sensors VALUES ('a'), ('b'), ('c')")
        conn.execute("CREATE TABLE public.readings (id integer PRIMARY KEY, sensor text NOT NULL REFERENCES public.sensors,"
                     " value numeric(12,2) NOT NULL, tags jsonb NOT NULL DEFAULT '{}')")
        conn.execute("CREATE INDEX ON public.readings (sensor, value)")
        conn.execute("CREATE INDEX ON public.readings USING gin (tags)")
        loaded = conn.execute("SELECT pgcourse.copy_from_course_file('public.readings', 'readings.csv', 'csv', true)")
        assert loaded.fetchone()[0] == 2
        loaded = conn.execute("SELECT pgcourse.copy_from_course_file('public.readings', 'readings.txt', 'text')")
        assert loaded.fetchone()[0] == 1
        rows = conn.execute("SELECT id, sensor, value::text, tags::text FROM public.readings ORDER BY id").fetchall()
        assert rows == [(1, "a", "1.50", "{}"), (2, "b", "-2.25", '{"ok": true}'), (3, "c", "3.00", "[]")]
        with pytest.raises(psycopg.errors.UndefinedFile, match="no file 'missing.csv' in the course folder"):
            conn.execute("SELECT pgcourse.copy_from_course_file('public.readings', 'missing.csv')")


def test_statistics_rights_where_the_learner_owns_the_server(server):
    if server.in_room:  # one server for the room: none of the statistics rights, nothing of the others' sessions
        with server.learner() as conn, psycopg.connect(server.limited_url, application_name="escape-limited") as mine:
            mine.execute("SELECT 1")
            assert conn.execute("SELECT state FROM pg_stat_activity WHERE application_name = 'escape-limited'"
                                ).fetchone() == ("idle in transaction",), "its own limited session, in full"
            state = conn.execute("SELECT state FROM pg_stat_activity WHERE usename = %s", (provision.LEARNER,)).fetchall()
            assert all(row == (None,) for row in state), "the course learner's sessions: hidden"
            attempts = ["SELECT pg_stat_statements_reset()"] + (["SET log_min_duration_statement = 0"]
                                                                 if server.major >= 15 else [])
            assert escapes(conn, attempts) == []
        return
    if not server.whole_server:
        pytest.skip("the course uses your own server, provisioned without WHOLE_SERVER=1: no statistics rights")
    with server.learner() as conn, psycopg.connect(server.limited_url, application_name="escape-limited") as limited:
        limited.execute("SELECT 1")
        state = conn.execute("SELECT state FROM pg_stat_activity WHERE application_name = 'escape-limited'").fetchone()
        assert state == ("idle in transaction",)  # pg_read_all_stats: another role's session, in full
        conn.execute("SELECT pg_stat_statements_reset()")
    if server.major < 15:
        return
    with server.learner() as conn, psycopg.connect(server.limited_url, autocommit=True) as limited:
        conn.execute("SET log_min_duration_statement = 0")  # lesson 10: its own statements, in the log
        assert escapes(conn, ["ALTER SYSTEM SET log_min_duration_statement = 0", "SET log_statement = 'all'",
                              "SET log_min_messages = 'debug5'", "SET log_parameter_max_length = -1"]) == []
        conn.execute("GRANT SET ON PARAMETER log_min_duration_statement TO learner_limited")  # no grant option:
        assert escapes(limited, ["SET log_min_duration_statement = 0"]) == []  # a warning, and nothing granted


# ---- db provision on someone's own server ----------------------------------------------------------
def plain_server(bindir: str | None):
    """A PostgreSQL server with a password superuser `owner`, standing in for a learner's own server."""
    user = osuser.ensure_service_user() if osuser.is_root() else None
    binaries = reachable_by(user, find_binaries(bindir))
    home = open_dir("pgcourse-own-")
    osuser.chown(home, user)
    data, port = home / "data", free_port()
    pwfile = home / "pw"
    pwfile.write_text("own-secret\n")
    osuser.chown(pwfile, user)
    run = lambda args: osuser.run_as(user, args, check=True, capture_output=True)  # noqa: E731
    run([binaries["initdb"], "-D", str(data), "-U", "owner", f"--pwfile={pwfile}", "--auth=scram-sha-256",
         "--no-sync", "--no-locale"])
    run([binaries["pg_ctl"], "-D", str(data), "-l", str(home / "log"), "-w", "-o",
         f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"])

    def stop():
        run([binaries["pg_ctl"], "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(home, ignore_errors=True)

    return f"postgresql://owner:own-secret@127.0.0.1:{port}/postgres", stop


OWN_SERVERS = [None] + ([str(PG15)] if pg15_wanted() else [])


@pytest.mark.parametrize("bindir", OWN_SERVERS, ids=lambda b: "PostgreSQL 15" if b else "course binaries")
def test_db_provision_on_your_own_server_says_what_it_grants_and_refuses_an_escaping_learner(bindir, tmp_path):
    admin_url, stop = plain_server(bindir)
    env = {**os.environ, "PGCOURSE_ENV": str(tmp_path / ".env")}
    provision_cmd = [sys.executable, "-m", "pgcourse", "db", "provision", admin_url, "--scale", str(SCALE)]
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            major = admin.info.server_version // 10000
            admin.execute("CREATE ROLE learner LOGIN CREATEROLE")  # as an earlier version of the course left it
            admin.execute("GRANT pg_read_server_files, pg_execute_server_program TO learner")
        refused_run = subprocess.run(provision_cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        assert refused_run.returncode == 1
        message = refused_run.stderr.strip().splitlines()
        assert len(message) == 2 and "learner is a member of pg_execute_server_program" in message[0], message
        assert message[1].startswith("Fix: ") and 'REVOKE "pg_execute_server_program" FROM "learner";' in message[1]
        assert not (tmp_path / ".env").exists()

        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("REVOKE pg_execute_server_program FROM learner")
        done = subprocess.run(provision_cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "The role learner: revoked CREATEROLE" in out and "revoked pg_read_server_files" in out
        assert f"On PostgreSQL {major}" in out and "pgcourse.create_demo_role" in out
        assert "Not granted, because other people may use this server: pg_read_all_stats" in out
        values = envfile.read(tmp_path / ".env")
        with psycopg.connect(values["DATABASE_URL"], autocommit=True) as conn:
            assert escapes(conn, ISSUE_SEQUENCE[:1] + ["SELECT pg_stat_statements_reset()",
                                                        "SET log_min_duration_statement = 0"]) == []
            member_of = conn.execute("SELECT count(*) FROM pg_auth_members WHERE member = 'learner'::regrole")
            assert member_of.fetchone()[0] == 0
            assert not conn.execute("SELECT rolcreaterole FROM pg_roles WHERE rolname = 'learner'").fetchone()[0]

        whole = subprocess.run([*provision_cmd, "--whole-server"], capture_output=True, text=True, env=env, cwd=ROOT)
        assert whole.returncode == 0 and "Not granted" not in whole.stdout, whole.stdout + whole.stderr
        with psycopg.connect(envfile.read(tmp_path / ".env")["DATABASE_URL"], autocommit=True) as conn:
            assert conn.execute("SELECT bool_and(has_function_privilege(oid, 'EXECUTE')) FROM pg_proc"
                                " WHERE proname = 'pg_stat_statements_reset'").fetchone()[0]
            assert conn.execute("SELECT pg_has_role('pg_read_all_stats', 'USAGE')").fetchone()[0]
            if major >= 15:
                conn.execute("SET log_min_duration_statement = 0")
    finally:
        stop()


def test_an_existing_server_is_upgraded_at_start(server):
    """A server made by an earlier version of the course: the learner owned the template and held
    CREATEROLE and pg_read_server_files; the course database had no tools. A start fixes all of it."""
    if server.in_room:
        pytest.skip("about the course's own learner role, which a room learner is not")
    with server.admin.connect() as admin:
        admin.execute("ALTER ROLE learner CREATEROLE")
        admin.execute("GRANT pg_read_server_files TO learner")
        admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO learner").format(sql.Identifier(provision.TEMPLATE_DB)))
        admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(sql.Identifier(provision.TEMPLATE_DB)))
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(provision.TEMPLATE_DB)))
        admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(sql.Identifier(server.dbname)))
    with server.admin.connect(server.dbname) as inside:
        inside.execute("DROP SCHEMA pgcourse CASCADE")
    said: list[str] = []
    provision.upgrade(server.admin, whole_server=server.whole_server, say=said.append)
    provision.upgrade_course_database(server.admin, server.whole_server, name=server.dbname, say=said.append)
    assert any("revoked CREATEROLE" in m for m in said) and any("revoked pg_read_server_files" in m for m in said)
    assert any("Brought 'course_template' up to date" in m for m in said)
    with server.learner() as conn:
        assert escapes(conn, ISSUE_SEQUENCE[:1] + database_statements(server.dbname)[:3]) == []
        assert conn.execute("SELECT pgcourse.create_demo_role('lesson02_upgraded')").fetchone()[0] == "created"
        conn.execute("SELECT pgcourse.drop_demo_role('lesson02_upgraded')")
        assert not conn.execute("SELECT has_database_privilege('public', %s, 'CONNECT')",
                                (provision.TEMPLATE_DB,)).fetchone()[0]
    again: list[str] = []
    provision.upgrade(server.admin, whole_server=server.whole_server, say=again.append)
    assert again == [], "a second start has nothing to do"
