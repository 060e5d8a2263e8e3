"""Course objects on a server: roles, the template database with the dataset, the course database.

Used for the bundled server and for a learner's own server (`python -m pgcourse db provision`).
What the learner role gets is listed in LEARNER_RIGHTS, the one place that defines it; what it never
gets, and on which server versions that would let it reach outside its database, in WITHHELD.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from importlib.resources import files

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import dataset
from .errors import ServerError

LEARNER = "learner"
LIMITED = "learner_limited"
LIMITED_CONNECTIONS = 5
# What one room learner's demo roles may hold together (the sum of their CONNECTION LIMITs), enforced by
# pgcourse.create_demo_role (pgcourse.demo_connection_budget() in sql/tools.sql says the same number): lesson
# 02a's eight demo roles at the default limit of 3 (lesson 02b's Sessions hold 3 of one role at once). The
# room's sizing counts it for every learner (pgcourse.room.needed_connections).
DEMO_CONNECTIONS = 24
DEMO_DEFAULT_LIMIT = 3
ROOM_MARKER = "pgcourse room learner"  # the comment on every role a room made (pgcourse.room.MARKER)
COURSE_DB = "course"
TEMPLATE_DB = "course_template"
TOOLS = "pgcourse"  # the schema of the course's SECURITY DEFINER functions (pgcourse/sql/tools.sql)
COURSE_FILES = "course_files"  # the folder beside the data directory that lesson 05's server-side COPY reads
SUPPORTED = (14, 15, 16, 17, 18)  # PostgreSQL major versions the course runs on
PINNED = "-c search_path=pg_catalog,pg_temp"  # the admin's sessions: nothing a learner made stands in
WHOLE_SERVER = "the learner's own server: bundled, Binder, Docker, or `db provision --whole-server`"


@dataclass(frozen=True)
class Right:
    """A right the learner role gets beyond owning its database."""

    name: str
    why: str
    whole_server_only: bool = False  # granted only where the learner owns the whole server
    since: int = SUPPORTED[0]  # the first major version that has it


@dataclass(frozen=True)
class Withheld:
    """A right the learner role never gets, and why: on `escapes` versions it reaches outside its database."""

    name: str
    kind: str  # "attribute" (of the role) or "role" (a predefined role to be a member of)
    why: str
    escapes: tuple[int, ...] = SUPPORTED
    exists: tuple[int, ...] = SUPPORTED
    granted_before: bool = False  # earlier versions of the course granted it; provisioning revokes it


LOGGED_SETTING = "log_min_duration_statement"  # a superuser's setting: from 15 on, GRANT SET ON PARAMETER opens it

# The learner role is not a superuser. These are the only extra rights it gets, and why. The demo roles
# and the server-side COPY go through narrow SECURITY DEFINER functions (pgcourse/sql/tools.sql), the
# same on every version; the two statistics rights only where the learner owns the whole server.
LEARNER_RIGHTS = (
    Right("EXECUTE on pgcourse.create_demo_role, pgcourse.drop_demo_role",
          "lessons 01 and 02 (and exercise 02's check) make demo roles with awkward passwords: only names"
          " lessonNN_... or exerciseNN_..., LOGIN and nothing else, a connection limit, the password as a"
          " SCRAM verifier"),
    Right("EXECUTE on pgcourse.copy_from_course_file, pgcourse.course_file_directory",
          "lesson 05 compares server-side COPY FROM a file: only a bare file name in the course folder,"
          " into a plain table that runs no code"),
    Right("pg_read_all_stats",
          "see every session in pg_stat_activity (lesson 03 watches learner_limited's) and every query in"
          " pg_stat_statements", whole_server_only=True),
    Right("EXECUTE on pg_stat_statements_reset", "reset query statistics before measuring", whole_server_only=True),
    Right("SET on log_min_duration_statement",
          "lesson 10 has its own slow statements written to the server's log (its own sessions only)",
          whole_server_only=True, since=15),
)

WITHHELD = (
    Withheld("SUPERUSER", "attribute", "passes every permission check"),
    Withheld("CREATEROLE", "attribute",
             "before 16, grants itself any predefined role (pg_execute_server_program: a shell as the server's"
             " user) and alters other roles; from 16 on, still makes login roles with no limit",
             escapes=(14, 15), granted_before=True),
    Withheld("CREATEDB", "attribute", "creates databases beside the course's"),
    Withheld("REPLICATION", "attribute", "streams the changes of every database"),
    Withheld("BYPASSRLS", "attribute", "ignores every row-level security policy"),
    Withheld("pg_read_server_files", "role",
             "reads every file the server's user can read (pg_hba.conf, keys, other learners' files)",
             granted_before=True),
    Withheld("pg_write_server_files", "role", "writes every file the server's user can write"),
    Withheld("pg_execute_server_program", "role", "runs shell commands as the server's user"),
    Withheld("pg_signal_backend", "role", "cancels and ends other roles' sessions"),
    Withheld("pg_read_all_settings", "role", "reads every setting, the server's file paths included"),
    Withheld("pg_stat_scan_tables", "role", "runs monitoring functions that lock any table"),
    Withheld("pg_monitor", "role", "pg_read_all_settings, pg_read_all_stats and pg_stat_scan_tables together"),
    Withheld("pg_read_all_data", "role", "reads every table of every database"),
    Withheld("pg_write_all_data", "role", "writes every table of every database"),
    Withheld("pg_checkpoint", "role", "forces checkpoints of the whole server", exists=(15, 16, 17, 18),
             escapes=(15, 16, 17, 18)),
    Withheld("pg_create_subscription", "role", "connects the server to other servers", exists=(16, 17, 18),
             escapes=(16, 17, 18)),
    Withheld("pg_use_reserved_connections", "role", "takes the connections kept for administrators",
             exists=(16, 17, 18), escapes=(16, 17, 18)),
    Withheld("pg_maintain", "role", "runs VACUUM, ANALYZE, REINDEX, CLUSTER, LOCK on every table",
             exists=(17, 18), escapes=(17, 18)),
    Withheld("pg_signal_autovacuum_worker", "role", "ends autovacuum workers", exists=(18,), escapes=(18,)),
)


def rights_for(major: int, whole_server: bool) -> tuple[Right, ...]:
    """What the learner role gets on a server of this major version."""
    return tuple(r for r in LEARNER_RIGHTS if (whole_server or not r.whole_server_only) and major >= r.since)


def check_rights(major: int, rights: tuple[Right, ...]) -> None:
    """Refuse to grant a right that lets the learner out on this version (guards edits to LEARNER_RIGHTS)."""
    for right in rights:
        for withheld in WITHHELD:
            if withheld.name in right.name.replace(",", " ").split() and major in withheld.escapes:
                raise ServerError(f"Granting {withheld.name} to {LEARNER} on PostgreSQL {major} would let it"
                                  f" reach outside its database: it {withheld.why}.",
                                  f"take {withheld.name} out of LEARNER_RIGHTS in pgcourse/provision.py")


def rights_table() -> str:
    """README's tables of the learner's rights per version, written from LEARNER_RIGHTS and WITHHELD."""
    head = " | ".join(str(v) for v in SUPPORTED)
    rule = " | ".join("---" for _ in SUPPORTED)
    lines = [f"| the learner gets | why | {head} |", f"| --- | --- | {rule} |"]
    for r in LEARNER_RIGHTS:
        cell = "own server" if r.whole_server_only else "yes"
        lines.append(f"| `{r.name}` | {r.why} | {' | '.join(cell if v >= r.since else '-' for v in SUPPORTED)} |")
    lines += ["", f"| never granted | what it would do | {head} |", f"| --- | --- | {rule} |"]
    for w in WITHHELD:
        cells = ["escape" if v in w.escapes else "not needed" if v in w.exists else "-" for v in SUPPORTED]
        before = " (granted by the course before; revoked at the next start)" if w.granted_before else ""
        lines.append(f"| `{w.name}`{before} | {w.why} | {' | '.join(cells)} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Admin:
    """How to reach the server as a role that may create roles and databases."""

    conninfo: str

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        """An autocommit session as the admin itself, its search_path pinned to pg_catalog: a learner-owned
        database's own settings (ALTER DATABASE ... SET search_path, SET role) cannot put the learner's
        functions in its way, nor make it someone else."""
        kwargs.setdefault("options", PINNED)
        kwargs.setdefault("client_encoding", "utf8")  # names as str, also from a SQL_ASCII server
        conn = psycopg.connect(make_conninfo(self.conninfo, dbname=dbname), autocommit=True, **kwargs)
        conn.execute("SET SESSION AUTHORIZATION DEFAULT")
        return conn


def learner_url(host: str, port: int, password: str, dbname: str = COURSE_DB, user: str = LEARNER) -> str:
    """A postgresql:// URL for the learner (or limited) role, password percent-encoded."""
    from urllib.parse import quote

    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(dbname, safe='')}"


