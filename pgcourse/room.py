"""A room: one server, one role and one database per learner (`python -m pgcourse room ...`).

Each learner `name` gets the login role `room_<name>` (owner of the database `room_<name>`, copied from
the template, with a CONNECTION LIMIT so that one learner's pool lab cannot starve the others) and
`room_<name>_limited` (the room's counterpart of `learner_limited`: CONNECT on that database only).
A room learner holds exactly `provision.rights_for(major, whole_server=False)`: the course's tools in its
own database, and nothing that reaches another learner (no pg_read_all_stats, no server files).

The room file `.room/room.json` (git-ignored, mode 600) holds each learner's environment
(DATABASE_URL, LIMITED_DATABASE_URL, COURSE_LEARNER, COURSE_CONNECTION_LIMIT), which the hub hands out.
On the bundled server, the room's `max_connections` is taken by the server at every start
(pgcourse.server writes it into course.conf while the room file exists).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from . import provision, roomenv
from .errors import ServerError

ROOT = Path(__file__).resolve().parent.parent
ROOM_FILE = ROOT / ".room" / "room.json"
VERSION = 1
PREFIX = "room_"
MARKER = provision.ROOM_MARKER  # the comment on every role a room made: drop and reset touch no other
DEFAULT_MAX_CONNECTIONS = 100  # PostgreSQL's default, which the bundled server keeps without a room
NAME = re.compile(r"[a-z][a-z0-9]{0,15}")


def room_file() -> Path:
    """The room file the commands use: ROOM_FILE, or PGCOURSE_ROOM_FILE (tests keep theirs apart)."""
    return Path(os.environ.get("PGCOURSE_ROOM_FILE") or ROOM_FILE)


def valid_name(name: str) -> bool:
    """A learner's name: a lowercase letter, then at most 15 lowercase letters or digits."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise ServerError(f"{name!r} is not a learner name for a room.",
                          "use a lowercase letter, then at most 15 lowercase letters or digits (e.g. alice, learner07)")


@dataclass
class Learner:
    name: str
    role: str
    limited_role: str
    database: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def named(cls, name: str) -> Learner:
        _check_name(name)
        return cls(name, f"{PREFIX}{name}", f"{PREFIX}{name}_limited", f"{PREFIX}{name}")


@dataclass
class Room:
    server: dict
    connection_limit: int
    max_connections: int
    learners: dict[str, Learner] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)  # the file it was loaded from or saved to

    @classmethod
    def load(cls, path: Path = ROOM_FILE) -> Room:
        """The room in `path`; a ServerError (with the command that makes one) when there is none."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ServerError(f"There is no room file ({path}).",
                              "make one with `make room-create N=30` (or NAMES=alice,bob)") from None
        except (OSError, ValueError) as exc:
            raise ServerError(f"The room file {path} cannot be read: {exc}.",
                              "fix it, or move it away and create the room again") from None
        if data.get("version") != VERSION:
            raise ServerError(f"The room file {path} has version {data.get('version')!r}; this course reads {VERSION}.",
                              "create the room again with this version of the course")
        learners = {name: Learner(**entry, name=name) for name, entry in sorted(data["learners"].items())}
        return cls(data["server"], int(data["connection_limit"]), int(data["max_connections"]), learners, path)

    def save(self, path: Path | None = None) -> None:
        """Write the room file (by default where it came from): its folder mode 700, the file mode 600 (it
        holds passwords), atomically."""
        path = Path(path or self.path or ROOM_FILE)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        data = {"version": VERSION, "server": self.server, "connection_limit": self.connection_limit,
                "max_connections": self.max_connections,
                "learners": {name: {k: v for k, v in asdict(learner).items() if k != "name"}
                             for name, learner in sorted(self.learners.items())}}
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        tmp.replace(path)
        self.path = path


def needed_connections(learners: int, connection_limit: int, reserved: int = 3) -> int:
    """max_connections for a room: every learner's two roles at their limits and its demo roles at their budget
    (provision.DEMO_CONNECTIONS), the admin's reserve, and the slots PostgreSQL keeps for superusers (and, from 16
    on, for pg_use_reserved_connections): no learner can take another's share."""
    per_learner = connection_limit + roomenv.LIMITED_PER_LEARNER + provision.DEMO_CONNECTIONS
    return learners * per_learner + roomenv.ADMIN_RESERVE + reserved


