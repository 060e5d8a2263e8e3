"""A room: create, list, reset and drop with real roles, and room learners kept apart.

A room of three learners with names unique to this run (parallel runs and leftovers do not collide),
dropped at the end even on failure. Three learners need more connections than a fresh course server
allows (room.needed_connections counts each one's role, limited role and demo budget), so that room
lives on the tests' scratch bundled server (`room_server` in tests/conftest.py), which room.create may
grow and restart; its room file is that server's own (never the checkout's .room/room.json). A room
that fits (two learners) is made and dropped on the course server itself, which is never restarted
here. Each cross-learner attempt must fail the way PostgreSQL refuses it (SQLSTATE 42501, or
`<insufficient privilege>` in a statistics view). The sizing of the bundled server is shown on a
scratch server of its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg import sql

from pgcourse import provision, room, target
from pgcourse.errors import ServerError
from pgcourse.server import ROOT, Cluster

DENIED = "42501"  # insufficient_privilege
HIDDEN = "<insufficient privilege>"


LIMIT = 4  # connections per learner here: two learners fit a fresh course server (room.needed_connections), three do not


def quiet(*_):
    pass


class NoRestart:
    """Stands in for the course server in room.create: the tests never restart the shared server."""

    def stop(self):
        raise AssertionError("room.create would restart the course server")

    start = stop


def leftovers(admin: provision.Admin, prefix: str) -> list[str]:
    """Roles and databases of this run's learners still on the server (demo roles included)."""
    like = f"%{prefix}%"
    with admin.connect() as conn:
        roles = [r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s ORDER BY 1", (like,))]
        dbs = [d for (d,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (like,))]
    return roles + dbs


def sweep(admin: provision.Admin, prefix: str) -> None:
    """Drop whatever this run left (a failed test must not leave roles on the shared server)."""
    with admin.connect() as conn:
        for (dbname,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"%{prefix}%",)).fetchall():
            provision.drop(admin, dbname)
        roles = [r for (r,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s"
                                            " ORDER BY rolname LIKE 'room%%', 1", (f"%{prefix}%",))]
        for role in roles:
            room._drop_role(admin, conn, role)


@pytest.fixture(scope="module")
def course():
    return target.load(say=quiet)


@pytest.fixture(scope="module")
def server(room_server):
    """The server the room of three lives on, as target.load gives the course's: the scratch server."""
    return room_server.target


@pytest.fixture(scope="module")
def setup(room_server, server):
    """(room, path, prefix): three learners <prefix>a, <prefix>b, <prefix>c on the scratch server, in the
    room file its starts read (so the max_connections the room grows it to survives a restart)."""
    prefix = "t" + secrets.token_hex(4)
    path = room_server.room_file
    assert not path.exists(), f"another test left a room on the scratch server: {path}"
    try:
        made = room.create(server.admin, [prefix + s for s in "abc"], host="127.0.0.1", port=room_server.port,
                           kind="bundled", connection_limit=LIMIT, path=path, say=quiet, cluster=room_server.cluster,
                           restart=True)
        with server.admin.connect() as conn:  # grown (restarted) as the room needs: every learner's share fits
            assert int(conn.execute("SHOW max_connections").fetchone()[0]) >= made.max_connections
        yield made, path, prefix
    finally:
        if path.exists():
            room.drop(server.admin, room.Room.load(path), path=path, say=quiet)
        sweep(server.admin, prefix)


def connect(url: str, dbname: str | None = None, **kwargs) -> psycopg.Connection:
    if dbname:
        url = provision.with_dbname(url, dbname)
    return psycopg.connect(url, autocommit=True, connect_timeout=10, **kwargs)


def connect_sqlstate(url: str) -> str | None:
    """The SQLSTATE a refused connection carries (asyncpg reports it; libpq only its message); None if it connects."""
    async def attempt():
        try:
            conn = await asyncpg.connect(url, timeout=10)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        await conn.close()
        return None

    return asyncio.run(attempt())


def error_of(conn: psycopg.Connection, statement, params=None) -> psycopg.Error | None:
    try:
        conn.execute(statement, params)
    except psycopg.Error as exc:
        return exc
    return None