def with_dbname(url: str, dbname: str) -> str:
    """The same URL pointing at another database."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def major(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


@functools.cache
def tools_sql() -> str:
    """The SQL of the course's tools (read once per process, like the dataset's)."""
    return (files("pgcourse") / "sql" / "tools.sql").read_text()


def tools_stamp(whole_server: bool) -> str:
    """What a database's tools were installed from: the schema's comment, and the template's."""
    digest = hashlib.sha256(tools_sql().encode()).hexdigest()[:12]
    return f"pgcourse tools {digest}, {'whole server' if whole_server else 'shared server'}"


# ---- roles -------------------------------------------------------------------------------------------
def _memberships(conn: psycopg.Connection, role: str) -> list[str]:
    return [name for (name,) in conn.execute(
        "SELECT DISTINCT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
        " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s ORDER BY 1", (role,))]


def _revoke_membership(conn: psycopg.Connection, role: str, member: str) -> None:
    """REVOKE role FROM member, whoever granted it (from 16 on, each grantor's grant is its own)."""
    if major(conn) < 16:
        conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), sql.Identifier(member)))
        return
    grantors = [g for (g,) in conn.execute(
        "SELECT DISTINCT pg_get_userbyid(m.grantor) FROM pg_auth_members m"
        " WHERE m.roleid = to_regrole(%s) AND m.member = to_regrole(%s)", (role, member))]
    for grantor in grantors:
        conn.execute(sql.SQL("REVOKE {} FROM {} GRANTED BY {}").format(
            sql.Identifier(role), sql.Identifier(member), sql.Identifier(grantor)))