def bundled_setting(needed: int) -> int:
    """The bundled server's max_connections for a room that needs `needed`: rounded up to a hundred, so
    that adding a learner or two during a session does not restart the server (ending every session)."""
    return max(DEFAULT_MAX_CONNECTIONS, -(-needed // 100) * 100)


def bundled_max_connections(room_file: Path, port: int) -> int | None:
    """What the bundled server on `port` takes from the room file into its course.conf at every start (None
    without a room on that server, or when the default suffices)."""
    try:
        data = json.loads(Path(room_file).read_text())
        server = data.get("server", {})
        if server.get("kind") != "bundled" or int(server.get("port")) != int(port) or not data.get("learners"):
            return None
        value = int(data["max_connections"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return bundled_setting(value) if value > DEFAULT_MAX_CONNECTIONS else None


# ---- roles and databases ------------------------------------------------------------------------------
def _retried(action, attempts: int = 8):
    """Run `action`, again when PostgreSQL reports "tuple concurrently updated": GRANT and REVOKE on one
    shared object (the board's database) from two sessions at once, e.g. two learners enrolled at once."""
    for attempt in range(attempts):
        try:
            return action()
        except psycopg.errors.InternalError_ as exc:
            if "concurrently updated" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _password() -> str:
    return secrets.token_urlsafe(18)


def _role_comment(conn: psycopg.Connection, role: str) -> tuple[bool, str | None]:
    row = conn.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                       (role,)).fetchone()
    return (row is not None, row[0] if row else None)


def _ensure_role(conn: psycopg.Connection, role: str, limit: int, password: str | None) -> str | None:
    """Create or update a room login role; return the password to hand out (None: keep the known one)."""
    exists, comment = _role_comment(conn, role)
    if exists and comment != MARKER:
        raise ServerError(f"The role {role} exists on this server and was not made by a room.",
                          "choose other learner names, or drop that role yourself if it is a leftover")
    attributes = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
                         " CONNECTION LIMIT {}").format(sql.Literal(limit))
    if not exists or password is None:
        password = _password()
        # Utility statements take no bound parameters: the password goes in as a composed literal.
        verb = "ALTER ROLE {} {} PASSWORD {}" if exists else "CREATE ROLE {} {} PASSWORD {}"
        conn.execute(sql.SQL(verb).format(sql.Identifier(role), attributes, sql.Literal(password)))
        conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(role), sql.Literal(MARKER)))
        return password
    conn.execute(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(role), attributes))
    return None


def _check_memberships(conn: psycopg.Connection, learner: Learner) -> None:
    """A room role is a member of nothing but (the learner) its own limited role."""
    for role, allowed in ((learner.role, {learner.limited_role}), (learner.limited_role, set())):
        extra = [m for m in provision._memberships(conn, role) if m not in allowed]
        if extra:
            fix = sql.SQL("REVOKE {} FROM {};").format(sql.SQL(", ").join(map(sql.Identifier, extra)),
                                                       sql.Identifier(role)).as_string(conn)
            raise ServerError(f"On this server {role} is a member of {', '.join(extra)}, which a room learner"
                              " must not be.", f"as a superuser run `{fix}`, then create the room again")


def _prepare_database(admin: provision.Admin, learner: Learner) -> None:
    """In a fresh copy of the template: the learner owns the data, uses the tools, and `learner` has no
    right there (the template's tables belong to it)."""
    with admin.connect(learner.database) as conn:
        provision.hand_over(conn, provision.LEARNER, learner.role)
        provision.grant_tools(conn, learner.role, whole_server=False)
        provision.revoke_tools(conn, provision.LEARNER)