# ---- create, the room file, list -----------------------------------------------------------------
def test_the_room_file_holds_working_urls(setup):
    made, path, prefix = setup
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["server"]["kind"] in ("bundled", "external")
    assert sorted(data["learners"]) == [prefix + s for s in "abc"]
    assert data["connection_limit"] == LIMIT
    for name, entry in data["learners"].items():
        assert entry["role"] == f"room_{name}" and entry["limited_role"] == f"room_{name}_limited"
        assert entry["database"] == f"room_{name}"
        env = entry["env"]
        assert env["COURSE_LEARNER"] == name and env["COURSE_CONNECTION_LIMIT"] == str(LIMIT)
        with connect(env["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (entry["role"], entry["database"])
            assert conn.execute("SELECT count(*) > 0 FROM customers").fetchone()[0], "its own copy of the dataset"
        with connect(env["LIMITED_DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (
                entry["limited_role"], entry["database"])


def test_create_again_keeps_passwords_and_adds_learners(room_server, server, setup):
    made, path, prefix = setup
    before = json.loads(path.read_text())["learners"]
    again = room.create(server.admin, [prefix + "a", prefix + "d"], host=made.server["host"],
                        port=made.server["port"], kind=made.server["kind"], path=path, say=quiet,
                        cluster=room_server.cluster, restart=True)
    try:
        after = json.loads(path.read_text())["learners"]
        assert sorted(after) == [prefix + s for s in "abcd"]
        for name in before:
            assert after[name] == before[name], f"{name} kept its passwords"
        with connect(again.learners[prefix + "d"].env["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == f"room_{prefix}d"
    finally:
        assert room.drop(server.admin, again, [prefix + "d"], path=path, say=quiet) == [prefix + "d"]
    assert sorted(room.Room.load(path).learners) == [prefix + s for s in "abc"]
    assert leftovers(server.admin, prefix + "d") == []


def test_listing_says_who_exists_and_is_connected(server, setup):
    made, path, prefix = setup
    with connect(made.learners[prefix + "b"].env["DATABASE_URL"]), connect(made.learners[prefix + "b"].env["DATABASE_URL"]):
        rows = room.listing(server.admin, room.Room.load(path))
    assert [(r["name"], r["role"], r["database"], r["exists"], r["limit"]) for r in rows] == [
        (prefix + s, f"room_{prefix}{s}", f"room_{prefix}{s}", True, LIMIT) for s in "abc"]
    assert {r["name"]: r["sessions"] for r in rows}[prefix + "b"] == 2


def test_bad_names_and_impossible_servers_are_refused(course, tmp_path):
    port = int(psycopg.conninfo.conninfo_to_dict(course.database_url)["port"])
    for bad in ("Alice", "1abc", "a" * 17, "a-b", "a b", "a'b", "", "room_x"):
        assert not room.valid_name(bad)
        with pytest.raises(ServerError, match="not a learner name"):
            room.create(course.admin, [bad], host="127.0.0.1", port=port, kind="bundled",
                        path=tmp_path / "bad.json", say=quiet)
    assert room.valid_name("learner01") and room.valid_name("a") and room.valid_name("abcdefghijklmnop")
    with pytest.raises(ServerError, match="needs") as refused:  # as on an external server with too few connections
        room.create(course.admin, ["x", "y", "z"], host="127.0.0.1", port=port, kind="external",
                    connection_limit=1000, path=tmp_path / "big.json", say=quiet)
    assert "ALTER SYSTEM SET max_connections = 3" in refused.value.fix and "restart" in refused.value.fix
    assert not (tmp_path / "big.json").exists()


# ---- the room learner's rights --------------------------------------------------------------------
def test_a_room_learner_holds_exactly_its_rights(setup):
    made, _, prefix = setup
    a = made.learners[prefix + "a"]
    with connect(a.env["DATABASE_URL"]) as conn:
        major = conn.info.server_version // 10000
        assert conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolconnlimit"
                            " FROM pg_roles WHERE rolname = current_user").fetchone() == (
            False, False, False, False, False, LIMIT)
        member_of = {r for (r,) in conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
            " WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)")}
        assert member_of == {a.limited_role}, "its own limited role, and no predefined role"
        assert not any(r.name.startswith("pg_") for r in provision.rights_for(major, whole_server=False))
        for function in provision.TOOL_FUNCTIONS:
            assert conn.execute("SELECT has_function_privilege(%s, 'EXECUTE')", (f"pgcourse.{function}",)).fetchone()[0]
            for other in (a.limited_role, provision.LEARNER, "public"):
                assert not conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')",
                                        (other, f"pgcourse.{function}")).fetchone()[0], (other, function)
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname = 'pg_stat_statements_reset'"
                            " AND has_function_privilege(oid, 'EXECUTE')").fetchone()[0] == 0
        owners = conn.execute("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
                              " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S')").fetchall()
        assert owners == [(a.role,)], "the dataset's tables belong to the room learner"
        if major >= 16:  # a member without the SET option: it may not become its limited role
            assert error_of(conn, sql.SQL("SET ROLE {}").format(sql.Identifier(a.limited_role))).sqlstate == DENIED
        if major >= 15:
            assert error_of(conn, "SET log_min_duration_statement = 0").sqlstate == DENIED
        assert error_of(conn, "SELECT pg_stat_statements_reset()").sqlstate == DENIED
    with connect(a.env["DATABASE_URL"]) as conn:  # the database's CONNECT: its owner, its limited role only
        assert conn.execute("SELECT has_database_privilege(%s, current_database(), 'CONNECT'),"
                            " has_database_privilege('public', current_database(), 'CONNECT')",
                            (provision.LEARNER,)).fetchone() == (False, False)


def test_the_course_learner_cannot_reach_a_room_database(server, setup):
    made, _, prefix = setup  # the course's learner role on the room's server
    assert connect_sqlstate(provision.with_dbname(server.database_url, made.learners[prefix + "a"].database)) == DENIED


def test_a_room_learner_sees_its_own_limited_sessions_queries(setup):
    made, _, prefix = setup
    a = made.learners[prefix + "a"]
    with connect(a.env["DATABASE_URL"]) as conn, connect(a.env["LIMITED_DATABASE_URL"]) as limited:
        limited.execute("SELECT 'limited own query'")
        query = conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (limited.info.backend_pid,)).fetchone()
        assert query == ("SELECT 'limited own query'",)