def refuse_escaping_roles(conn: psycopg.Connection) -> None:
    """Refuse when the course's roles already hold, on this server, a right that reaches outside the
    course's database and that the course never granted (what it granted before, it revokes itself)."""
    problems, fixes = [], []
    granted_before = {w.name for w in WITHHELD if w.granted_before}
    for role in (LEARNER, LIMITED):
        row = conn.execute("SELECT rolsuper, rolcreatedb, rolreplication, rolbypassrls, rolcreaterole"
                           " FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if row is None:
            continue
        names = ("SUPERUSER", "CREATEDB", "REPLICATION", "BYPASSRLS", "CREATEROLE")
        attributes = [name for name, held in zip(names, row, strict=True)
                      if held and not (role == LEARNER and name in granted_before)]
        allowed = granted_before | {"pg_read_all_stats"} if role == LEARNER else set()
        members = [m for m in _memberships(conn, role) if m not in allowed]
        if attributes:
            problems.append(f"{role} is {', '.join(attributes)}")
            fixes.append(sql.SQL("ALTER ROLE {} {};").format(
                sql.Identifier(role), sql.SQL(" ").join(sql.SQL("NO" + a) for a in attributes)).as_string(conn))
        if members:
            problems.append(f"{role} is a member of {', '.join(members)}")
            fixes.append(sql.SQL("REVOKE {} FROM {};").format(
                sql.SQL(", ").join(map(sql.Identifier, members)), sql.Identifier(role)).as_string(conn))
    if problems:
        raise ServerError(f"On this server {' and '.join(problems)}, which reaches outside the course's database,"
                          " so the course will not hand out its URL.",
                          f"as a superuser run `{' '.join(fixes)}`, then provision again")


def ensure_rights(conn: psycopg.Connection, whole_server: bool, say=print) -> list[str]:
    """Give the learner role exactly its server-wide rights on this server; return what changed."""
    refuse_escaping_roles(conn)
    changed = []
    row = conn.execute("SELECT rolcreaterole FROM pg_roles WHERE rolname = %s", (LEARNER,)).fetchone()
    if row is None:  # not provisioned (yet): nothing to bring up to date
        return changed
    if row[0]:
        conn.execute(sql.SQL("ALTER ROLE {} NOCREATEROLE").format(sql.Identifier(LEARNER)))
        changed.append("revoked CREATEROLE (lessons 01 and 02 use pgcourse.create_demo_role)")
    members = _memberships(conn, LEARNER)
    if "pg_read_server_files" in members:
        _revoke_membership(conn, "pg_read_server_files", LEARNER)
        changed.append("revoked pg_read_server_files (lesson 05 uses pgcourse.copy_from_course_file)")
    if whole_server and "pg_read_all_stats" not in members:
        conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(LEARNER)))
    elif not whole_server and "pg_read_all_stats" in members:
        _revoke_membership(conn, "pg_read_all_stats", LEARNER)
        changed.append("revoked pg_read_all_stats (not the learner's own server)")
    if major(conn) >= 15:
        held = conn.execute("SELECT has_parameter_privilege(%s, %s, 'SET')", (LEARNER, LOGGED_SETTING)).fetchone()[0]
        if whole_server and not held:
            conn.execute(sql.SQL("GRANT SET ON PARAMETER {} TO {}").format(
                sql.Identifier(LOGGED_SETTING), sql.Identifier(LEARNER)))
        elif not whole_server and held:
            conn.execute(sql.SQL("REVOKE SET ON PARAMETER {} FROM {}").format(
                sql.Identifier(LOGGED_SETTING), sql.Identifier(LEARNER)))
            changed.append(f"revoked SET on {LOGGED_SETTING} (not the learner's own server)")
    return changed