def _clone(admin: provision.Admin, learner: Learner) -> list[provision.EndedSession]:
    ended = provision.clone(admin, learner.database, owner=learner.role, limited=learner.limited_role)
    _prepare_database(admin, learner)
    return ended


def _server_facts(admin: provision.Admin) -> tuple[int, int, int]:
    """The server's major version, max_connections and the slots kept from ordinary roles."""
    provision._check_server(admin)
    with admin.connect() as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('max_connections', 'superuser_reserved_connections', 'reserved_connections')").fetchall())
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (provision.TEMPLATE_DB,)).fetchone():
            raise ServerError(f"This server has no {provision.TEMPLATE_DB!r} database to copy for each learner.",
                              "set the course up first: `make db-start` (bundled) or `make db-provision URL=...`")
        return (provision.major(conn), int(settings["max_connections"]),
                int(settings["superuser_reserved_connections"]) + int(settings.get("reserved_connections", 0)))


def create(admin: provision.Admin, names: list[str], *, host: str, port: int, kind: str,
           connection_limit: int | None = None, say=print, path: Path = ROOM_FILE, cluster=None,
           restart: bool = False, ask=None) -> Room:
    """Create the room (or add `names` to the one in `path`): a role pair and a database per learner.

    Learners already in the room keep their passwords and databases. On the bundled server (`cluster`,
    by default the checkout's) the room's max_connections is written to the room file, which the server
    takes at every start; the server is restarted only when the value must grow, and, when sessions other
    than the admin's are open (the restart ends them), only if `restart` is true or `ask(question)` (the
    command line's question on a terminal) says yes; otherwise it is refused before anything is made. On an
    external server a max_connections too low is refused with the statements that raise it.
    """
    from . import board  # imported here: the board's module may import this one

    for name in names:
        _check_name(name)
    if kind not in ("bundled", "external"):
        raise ServerError(f"A room's server is bundled or external, not {kind!r}.", "pass kind='bundled' or 'external'")
    server = {"host": host, "port": int(port), "kind": kind}
    path = Path(path)
    room = Room.load(path) if path.exists() else None
    if room is not None and room.server != server:
        raise ServerError(f"The room file {path} is for {room.server['kind']} server {room.server['host']}:"
                          f"{room.server['port']}, not this one ({host}:{port}).",
                          "drop that room first (`make room-drop`), or move its file away")
    limit = connection_limit or (room.connection_limit if room else roomenv.PER_LEARNER)
    if not 1 <= limit <= 1000:
        raise ServerError(f"A learner's connection limit of {limit} makes no sense.", "give 1 to 1000")
    everyone = sorted(set(room.learners if room else ()) | set(names))
    major, current, reserved = _server_facts(admin)
    provision.check_rights(major, provision.rights_for(major, whole_server=False))
    needed = needed_connections(len(everyone), limit, reserved)
    if kind == "external" and current < needed:
        raise ServerError(
            f"This server allows {current} connections; a room of {len(everyone)} with {limit} per learner"
            f" (and {roomenv.LIMITED_PER_LEARNER} per limited role, {provision.DEMO_CONNECTIONS} for its demo roles)"
            f" needs {needed}.",
            f"as a superuser run `ALTER SYSTEM SET max_connections = {needed};` and restart the server, or give"
            " a smaller --connection-limit")
    if kind == "bundled" and current < needed:
        _may_restart(admin, current, needed, restart, ask)
    room = room or Room(server, limit, needed, {})
    room.connection_limit, room.max_connections = limit, needed
    added = []
    _retried(lambda: board.ensure_board(admin))  # the server may predate the board (an external one)
    with admin.connect() as conn:
        for name in everyone:
            learner = room.learners.get(name) or Learner.named(name)
            known = learner.env.get("DATABASE_URL")
            password = _ensure_role(conn, learner.role, limit, _url_password(known))
            limited_password = _ensure_role(conn, learner.limited_role, roomenv.LIMITED_PER_LEARNER,
                                            _url_password(learner.env.get("LIMITED_DATABASE_URL")))
            # A member of its own limited role: it sees its limited sessions' queries (lesson 03). From 16 on,
            # without the SET option: it may not become that role.
            membership = "GRANT {} TO {} WITH INHERIT TRUE, SET FALSE" if major >= 16 else "GRANT {} TO {}"
            conn.execute(sql.SQL(membership).format(sql.Identifier(learner.limited_role), sql.Identifier(learner.role)))
            _check_memberships(conn, learner)
            password = password or _url_password(known)
            limited_password = limited_password or _url_password(learner.env.get("LIMITED_DATABASE_URL"))
            learner.env = {
                "DATABASE_URL": provision.learner_url(host, port, password, learner.database, learner.role),
                "LIMITED_DATABASE_URL": provision.learner_url(host, port, limited_password, learner.database,
                                                              learner.limited_role),
                "COURSE_LEARNER": name,
                "COURSE_CONNECTION_LIMIT": str(limit),
            }
            room.learners[name] = learner
            room.save(path)  # after each learner: an interrupted create loses no password
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (learner.database,)).fetchone()
            if not exists:
                _clone(admin, learner)
                added.append(name)
            else:  # as a copy gets it (an interrupted create may have stopped half-way)
                provision._database_rights(conn, learner.database, learner.limited_role)
                _prepare_database(admin, learner)
            _retried(lambda role=learner.role: board.enroll(admin, role))
    say(f"The room has {len(room.learners)} learner(s)" + (f"; added {len(added)}: {', '.join(added)}." if added
                                                           else "; nothing new to add.")
        + f" Each role may open {limit} connections (its limited role {roomenv.LIMITED_PER_LEARNER}).")
    say(f"Their DATABASE_URLs are in {path} (mode 600: it holds passwords).")
    if kind == "bundled":
        _size_bundled(room, current, say, cluster)
    else:
        say(f"The server allows {current} connections; the room needs {needed}.")
    return room