# ---- learners kept apart --------------------------------------------------------------------------
def test_a_learner_cannot_connect_to_another_learners_database(setup):
    made, _, prefix = setup
    a, b = made.learners[prefix + "a"], made.learners[prefix + "b"]
    for url in (a.env["DATABASE_URL"], a.env["LIMITED_DATABASE_URL"]):
        for dbname in (b.database, provision.COURSE_DB, "postgres", "template1"):
            assert connect_sqlstate(provision.with_dbname(url, dbname)) == DENIED, (url.split("@")[0][:30], dbname)
            with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                connect(url, dbname).close()
        with pytest.raises(psycopg.OperationalError):  # the template takes no connections at all
            connect(url, provision.TEMPLATE_DB).close()


def test_a_learner_cannot_read_another_learners_queries(setup):
    made, _, prefix = setup
    a, b = made.learners[prefix + "a"], made.learners[prefix + "b"]
    secret = f"SELECT 'secret of {prefix}b'"
    with connect(a.env["DATABASE_URL"]) as spy, connect(b.env["DATABASE_URL"]) as victim, \
            connect(b.env["LIMITED_DATABASE_URL"]) as victim_limited:
        victim.execute(secret)
        victim_limited.execute(secret)
        seen = spy.execute("SELECT usename, query, state FROM pg_stat_activity WHERE pid IN (%s, %s) ORDER BY usename",
                           (victim.info.backend_pid, victim_limited.info.backend_pid)).fetchall()
        assert [(user, query) for user, query, _ in seen] == [(b.role, HIDDEN), (b.limited_role, HIDDEN)]
        assert all(state is None for _, _, state in seen)
        rows = spy.execute("SELECT DISTINCT query FROM pg_stat_statements"
                           " WHERE userid IN (to_regrole(%s), to_regrole(%s))", (b.role, b.limited_role)).fetchall()
        assert rows == [(HIDDEN,)], "another learner's statements: counted, their text and queryid hidden"
        assert spy.execute("SELECT count(*) FROM pg_stat_statements WHERE query LIKE %s",
                           (f"%secret of {prefix}b%",)).fetchone()[0] == 0
        assert spy.execute("SELECT count(*) FROM pg_stat_statements WHERE userid IN (to_regrole(%s), to_regrole(%s))"
                           " AND queryid IS NOT NULL", (b.role, b.limited_role)).fetchone()[0] == 0