def ensure_roles(admin: Admin, learner_password: str, limited_password: str, *, whole_server: bool = True,
                 say=print) -> list[str]:
    """Create or update the learner and limited roles with these passwords and exactly their rights."""
    with admin.connect() as conn:
        refuse_escaping_roles(conn)
        for role, password, limit in ((LEARNER, learner_password, -1),
                                      (LIMITED, limited_password, LIMITED_CONNECTIONS)):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = sql.SQL("ALTER" if exists else "CREATE")
            # Utility statements take no bound parameters: compose the literal safely instead.
            conn.execute(sql.SQL("{} ROLE {} LOGIN NOSUPERUSER CONNECTION LIMIT {} PASSWORD {}").format(
                verb, sql.Identifier(role), sql.Literal(limit), sql.Literal(password)))
        return ensure_rights(conn, whole_server, say)


def set_passwords(admin: Admin, learner_password: str, limited_password: str) -> None:
    """Give both roles new passwords (used when .env was lost)."""
    with admin.connect() as conn:
        for role, password in ((LEARNER, learner_password), (LIMITED, limited_password)):
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))


# ---- databases ---------------------------------------------------------------------------------------
def database_exists(admin: Admin, name: str) -> bool:
    with admin.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def harden_server(conn: psycopg.Connection, whole_server: bool) -> None:
    """On the learner's own server, no course role connects to postgres or template1 (PUBLIC may, by
    default, and on 14 may also create objects in their public schema, on an admin's search_path)."""
    if whole_server:
        for name in ("postgres", "template1"):
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))