def _url_password(url: str | None) -> str | None:
    from urllib.parse import unquote, urlsplit

    if not url:
        return None
    password = urlsplit(url).password
    return unquote(password) if password else None


def _may_restart(admin: provision.Admin, current: int, needed: int, restart: bool, ask) -> None:
    """Refuse a restart of the bundled server that would end other people's sessions, unless allowed."""
    with admin.connect() as conn:
        others = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND usename IS DISTINCT FROM current_user").fetchone()[0]
    if not others or restart:
        return
    question = (f"The room needs {needed} connections and the bundled server allows {current}: it must restart,"
                f" which ends the {others} session(s) open now (other than the admin's).")
    if ask is not None and ask(question + " Restart it?"):
        return
    raise ServerError(question + " Nothing was changed.",
                      "restart when no one works on it: `make room-create ... RESTART=1` (or add --restart)")


def _size_bundled(room: Room, current: int, say, cluster) -> None:
    """Restart the bundled server when the room needs more connections than it allows (and only then)."""
    if current >= room.max_connections:
        say(f"The bundled server allows {current} connections; the room needs {room.max_connections}.")
        return
    if cluster is None:
        from .server import Cluster

        cluster = Cluster(say=say)
    say(f"The room needs {room.max_connections} connections and the bundled server allows {current}:"
        " restarting it (every open session ends) ...")
    cluster.stop()
    cluster.start()
    say(f"Restarted the bundled server with max_connections = {bundled_setting(room.max_connections)} (the room's"
        f" {room.max_connections}, rounded up to a hundred: a few more learners fit without a restart).")


def reset(admin: provision.Admin, room: Room, name: str) -> list[provision.EndedSession]:
    """Drop the learner's database and copy it afresh from the template; the sessions it ended."""
    learner = _member(room, name)
    with admin.connect() as conn:
        exists, comment = _role_comment(conn, learner.role)
    if not exists or comment != MARKER:
        raise ServerError(f"The role {learner.role} is missing on the server.", "run `make room-create` to make it again")
    return _clone(admin, learner)