def test_a_learner_cannot_cancel_or_end_another_learners_backend(setup):
    made, _, prefix = setup
    a, b = made.learners[prefix + "a"], made.learners[prefix + "b"]
    with connect(a.env["DATABASE_URL"]) as spy, connect(b.env["DATABASE_URL"]) as victim, \
            connect(b.env["LIMITED_DATABASE_URL"]) as victim_limited:
        for pid in (victim.info.backend_pid, victim_limited.info.backend_pid):
            for function in ("pg_cancel_backend", "pg_terminate_backend"):
                error = error_of(spy, sql.SQL("SELECT {}(%s)").format(sql.Identifier(function)), (pid,))
                assert error is not None and error.sqlstate == DENIED, (function, error)
        assert victim.execute("SELECT 1").fetchone() == (1,) and victim_limited.execute("SELECT 1").fetchone() == (1,)
        # its own limited session it may end (it is a member of its own limited role)
        with connect(a.env["LIMITED_DATABASE_URL"]) as own:
            assert spy.execute("SELECT pg_cancel_backend(%s)", (own.info.backend_pid,)).fetchone() == (True,)


def test_a_learner_cannot_touch_another_learners_roles(setup):
    made, _, prefix = setup
    a, b = made.learners[prefix + "a"], made.learners[prefix + "b"]
    demo = f"lesson02_demo_{prefix}a"
    with connect(a.env["DATABASE_URL"]) as owner:
        assert owner.execute("SELECT pgcourse.create_demo_role(%s)", (demo,)).fetchone() == ("created",)
    with connect(b.env["DATABASE_URL"]) as other:
        d, r, rl = sql.Identifier(demo), sql.Identifier(a.role), sql.Identifier(a.limited_role)
        statements = [sql.SQL(s).format(d) for s in (
            "DROP ROLE {}", "ALTER ROLE {} PASSWORD 'taken'", "ALTER ROLE {} CONNECTION LIMIT 10", "ALTER ROLE {} RENAME TO x",
            "ALTER ROLE {} NOLOGIN", "COMMENT ON ROLE {} IS 'x'", "SET ROLE {}", "GRANT {} TO CURRENT_USER")]
        statements += [sql.SQL("SELECT pgcourse.drop_demo_role({})").format(sql.Literal(demo)),
                       sql.SQL("SELECT pgcourse.create_demo_role({})").format(sql.Literal(demo))]
        statements += [sql.SQL(s).format(x) for x in (r, rl) for s in (
            "ALTER ROLE {} PASSWORD 'taken'", "ALTER ROLE {} CONNECTION LIMIT -1", "DROP ROLE {}", "SET ROLE {}",
            "GRANT {} TO CURRENT_USER", "ALTER ROLE {} SET work_mem = '1GB'")]
        statements += [sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(sql.Identifier(a.database)),
                       sql.SQL("DROP DATABASE {}").format(sql.Identifier(a.database)),
                       sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(r),
                       sql.SQL("GRANT {} TO {}").format(sql.Identifier(b.limited_role), r)]
        for statement in statements:
            error = error_of(other, statement)
            assert error is not None and error.sqlstate == DENIED, f"{statement.as_string(other)}: {error}"
    with connect(a.env["DATABASE_URL"]) as owner:
        assert owner.execute("SELECT pgcourse.drop_demo_role(%s)", (demo,)).fetchone() == (True,)