def install_tools(conn: psycopg.Connection, whole_server: bool, role: str = LEARNER, *,
                  grant_whole_server: bool | None = None) -> bool:
    """Install (or bring up to date) the pgcourse schema in the connected database, and grant the learner
    (or a room learner, `role`) what LEARNER_RIGHTS says; False if the database holds a pgcourse schema
    that is not the admin's."""
    stamp = tools_stamp(whole_server)
    row = conn.execute("SELECT nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user),"
                       " obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
                       (TOOLS,)).fetchone()
    if row is not None and not row[0]:
        return False
    if row is None or row[1] != stamp:
        with conn.transaction():
            if row is not None:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(TOOLS)))
            conn.execute(tools_sql())
            conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(TOOLS), sql.Literal(stamp)))
    grant_tools(conn, role, whole_server if grant_whole_server is None else grant_whole_server)
    return True


TOOL_FUNCTIONS = ("create_demo_role(text, text, integer)", "drop_demo_role(text)",
                  "copy_from_course_file(regclass, text, text, boolean)", "course_file_directory()")


def grant_tools(conn: psycopg.Connection, role: str, whole_server: bool) -> None:
    """Let `role` use the course's tools in the connected database (LEARNER_RIGHTS), and reset query
    statistics only where it owns the whole server."""
    grantee = sql.Identifier(role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(TOOLS), grantee))
    for function in TOOL_FUNCTIONS:
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {}.{} TO {}").format(
            sql.Identifier(TOOLS), sql.SQL(function), grantee))
    verb = "GRANT EXECUTE ON FUNCTION {} TO {}" if whole_server else "REVOKE EXECUTE ON FUNCTION {} FROM {}"
    for (function,) in conn.execute("SELECT oid::regprocedure::text FROM pg_proc"
                                    " WHERE proname = 'pg_stat_statements_reset'").fetchall():
        conn.execute(sql.SQL(verb).format(sql.SQL(function), grantee))


def revoke_tools(conn: psycopg.Connection, role: str) -> None:
    """Take back what grant_tools gave `role` in the connected database."""
    grantee = sql.Identifier(role)
    conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(sql.Identifier(TOOLS), grantee))
    for function in TOOL_FUNCTIONS:
        conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {}.{} FROM {}").format(
            sql.Identifier(TOOLS), sql.SQL(function), grantee))
    for (function,) in conn.execute("SELECT oid::regprocedure::text FROM pg_proc"
                                    " WHERE proname = 'pg_stat_statements_reset'").fetchall():
        conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(sql.SQL(function), grantee))


_OWNED_KINDS = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE",
                "S": "SEQUENCE"}