def _member(room: Room, name: str) -> Learner:
    _check_name(name)
    if name not in room.learners:
        known = ", ".join(sorted(room.learners)) or "none"
        raise ServerError(f"{name!r} is not a learner of this room (learners: {known}).", "check the name: `make room-list`")
    return room.learners[name]


def demo_roles(conn: psycopg.Connection, role: str) -> list[str]:
    """The demo roles `role` made with pgcourse.create_demo_role (marked by pgcourse.demo_role_marker())."""
    return [r for (r,) in conn.execute(
        "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = %s ORDER BY 1",
        (f"pgcourse demo role of {role}",))]


def _drop_role(admin: provision.Admin, conn: psycopg.Connection, role: str) -> None:
    """End the role's sessions, drop what it owns or was granted in every database, then the role."""
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        return
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
    databases = [d for (d,) in conn.execute(
        "SELECT DISTINCT d.datname::text FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE s.refobjid = to_regrole(%s) AND d.datallowconn ORDER BY 1", (role,))]
    shared = conn.execute("SELECT 1 FROM pg_shdepend WHERE refobjid = to_regrole(%s) AND dbid = 0"
                          " AND deptype <> 'p'", (role,)).fetchone()
    if shared and not databases:
        databases = ["postgres"]
    for dbname in databases:
        with admin.connect(dbname) as inside:
            _retried(lambda: inside.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role))))
    _retried(lambda: conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role))))


def drop(admin: provision.Admin, room: Room, names: list[str] | None = None, *, path: Path | None = None,
         say=print) -> list[str]:
    """Drop learners (all when `names` is None): their databases, demo roles and roles; return their names.

    The room file loses them (and is deleted with the last one). The bundled server keeps its
    max_connections until its next start, which takes the smaller room's (or PostgreSQL's default).
    """
    from . import board  # imported here: the board's module may import this one

    path = Path(path or room.path or ROOM_FILE)  # by default, the file the room came from
    chosen = sorted(room.learners) if names is None else [_member(room, n).name for n in names]
    unenroll = getattr(board, "unenroll", None)
    with admin.connect() as conn:
        for name in chosen:
            learner = room.learners[name]
            provision.drop(admin, learner.database)
            for role in (*demo_roles(conn, learner.role), *demo_roles(conn, learner.limited_role),
                         learner.role, learner.limited_role):
                exists, comment = _role_comment(conn, role)
                if exists and role in (learner.role, learner.limited_role) and comment != MARKER:
                    say(f"Left the role {role}: it was not made by a room.")
                    continue
                if exists and role == learner.role and unenroll is not None:  # its rows on the board go too
                    _retried(lambda role=role: unenroll(admin, role, forget=True))
                _drop_role(admin, conn, role)
            del room.learners[name]
            if room.learners:
                room.save(path)
            else:
                Path(path).unlink(missing_ok=True)
    if chosen:
        say(f"Dropped {len(chosen)} learner(s): {', '.join(chosen)} (roles, demo roles and databases).")
    if room.server.get("kind") == "bundled" and chosen:
        say("The bundled server keeps its max_connections until its next start (`make db-stop db-start`).")
    return chosen


def listing(admin: provision.Admin, room: Room) -> list[dict]:
    """One row per learner: name, role, database, exists (role and database), sessions now, limit."""
    rows = []
    with admin.connect() as conn:
        for name, learner in sorted(room.learners.items()):
            role = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (learner.role,)).fetchone()
            database = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (learner.database,)).fetchone()
            sessions = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename IN (%s, %s)",
                (learner.role, learner.limited_role)).fetchone()[0]
            rows.append({"name": name, "role": learner.role, "database": learner.database,
                         "exists": role is not None and database is not None, "sessions": sessions,
                         "limit": role[0] if role else None})
    return rows