def test_a_learner_cannot_take_or_squat_another_learners_demo_names(server, setup):
    """Demo roles are server-wide: a room learner makes only names ending in its own _<name> (or an exercise
    check's random-token name); no one else, not even the course's learner, makes one ending in a learner's."""
    made, _, prefix = setup
    a, b = made.learners[prefix + "a"], made.learners[prefix + "b"]
    with connect(b.env["DATABASE_URL"]) as squatter, connect(server.database_url) as alone:
        for conn, name in ((squatter, f"lesson01_demo_{a.name}"), (squatter, "lesson01_demo"),
                           (squatter, f"lesson01_{b.name}"), (squatter, f"exercise02_hostile_{a.name}"),
                           (alone, f"lesson01_demo_{a.name}")):
            error = error_of(conn, "SELECT pgcourse.create_demo_role(%s)", (name,))
            assert error is not None and error.sqlstate == DENIED and error.diag.message_hint, (name, error)
    with connect(a.env["DATABASE_URL"]) as owner:
        token = secrets.token_hex(3)
        for name in (f"lesson01_demo_{a.name}", f"exercise02_hostile_{token}"):  # lesson 01's, exercise 02's check's
            assert owner.execute("SELECT pgcourse.create_demo_role(%s)", (name,)).fetchone() == ("created",)
            assert owner.execute("SELECT pgcourse.drop_demo_role(%s)", (name,)).fetchone() == (True,)


def hold_sessions(urls: dict[str, str], at_most: int) -> tuple[dict[str, int], list[psycopg.Connection]]:
    """Open sessions with each URL until the server refuses (as the attacker did); how many each held."""
    held, counts = [], {}
    for label, url in urls.items():
        counts[label] = 0
        for _ in range(at_most):
            try:
                held.append(psycopg.connect(url, autocommit=True, connect_timeout=10))
            except psycopg.OperationalError:
                break
            counts[label] += 1
    return counts, held