def hand_over(conn: psycopg.Connection, old_owner: str, new_owner: str) -> int:
    """Give `new_owner` every object `old_owner` owns in the connected database, object by object (never
    REASSIGN OWNED, which also hands over shared objects such as databases); return how many moved.

    Sequences that belong to a column move with their table. An object of a kind not handled here is
    refused, so that a change to the dataset cannot leave something behind unnoticed.
    """
    new = sql.Identifier(new_owner)
    moved = 0
    owned = conn.execute(
        "SELECT c.relkind::text, n.nspname::text, c.relname::text,"
        " EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid"
        "         AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relowner = to_regrole(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"
        " ORDER BY c.relkind = 'S', n.nspname, c.relname", (old_owner,)).fetchall()
    for kind, schema, name, belongs_to_table in owned:
        if kind == "S" and belongs_to_table:
            continue  # moved with its table
        conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(_OWNED_KINDS[kind]), sql.Identifier(schema, name), new))
        moved += 1
    for (schema,) in conn.execute("SELECT nspname::text FROM pg_namespace WHERE nspowner = to_regrole(%s)"
                                  " ORDER BY 1", (old_owner,)).fetchall():
        conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), new))
        moved += 1
    for (routine,) in conn.execute("SELECT oid::regprocedure::text FROM pg_proc WHERE proowner = to_regrole(%s)"
                                   " ORDER BY 1", (old_owner,)).fetchall():
        conn.execute(sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(routine), new))
        moved += 1
    for kind, type_name in conn.execute(
            "SELECT t.typtype::text, t.oid::regtype::text FROM pg_type t WHERE t.typowner = to_regrole(%s)"
            " AND t.typtype IN ('e', 'd', 'c', 'r') AND (t.typrelid = 0"
            " OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') ORDER BY 2", (old_owner,)).fetchall():
        verb = "ALTER DOMAIN {} OWNER TO {}" if kind == "d" else "ALTER TYPE {} OWNER TO {}"
        conn.execute(sql.SQL(verb).format(sql.SQL(type_name), new))
        moved += 1
    left = conn.execute(
        "SELECT pg_describe_object(classid, objid, objsubid) FROM pg_shdepend WHERE deptype = 'o'"
        " AND refobjid = to_regrole(%s) AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " ORDER BY 1", (old_owner,)).fetchall()
    if left:
        raise ServerError(f"{old_owner} still owns {', '.join(r[0] for r in left)} after the hand-over to {new_owner}.",
                          "teach provision.hand_over that kind of object")
    return moved


def _prepare_public_schema(conn: psycopg.Connection) -> None:
    """Before 15, give the public schema the later default: owned by the database's owner, no CREATE for
    PUBLIC (otherwise every role may put objects on everyone's search_path)."""
    if major(conn) < 15:
        conn.execute("ALTER SCHEMA public OWNER TO pg_database_owner")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")


def build_template(admin: Admin, scale: float = 1.0, *, whole_server: bool = True) -> float:
    """(Re)create the template database holding the pristine dataset; return seconds taken.

    The template belongs to the admin and no course role may connect to it; its tables belong to the
    learner, so every copy of it gives the learner its own data.
    """
    started = time.perf_counter()
    template, learner = sql.Identifier(TEMPLATE_DB), sql.Identifier(LEARNER)
    with admin.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE_DB,)).fetchone():
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(template))
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(template))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(template))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(template))
    with admin.connect(TEMPLATE_DB) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA public")
        _prepare_public_schema(conn)
        install_tools(conn, whole_server)
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(learner))
        conn.execute(sql.SQL("SET ROLE {}").format(learner))  # the learner owns the data
        conn.execute("SET search_path TO public")
        conn.autocommit = False
        dataset.load(conn, scale)
        conn.commit()
        conn.autocommit = True
        conn.execute("RESET ROLE")
        conn.execute("SET search_path TO pg_catalog, pg_temp")
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(learner))
        conn.execute("VACUUM (FREEZE, ANALYZE)")
    with admin.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(template))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(template, sql.Literal(tools_stamp(whole_server))))
    return time.perf_counter() - started


def upgrade_template(admin: Admin, whole_server: bool) -> bool:
    """Bring a template made by an earlier version of the course up to date; True if it changed.

    Earlier templates belonged to the learner (who could then let itself in, or drop it) and had no
    pgcourse tools.
    """
    template = sql.Identifier(TEMPLATE_DB)
    with admin.connect() as conn:
        row = conn.execute("SELECT datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user),"
                           " shobj_description(oid, 'pg_database'), has_database_privilege('public', oid, 'CONNECT')"
                           " FROM pg_database WHERE datname = %s", (TEMPLATE_DB,)).fetchone()
        if row is None or row == (True, tools_stamp(whole_server), False):
            return False
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(template))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(template))
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(template))
        try:
            with admin.connect(TEMPLATE_DB) as inside:
                _prepare_public_schema(inside)
                install_tools(inside, whole_server)
        finally:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(template))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(template, sql.Literal(tools_stamp(whole_server))))
    return True


def _database_rights(conn: psycopg.Connection, name: str, limited: str = LIMITED) -> None:
    """Only its owner (the learner) and the limited role may connect to a course database."""
    db = sql.Identifier(name)
    conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(db))
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(limited)))


def upgrade_course_database(admin: Admin, whole_server: bool, name: str = COURSE_DB, say=print, *,
                            role: str = LEARNER, limited: str = LIMITED, room: bool = False) -> None:
    """Install the tools into an existing course database that lacks them (or has older ones); `role` and
    `limited` are its learner's (a room learner's database: room_<name> and room_<name>_limited)."""
    with admin.connect() as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        _database_rights(conn, name, limited)
    try:
        with admin.connect(name) as conn:
            # a room learner's database keeps the template's stamp (so an unchanged tools.sql costs nothing),
            # and its learner only the rights of a shared server
            installed = install_tools(conn, whole_server, role, grant_whole_server=False if room else None)
    except psycopg.Error as exc:  # the learner owns the database, and its settings may get in the way
        installed = False
        say(f"Could not install the course's tools into {name!r}: {str(exc).strip().splitlines()[0]}")
    if not installed:
        say(f"The database {name!r} lacks the course's tools (schema {TOOLS!r}; lessons 01, 02 and 05 need"
            " them): `make db-reset` recreates it with them.")


@dataclass(frozen=True)
class EndedSession:
    pid: int
    user: str
    application: str
    state: str

    def __str__(self) -> str:
        app = f" ({self.application})" if self.application else ""
        return f"pid {self.pid}, {self.user}{app}, {self.state}"


def clone(admin: Admin, name: str, owner: str = LEARNER, limited: str = LIMITED) -> list[EndedSession]:
    """Drop database `name` (ending its sessions) and create it afresh from the template, for `owner`."""
    with admin.connect() as conn:
        ended = [EndedSession(*row) for row in conn.execute(
            "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(state, '')"
            " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid", (name,))]
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        strategy = sql.SQL(" STRATEGY FILE_COPY") if conn.info.server_version >= 150000 else sql.SQL("")
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}{}").format(
            sql.Identifier(name), sql.Identifier(TEMPLATE_DB), sql.Identifier(owner), strategy))
        _database_rights(conn, name, limited)
    return ended


def drop(admin: Admin, name: str) -> None:
    """Drop a database, ending any session still in it."""
    with admin.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ---- the whole set-up --------------------------------------------------------------------------------
def _check_server(admin: Admin) -> tuple[int, str]:
    """The server's major version and version string, after checking the admin is a superuser on 14+."""
    with admin.connect() as conn:
        if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            raise ServerError(
                f"The role {conninfo_to_dict(admin.conninfo).get('user', 'in that URL')!r} is not a superuser,"
                " and provisioning creates roles, SECURITY DEFINER functions and an extension.",
                "give `db provision` a URL of a superuser (it is used once, and not saved)")
        version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
        if major(conn) < SUPPORTED[0]:
            raise ServerError(f"This server runs PostgreSQL {version}; the course needs {SUPPORTED[0]} or later.",
                              "use a newer server, or the bundled one (`make db-start`)")
        return major(conn), version


def describe_rights(major_version: int, version: str, whole_server: bool) -> list[str]:
    """What provisioning says it granted, one line each."""
    lines = [f"On PostgreSQL {version}, the role {LEARNER} owns the database {COURSE_DB!r} and gets:"]
    lines += [f"  - {r.name}: {r.why}" for r in rights_for(major_version, whole_server)]
    if not whole_server:
        withheld = [r.name for r in LEARNER_RIGHTS if r.whole_server_only]
        lines.append(f"  Not granted, because other people may use this server: {', '.join(withheld)}"
                     " (pass --whole-server if the server is yours alone).")
    return lines