def test_a_learners_demo_roles_share_a_budget_that_the_sizing_counts(setup):
    """The attack of issue 19: every demo role at the highest limit, then every session each role can hold.
    The budget stops the demo roles, and what one learner holds in all is what the room's sizing counts."""
    made, _, prefix = setup
    a = made.learners[prefix + "a"]
    budget = provision.DEMO_CONNECTIONS
    names = [f"lesson01_flood{i}_{a.name}" for i in range(budget // 10 + 2)]
    held: list[psycopg.Connection] = []
    with connect(a.env["DATABASE_URL"]) as owner:
        try:
            made_roles, refusal = [], None
            for name in names:  # the highest limit each time, until refused; then what is left, once
                verifier = owner.pgconn.encrypt_password(b"pw", name.encode(), b"scram-sha-256").decode()
                limit = 10 if refusal is None else budget - 10 * len(made_roles)
                if limit <= 0:
                    break
                error = error_of(owner, "SELECT pgcourse.create_demo_role(%s, %s, %s)", (name, verifier, limit))
                if error is None:
                    made_roles.append(name)
                elif refusal is None:
                    refusal = error
                    error = error_of(owner, "SELECT pgcourse.create_demo_role(%s, %s, %s)",
                                     (name, verifier, budget - 10 * len(made_roles)))
                    assert error is None, error
                    made_roles.append(name)
                    break
            assert refusal is not None and refusal.sqlstate == DENIED and "drop_demo_role" in refusal.diag.message_hint
            assert owner.execute("SELECT sum(rolconnlimit) FROM pg_roles WHERE rolname = ANY(%s)",
                                 (made_roles,)).fetchone()[0] == budget
            urls = {"role": a.env["DATABASE_URL"], "limited": a.env["LIMITED_DATABASE_URL"]}
            urls |= {n: psycopg.conninfo.make_conninfo(a.env["DATABASE_URL"], user=n, password="pw") for n in made_roles}
            counts, held = hold_sessions(urls, 40)
            per_learner = room.needed_connections(1, made.connection_limit, 0) - room.roomenv.ADMIN_RESERVE
            assert 1 + sum(counts.values()) <= per_learner, (counts, per_learner)  # + the owner's session
            assert counts["limited"] == room.roomenv.LIMITED_PER_LEARNER
        finally:
            for conn in held:
                conn.close()
            for name in names:
                owner.execute("SELECT pgcourse.drop_demo_role(%s)", (name,))


def test_two_sessions_cannot_both_spend_the_last_of_the_budget(setup):
    """The budget is checked under a server-wide lock: two sessions asking for the last connections at
    once, one gets them."""
    import threading

    made, _, prefix = setup
    c = made.learners[prefix + "c"]
    budget = provision.DEMO_CONNECTIONS
    base = [f"lesson02_base{i}_{c.name}" for i in range(budget // 10)]
    racers = [f"lesson02_race{i}_{c.name}" for i in range(2)]
    left = budget - 10 * len(base)
    with connect(c.env["DATABASE_URL"]) as owner, connect(c.env["DATABASE_URL"]) as one, \
            connect(c.env["DATABASE_URL"]) as two:
        try:
            for name in base:
                owner.execute("SELECT pgcourse.create_demo_role(%s, NULL, 10)", (name,))
            one.execute("BEGIN")  # holds the lock until it commits, while the other waits
            assert error_of(one, "SELECT pgcourse.create_demo_role(%s, NULL, %s)", (racers[0], left)) is None
            outcome = {}
            waiter = threading.Thread(target=lambda: outcome.update(error=error_of(
                two, "SELECT pgcourse.create_demo_role(%s, NULL, %s)", (racers[1], left))))
            waiter.start()
            waiter.join(1.0)
            assert waiter.is_alive(), "the second session waits for the first's lock"
            one.execute("COMMIT")
            waiter.join(30)
            assert outcome["error"] is not None and outcome["error"].sqlstate == DENIED, outcome
        finally:
            for name in base + racers:
                owner.execute("SELECT pgcourse.drop_demo_role(%s)", (name,))


def test_a_start_brings_room_databases_tools_up_to_date(server, setup):
    """tools.sql changed since a room was made: provision.upgrade (every start) reinstalls them there, with
    a room learner's rights only; when they are current, nothing is done."""
    made, _, prefix = setup
    b = made.learners[prefix + "b"]
    with server.admin.connect() as conn:
        stamp = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                             (provision.TEMPLATE_DB,)).fetchone()[0]
    with server.admin.connect(b.database) as conn:
        conn.execute("COMMENT ON SCHEMA pgcourse IS 'pgcourse tools 000000000000, whole server'")  # an old stamp
    with server.admin.connect(b.database) as conn:  # the tools' own number is the sizing's (EXECUTE: admin only)
        assert conn.execute("SELECT pgcourse.demo_connection_budget()").fetchone()[0] == provision.DEMO_CONNECTIONS
    said: list[str] = []
    assert provision.upgrade_room_databases(server.admin, stamp.endswith("whole server"), say=said.append) >= 3
    assert not [m for m in said if b.database in m], said  # (other rooms on the server may come and go)
    with connect(b.env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT obj_description('pgcourse'::regnamespace, 'pg_namespace')").fetchone()[0] == stamp
        assert not conn.execute("SELECT bool_or(has_function_privilege(current_user, oid, 'EXECUTE')) FROM pg_proc"
                                " WHERE proname = 'pg_stat_statements_reset'").fetchone()[0]
        demo = f"lesson02_upgraded_{b.name}"
        assert conn.execute("SELECT pgcourse.create_demo_role(%s)", (demo,)).fetchone() == ("created",)
        conn.execute("SELECT pgcourse.drop_demo_role(%s)", (demo,))


# ---- reset and drop ---------------------------------------------------------------------------------
def test_reset_recreates_one_database_and_ends_only_that_learners_sessions(server, setup):
    made, path, prefix = setup
    a, b = made.learners[prefix + "a"], made.learners[prefix + "b"]
    with connect(a.env["DATABASE_URL"]) as conn:
        conn.execute("CREATE TABLE scratch (id int)")
    bystander, other = connect(b.env["DATABASE_URL"]), connect(b.env["LIMITED_DATABASE_URL"])
    victim, victim_limited = connect(a.env["DATABASE_URL"]), connect(a.env["LIMITED_DATABASE_URL"])
    try:
        ended = room.reset(server.admin, room.Room.load(path), prefix + "a")
        assert sorted(s.pid for s in ended) == sorted([victim.info.backend_pid, victim_limited.info.backend_pid])
        assert {s.user for s in ended} == {a.role, a.limited_role}
        for conn in (victim, victim_limited):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,) and other.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in (bystander, other, victim, victim_limited):
            conn.close()
    with connect(a.env["DATABASE_URL"]) as conn:  # same URL, a fresh database with the learner's rights
        assert conn.execute("SELECT to_regclass('scratch')").fetchone() == (None,)
        assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'customers'").fetchone() == (
            a.role,)
        assert conn.execute("SELECT pgcourse.create_demo_role(%s)", (f"lesson02_reset_{a.name}",)).fetchone() == ("created",)
        conn.execute("SELECT pgcourse.drop_demo_role(%s)", (f"lesson02_reset_{a.name}",))
    with pytest.raises(ServerError, match="not a learner of this room"):
        room.reset(server.admin, room.Room.load(path), prefix + "z")


def test_the_cli_lists_and_refuses_to_drop_without_asking(room_server, setup):
    made, path, prefix = setup
    env = room_server.cli_env(path)  # the command's course server is the scratch one
    listed = subprocess.run([sys.executable, "-m", "pgcourse", "room", "list"], capture_output=True, text=True,
                            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = [line.split() for line in listed.stdout.splitlines() if line.strip().startswith(prefix)]
    assert [line[:3] for line in lines] == [[prefix + s, f"room_{prefix}{s}", "yes"] for s in "abc"]
    dropped = subprocess.run([sys.executable, "-m", "pgcourse", "room", "drop"], capture_output=True, text=True,
                             env=env, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=120)
    assert dropped.returncode == 1 and "YES=1" in dropped.stderr, dropped.stderr
    assert sorted(room.Room.load(path).learners) == [prefix + s for s in "abc"]


def test_drop_leaves_no_role_or_database_behind(course, tmp_path):
    """On the course server: a room of two fits it, so it is never restarted (NoRestart)."""
    prefix = "t" + secrets.token_hex(4)
    path = tmp_path / ".room" / "room.json"
    port = int(psycopg.conninfo.conninfo_to_dict(course.database_url)["port"])
    try:
        made = room.create(course.admin, [prefix + "x", prefix + "y"], host="127.0.0.1", port=port, kind=course.kind,
                           connection_limit=LIMIT, path=path, say=quiet, cluster=NoRestart())
        x = made.learners[prefix + "x"]
        with connect(x.env["DATABASE_URL"]) as conn:  # what drop must clear: demo roles with grants, and a session
            for demo in (f"lesson01_d_{x.name}", f"exercise02_d_{x.name}"):
                conn.execute("SELECT pgcourse.create_demo_role(%s)", (demo,))
                conn.execute(sql.SQL("GRANT SELECT ON customers TO {}").format(sql.Identifier(demo)))
            assert len(leftovers(course.admin, prefix)) == 8
            said: list[str] = []
            assert room.drop(course.admin, room.Room.load(path), path=path, say=said.append) == [prefix + "x", prefix + "y"]
        assert leftovers(course.admin, prefix) == []
        assert not path.exists(), "the last learner dropped takes the room file with it"
        assert any("Dropped 2 learner(s)" in line for line in said)
    finally:
        sweep(course.admin, prefix)


# ---- sizing the bundled server -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_bundled_server_grows_max_connections_only_when_it_must():
    """A scratch bundled server: a room that fits leaves it running; one that needs more restarts it with
    the room's max_connections, which it keeps at every start while the room exists."""
    base = Path(tempfile.mkdtemp(prefix="pgcourse-room-"))
    base.chmod(0o755)  # the server's user (as root: pgcourse) must reach it
    cluster = Cluster(base, env_path=base / ".env", port=free_port(), scale=0.001, say=quiet)
    path = base / ".room" / "room.json"
    try:
        cluster.start()
        show = lambda: int(psycopg.connect(cluster.admin.conninfo, autocommit=True).execute(  # noqa: E731
            "SHOW max_connections").fetchone()[0])
        assert show() == room.DEFAULT_MAX_CONNECTIONS
        said: list[str] = []
        first = room.create(cluster.admin, ["s1"], host="127.0.0.1", port=cluster.port, kind="bundled", path=path,
                            say=said.append, cluster=cluster)
        pid = cluster.status().pid
        assert not any("restarting" in line for line in said) and show() == room.DEFAULT_MAX_CONNECTIONS
        said.clear()
        asked: list[str] = []
        with connect(first.learners["s1"].env["DATABASE_URL"]):  # someone at work: a restart would end it
            with pytest.raises(ServerError, match=r"ends the 1 session\(s\) open now") as refused:
                room.create(cluster.admin, ["s2"], host="127.0.0.1", port=cluster.port, kind="bundled", path=path,
                            connection_limit=60, say=quiet, cluster=cluster)  # off a terminal, without restart=True
            assert "RESTART=1" in refused.value.fix and cluster.status().pid == pid
            assert sorted(room.Room.load(path).learners) == ["s1"], "refused before anything was made"
            with pytest.raises(ServerError, match="Nothing was changed"):
                room.create(cluster.admin, ["s2"], host="127.0.0.1", port=cluster.port, kind="bundled", path=path,
                            connection_limit=60, say=quiet, cluster=cluster, ask=lambda q: asked.append(q) or False)
            grown = room.create(cluster.admin, ["s2"], host="127.0.0.1", port=cluster.port, kind="bundled", path=path,
                                connection_limit=60, say=said.append, cluster=cluster,
                                ask=lambda q: asked.append(q) or True)  # the instructor says yes
        assert len(asked) == 2 and all("1 session(s)" in q for q in asked)
        assert grown.max_connections == room.needed_connections(2, 60) > room.DEFAULT_MAX_CONNECTIONS
        assert any("restarting" in line for line in said) and cluster.status().pid != pid
        assert show() == room.bundled_setting(grown.max_connections) >= grown.max_connections
        for learner in grown.learners.values():
            with connect(learner.env["DATABASE_URL"]) as conn:
                assert conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user").fetchone() == (60,)
        cluster.stop()
        cluster.start()
        assert show() == room.bundled_setting(grown.max_connections), "the room's value survives a restart"
        room.drop(cluster.admin, room.Room.load(path), path=path, say=quiet)
        cluster.stop()
        cluster.start()
        assert show() == room.DEFAULT_MAX_CONNECTIONS, "without a room, the next start goes back to the default"
        # a server without the template (never provisioned) is refused, and nothing made
        with cluster.admin.connect() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(provision.TEMPLATE_DB)))
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(provision.TEMPLATE_DB)))
        with pytest.raises(ServerError, match="no 'course_template' database") as refused:
            room.create(cluster.admin, ["s3"], host="127.0.0.1", port=cluster.port, kind="bundled", path=path,
                        say=quiet, cluster=cluster)
        assert "make db-start" in refused.value.fix and not path.exists()
        with cluster.admin.connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'room_s3%'").fetchone()[0] == 0
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_only_the_rooms_own_bundled_server_takes_its_max_connections(tmp_path):
    path = tmp_path / "room.json"
    assert room.bundled_max_connections(path, 5432) is None, "no room"
    made = room.Room({"host": "127.0.0.1", "port": 5432, "kind": "bundled"}, 12, 523,
                     {"a": room.Learner.named("a")})
    made.save(path)
    assert room.bundled_max_connections(path, 5432) == 600, "rounded up to a hundred"
    assert room.bundled_max_connections(path, 5433) is None, "another bundled server of the checkout (e.g. test-pg15)"
    made.max_connections = 64
    made.save(path)
    assert room.bundled_max_connections(path, 5432) is None, "PostgreSQL's default suffices"
    made.server["kind"], made.max_connections = "external", 523
    made.save(path)
    assert room.bundled_max_connections(path, 5432) is None
    path.write_text("{not json")
    assert room.bundled_max_connections(path, 5432) is None, "a broken room file never stops the server"