def provision(admin: Admin, learner_password: str, limited_password: str, scale: float = 1.0,
              rebuild: bool = False, *, whole_server: bool = True, say=print, report: bool = False) -> None:
    """Create everything the course needs on the server behind `admin` (what exists is brought up to date)."""
    major_version, version = _check_server(admin)
    check_rights(major_version, rights_for(major_version, whole_server))
    for change in ensure_roles(admin, learner_password, limited_password, whole_server=whole_server, say=say):
        say(f"The role {LEARNER}: {change}.")
    with admin.connect() as conn:
        harden_server(conn, whole_server)
    if rebuild or not database_exists(admin, TEMPLATE_DB):
        say(f"Loading the sample database into {TEMPLATE_DB!r} ...")
        seconds = build_template(admin, scale, whole_server=whole_server)
        say(f"Loaded the sample database in {seconds:.1f} s.")
    elif upgrade_template(admin, whole_server):
        say(f"Brought {TEMPLATE_DB!r} up to date (owned by the admin, with the course's tools).")
    if rebuild or not database_exists(admin, COURSE_DB):
        clone(admin, COURSE_DB)
    else:
        upgrade_course_database(admin, whole_server, say=say)
    _board(admin)
    if report:
        for line in describe_rights(major_version, version, whole_server):
            say(line)


def upgrade(admin: Admin, *, whole_server: bool = True, say=print) -> None:
    """Bring an existing server's roles and databases to this version of the course (run at every start)."""
    major_version, _ = _check_server(admin)
    check_rights(major_version, rights_for(major_version, whole_server))
    with admin.connect() as conn:
        for change in ensure_rights(conn, whole_server, say):
            say(f"The role {LEARNER}: {change}.")
        harden_server(conn, whole_server)
    if upgrade_template(admin, whole_server):
        say(f"Brought {TEMPLATE_DB!r} up to date (owned by the admin, with the course's tools).")
    upgrade_course_database(admin, whole_server, say=say)
    upgrade_room_databases(admin, whole_server, say=say)
    _board(admin)


def room_learners(conn: psycopg.Connection) -> list[str]:
    """The room learners' names on this server (roles room_<name> a room made and marked), with a database."""
    return [name for (name,) in conn.execute(
        "SELECT substr(a.rolname, 6) FROM pg_roles a JOIN pg_database d ON d.datname = a.rolname"
        " WHERE a.rolname ~ '^room_[a-z][a-z0-9]{0,15}$' AND shobj_description(a.oid, 'pg_authid') = %s"
        " ORDER BY 1", (ROOM_MARKER,))]


def upgrade_room_databases(admin: Admin, whole_server: bool, say=print) -> int:
    """Bring every room learner's database's tools up to date (each compares its stamp first: cheap when
    they are); return how many databases there were."""
    with admin.connect() as conn:
        names = room_learners(conn)
    for name in names:  # only the tools: room create gave the rights, and a room may be dropped meanwhile
        try:
            with admin.connect(f"room_{name}") as conn:
                installed = install_tools(conn, whole_server, f"room_{name}", grant_whole_server=False)
        except psycopg.OperationalError:  # dropped since it was listed (room drop, a test's room)
            continue
        except psycopg.Error as exc:  # the learner owns the database, and its settings may get in the way
            installed = False
            say(f"Could not install the course's tools into 'room_{name}': {str(exc).strip().splitlines()[0]}")
        if not installed:
            say(f"The database 'room_{name}' lacks the course's tools: `make room-reset L={name}` recreates it.")
    return len(names)


def _board(admin: Admin) -> None:
    """The progress board's database, and the learner enrolled in it (pgcourse.board)."""
    from . import board  # imported here: the board's module may import this one

    board.ensure_board(admin)
    board.enroll(admin, LEARNER)
