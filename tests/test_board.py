"""The progress board with real roles: row-level security keeps each learner to its own rows, checks record
their outcomes (and still judge when the board is unreachable), and the instructor's board shows everyone."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
import types
import urllib.parse

import asyncpg
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgcourse import board, boardview, provision
from pgcourse import target as target_module
from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import production as check
from pgcourse.notebooks import fresh_database

WRONG = "the password is still readable"


def masked(url: str) -> str:
    """The right answer to lesson 10's exercise 1 (a quick check that needs no database)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}"))


def unmasked(url: str) -> str:
    return url


def stub(url: str) -> str:
    raise NotImplementedError


@pytest.fixture(scope="module")
def tgt():
    return target_module.load(say=lambda *_: None)


@pytest.fixture(scope="module")
def learners(tgt):
    """Three throwaway login roles, enrolled on the board, and a fourth one not enrolled; their URLs name a
    database of their own (a label on their rows: the checks used here connect to none)."""
    board.ensure_board(tgt.admin)
    params = conninfo_to_dict(tgt.database_url)
    tag = secrets.token_hex(3)
    names = {who: f"board_{tag}_{who}" for who in ("a", "b", "c", "outsider")}
    urls = {}
    try:
        with tgt.admin.connect() as conn:
            for who, role in names.items():
                password = secrets.token_urlsafe(18)
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
                urls[who] = provision.learner_url(params["host"], int(params["port"]), password, dbname=f"db_{role}", user=role)
        for who in ("a", "b", "c"):
            board.enroll(tgt.admin, names[who])
        yield types.SimpleNamespace(names=names, urls=urls)
    finally:
        for role in names.values():
            with contextlib.suppress(psycopg.Error):
                board.unenroll(tgt.admin, role, forget=True)
            with contextlib.suppress(psycopg.Error), tgt.admin.connect() as conn:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def board_of(url: str) -> psycopg.Connection:
    """A session on the board as the learner of `url` (whatever PGCOURSE_PROGRESS says)."""
    return psycopg.connect(provision.with_dbname(url, board.PROGRESS_DB), autocommit=True)


def insert(conn: psycopg.Connection, learner: str | None = None, **values) -> None:
    row = {"database": "somewhere", "lesson": "03", "exercise": 1, "outcome": "failed", "message": "m", **values}
    if learner is not None:
        row["learner"] = learner
    conn.execute(sql.SQL("INSERT INTO progress.outcomes ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, row)), sql.SQL(", ").join(sql.Placeholder(k) for k in row)), row)


def test_the_table_forces_row_level_security_and_ensure_board_is_idempotent(tgt):
    board.ensure_board(tgt.admin)
    board.ensure_board(tgt.admin)
    with tgt.admin.connect(board.PROGRESS_DB) as conn:
        enabled, forced = conn.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                                       " WHERE oid = 'progress.outcomes'::regclass").fetchone()
        policies = conn.execute("SELECT policyname, cmd FROM pg_policies WHERE schemaname = 'progress'"
                                " ORDER BY policyname").fetchall()
        public = conn.execute("SELECT has_database_privilege('public', current_database(), 'CONNECT')").fetchone()[0]
    assert (enabled, forced) == (True, True)
    assert policies == [("read_own", "SELECT"), ("record_own", "INSERT")]
    assert not public


def test_a_learner_reads_only_its_own_rows_and_the_admin_reads_all(tgt, learners):
    with board_of(learners.urls["a"]) as a, board_of(learners.urls["b"]) as b:
        insert(a, message="a's own")
        insert(b, message="b's own")
        seen_by_a = a.execute("SELECT DISTINCT learner FROM progress.outcomes").fetchall()
        seen_by_b = b.execute("SELECT DISTINCT learner FROM progress.outcomes").fetchall()
    assert seen_by_a == [(learners.names["a"],)]
    assert seen_by_b == [(learners.names["b"],)]
    with tgt.admin.connect(board.PROGRESS_DB) as admin:
        everyone = {r for (r,) in admin.execute("SELECT DISTINCT learner FROM progress.outcomes WHERE learner = ANY(%s)",
                                               ([learners.names["a"], learners.names["b"]],))}
    assert everyone == {learners.names["a"], learners.names["b"]}


def test_a_learner_cannot_forge_a_row_of_another(learners):
    with board_of(learners.urls["a"]) as a, pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
        insert(a, learner=learners.names["b"], message="forged")
    assert raised.value.sqlstate == "42501"
    assert "row-level security" in str(raised.value)


@pytest.mark.parametrize("statement", [
    "UPDATE progress.outcomes SET outcome = 'passed'",
    "DELETE FROM progress.outcomes",
    "TRUNCATE progress.outcomes",
    "INSERT INTO progress.outcomes (database, lesson, outcome, at) VALUES ('d', '03', 'passed', now() - interval '1 day')",
])
def test_a_learner_cannot_change_remove_or_backdate_rows(learners, statement):
    with board_of(learners.urls["a"]) as a, pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
        a.execute(statement)
    assert raised.value.sqlstate == "42501"


def test_a_role_not_enrolled_cannot_connect_to_the_board(learners):
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        board_of(learners.urls["outsider"]).close()

    async def connect():  # asyncpg reports the SQLSTATE of a refused connection (libpq only its text)
        await (await asyncpg.connect(provision.with_dbname(learners.urls["outsider"], board.PROGRESS_DB))).close()

    with pytest.raises(asyncpg.PostgresError) as raised:
        asyncio.run(connect())
    assert raised.value.sqlstate == "42501"


def rows_of(url: str) -> list[tuple]:
    with board_of(url) as conn:
        return conn.execute("SELECT database, lesson, exercise, check_name, outcome, message FROM progress.outcomes"
                            " WHERE check_name <> '' ORDER BY id").fetchall()


def test_a_check_records_passed_failed_and_not_done(learners, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", learners.urls["b"])
    check.masked_url(masked)
    with pytest.raises(CheckFailed):
        check.masked_url(unmasked)
    with pytest.raises(NotDone):
        check.masked_url(stub)
    rows = rows_of(learners.urls["b"])
    database = f"db_{learners.names['b']}"
    assert [r[:5] for r in rows] == [(database, "10", 1, "production.masked_url", outcome)
                                     for outcome in ("passed", "failed", "not done")]
    assert rows[0][5].startswith("7 URLs: each password replaced by ***")
    assert WRONG in rows[1][5] and "Hint" not in rows[1][5]


def timed(fn) -> tuple[float, str]:
    """Seconds fn took, and what it raised (or 'passed')."""
    start = time.perf_counter()
    try:
        fn()
        verdict = "passed"
    except (CheckFailed, NotDone) as exc:
        verdict = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return time.perf_counter() - start, verdict


@contextlib.contextmanager
def silent_server():
    """A port that accepts TCP connections and never answers: a board that hangs rather than refuses."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_an_unreachable_board_changes_no_verdict_and_costs_at_most_a_second(learners, monkeypatch, kind):
    monkeypatch.setenv("DATABASE_URL", learners.urls["a"])
    answers = (lambda: check.masked_url(masked), lambda: check.masked_url(unmasked))
    reachable = [timed(answer) for answer in answers]
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(silent_server()) if kind == "silent" else closed_port()
        monkeypatch.setenv("PGCOURSE_PROGRESS_URL", provision.learner_url("127.0.0.1", port, "x", board.PROGRESS_DB, "u"))
        unreachable = [timed(answer) for answer in answers]
    assert [v for _, v in unreachable] == [v for _, v in reachable]
    assert reachable[0][1] == "passed" and WRONG in reachable[1][1]
    for (before, _), (after, _) in zip(reachable, unreachable, strict=True):
        assert after < before + 1.5, f"{kind}: {after:.2f} s with the board unreachable, {before:.2f} s with it"


def test_recording_off_records_nothing(learners, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", learners.urls["a"])
    monkeypatch.setenv("PGCOURSE_PROGRESS", "off")
    before = len(rows_of(learners.urls["a"]))
    check.masked_url(masked)
    assert len(rows_of(learners.urls["a"])) == before


def test_the_board_once_shows_both_learners_and_who_is_stuck(tgt, learners, monkeypatch, capsys):
    for who, answer in (("a", masked), ("c", unmasked), ("c", unmasked)):
        monkeypatch.setenv("DATABASE_URL", learners.urls[who])
        with contextlib.suppress(CheckFailed):
            check.masked_url(answer)
    seats = [boardview.Seat(who, learners.names[who], f"db_{learners.names[who]}") for who in ("a", "c")]
    lines = boardview.snapshot(tgt.admin, seats).splitlines()
    row_a = next(line for line in lines if line.startswith("a "))
    row_c = next(line for line in lines if line.startswith("c "))
    assert row_a.split()[10:12] == ["✓··", "1/30"] and "×" not in row_a
    assert row_c.split()[10:14] == ["✗··", "0/30", "10.1", "×2"]
    assert "masked('postgresql://" in row_c and row_c.endswith("…")
    assert lines[-1] == "Most stuck: 10.1 " + board.exercise_of("production.masked_url").title + " (1 learner)"
    assert all(len(line) <= boardview.WIDTH for line in lines)
    monkeypatch.setattr(boardview, "ROOM_FILE", tgt_path := boardview.ROOM_FILE.with_name("no-such-room.json"))
    monkeypatch.delenv("PGCOURSE_ROOM_FILE", raising=False)
    assert not tgt_path.exists()  # no room: the board shows everyone who recorded
    board.main(types.SimpleNamespace(once=True, interval=3.0), admin=tgt.admin)  # what `room board --once` prints
    printed = capsys.readouterr().out
    assert all(learners.names[who] in printed for who in "abc") and "masked('postgresql://" in printed


def test_render_is_a_fixed_text_of_what_was_read():
    exercises = tuple(board.Exercise(lesson, n, f"task {lesson}.{n}", f"m.f{lesson}{n}")
                      for lesson in ("01", "02") for n in (1, 2, 3))
    alice = boardview.Seat("alice", "room_alice", "room_alice", last={("01", 1): "passed", ("01", 2): "failed",
                                                                      ("02", 1): "not done"},
                           passed={("01", 1)})
    alice.failures[("01", 2)] = 3
    alice.latest = (("01", 2), "failed", "order_count(pool, 7) left 1 connection checked out of the pool.")
    bob = boardview.Seat("bob", "room_bob", "room_bob")
    assert boardview.render([alice, bob], exercises, width=72) == "\n".join([
        "Progress board: 2 learners, 6 exercises   (✓ passed  ✗ failed  ? not wr…",
        "learner  01  02   done  stuck on",
        "alice    ✓✗· ?··  1/6  01.2 ×3 order_count(pool, 7) left 1 connection c…",
        "bob      ··· ···  0/6",
        "Most stuck: 01.2 task 01.2 (1 learner)",
    ])


def test_fresh_database_forgets_the_progress_of_its_database(tgt, learners, monkeypatch):
    with fresh_database(tgt, "board forget") as name:
        with board_of(learners.urls["a"]) as a:
            insert(a, database=name)
        with tgt.admin.connect(board.PROGRESS_DB) as admin:
            assert admin.execute("SELECT count(*) FROM progress.outcomes WHERE database = %s", (name,)).fetchone()[0] == 1
    with tgt.admin.connect(board.PROGRESS_DB) as admin:
        assert admin.execute("SELECT count(*) FROM progress.outcomes WHERE database = %s", (name,)).fetchone()[0] == 0


def test_exercises_are_read_from_the_notebooks():
    found = board.exercises()
    assert len(found) >= 30
    assert len({(e.lesson, e.number) for e in found}) == len(found)
    assert board.exercise_of("pooling.order_counts") == board.Exercise("03", 1, found[6].title, "pooling.order_counts")


# ---- what a learner's own code may write: the attacker's findings (issue 19) ----------------------------
ATTACKS = [
    "boom\nvictim    ✗✗✗✗✗✗✗✗  0/40  copied the answers (a fake board line)",
    "\x1b]0;PWNED\x07\x1b[2J\x1b[3J",  # the terminal's title, then clear the screen and its scrollback
    "\x1b]52;c;ZWNobyBwd25lZA==\x07",  # OSC 52: write the instructor's clipboard
    "\x9b2J and \u202eevil",  # an 8-bit CSI, a right-to-left override
]


@pytest.mark.parametrize("column", ["message", "check_name", "database"])
@pytest.mark.parametrize("text", ATTACKS, ids=["newline", "clear", "clipboard", "c1-bidi"])
def test_the_table_refuses_control_characters(learners, column, text):
    with board_of(learners.urls["a"]) as a, pytest.raises(psycopg.errors.CheckViolation) as raised:
        insert(a, **{column: text[:60]})
    assert raised.value.diag.constraint_name == "outcomes_printable"


def test_a_check_message_with_control_characters_still_records_as_escapes(learners, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", learners.urls["c"])
    board.record("10", 1, "failed", "line one\nline two \x1b[2J", check="production.escapes")
    with pytest.raises(CheckFailed):  # a real failing verdict records too
        check.masked_url(unmasked)
    with board_of(learners.urls["c"]) as c:
        rows = c.execute("SELECT check_name, message FROM progress.outcomes WHERE check_name IN"
                         " ('production.escapes', 'production.masked_url') ORDER BY id").fetchall()
    assert ("production.escapes", "line one line two \\x1b[2J") in rows
    assert rows[-1][0] == "production.masked_url" and WRONG in rows[-1][1]


def test_the_board_prints_no_control_character_it_read():
    exercises = (board.Exercise("10", 1, "mask\x1b[2J", "production.masked_url"),)
    seat = boardview.Seat("eve\x1b]0;x\x07", "room_eve", "room_eve", last={("10", 1): "failed"})
    seat.failures[("10", 1)] = 1
    seat.latest = (("10", 1), "failed", ATTACKS[0] + ATTACKS[1] + ATTACKS[2] + ATTACKS[3])
    for colour in (False, True):
        text = boardview.render([seat], exercises, width=400, colour=colour)
        ours = text.replace("\x1b[31m", "").replace("\x1b[0m", "") if colour else text
        assert len(text.splitlines()) == 4  # header, column heads, eve's row, most stuck: no injected line
        assert not any(c != "\n" and not c.isprintable() for c in ours), repr(ours)
    assert "\\x1b]0;PWNED\\x07" in text and "\\n" in text and "\\x9b2J" in text and "\\u202e" in text


def test_a_role_stores_at_most_rows_per_role_and_cannot_lift_the_cap(tgt, learners):
    cap = board.ROWS_PER_ROLE
    flood = ("INSERT INTO progress.outcomes (database, lesson, exercise, outcome, message)"
             " SELECT 'flood', 'l' || g %% 1000, 1 + g %% 99, 'failed', md5(g::text) FROM generate_series(1, %s) g")
    role = learners.names["b"]
    with tgt.admin.connect(board.PROGRESS_DB) as admin:
        stored = admin.execute("SELECT count(*) FROM progress.outcomes WHERE learner = %s", (role,)).fetchone()[0]
    with board_of(learners.urls["b"]) as b:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            b.execute(flood, (10 * cap,))  # the whole statement fails: nothing of it is stored
        assert b.execute("SELECT count(*) FROM progress.outcomes WHERE database = 'flood'").fetchone()[0] == 0
        b.execute(flood, (cap - stored,))
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            insert(b, message="one more")
        for statement in ("ALTER TABLE progress.outcomes DISABLE TRIGGER count_in",
                          "SET session_replication_role = replica", "SELECT * FROM progress.quota",
                          "SELECT lo_from_bytea(0, 'x')", "CREATE TEMP TABLE t (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                b.execute(statement)
    with tgt.admin.connect(board.PROGRESS_DB) as admin:  # the admin's deletes give the room back
        admin.execute("DELETE FROM progress.outcomes WHERE learner = %s AND database = 'flood'", (role,))
        assert admin.execute("SELECT stored FROM progress.quota WHERE learner = %s", (role,)).fetchone()[0] == stored
    with board_of(learners.urls["b"]) as b:
        insert(b, message="room again")


def test_ensure_board_upgrades_a_table_of_schema_1(tgt):
    """The first version's table, with a row of control characters and a flood over the cap, brought up to
    date by what ensure_board runs: the text cleaned, the CHECK added and valid, the flood trimmed."""
    name = f"board_upgrade_{secrets.token_hex(3)}"
    with tgt.admin.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with tgt.admin.connect(name) as conn:
            conn.execute("CREATE SCHEMA progress")
            conn.execute(board._TABLE_SQL)
            conn.execute("INSERT INTO progress.outcomes (learner, database, lesson, exercise, outcome, message)"
                         " VALUES ('eve', 'room_eve', '10', 1, 'failed', %s)", (ATTACKS[1] + "\n",))
            conn.execute("INSERT INTO progress.outcomes (learner, database, lesson, exercise, outcome, message)"
                         " SELECT 'mallory', 'x', 'l', 1, 'failed', g::text FROM generate_series(1, %s) g",
                         (board.ROWS_PER_ROLE + 50,))
            for _ in range(2):  # a second run changes nothing
                with conn.transaction():
                    board._upgrade(conn)
            valid = conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'outcomes_printable'"
                                 " AND conrelid = 'progress.outcomes'::regclass").fetchone()[0]
            eve = conn.execute("SELECT message FROM progress.outcomes WHERE learner = 'eve'").fetchone()[0]
            quota = dict(conn.execute("SELECT learner::text, stored FROM progress.quota").fetchall())
            kept = conn.execute("SELECT min(message::int), count(*) FROM progress.outcomes"
                                " WHERE learner = 'mallory'").fetchone()
        assert valid and eve == "\ufffd]0;PWNED\ufffd\ufffd[2J\ufffd[3J\ufffd"
        assert quota == {"eve": 1, "mallory": board.ROWS_PER_ROLE}
        assert kept == (51, board.ROWS_PER_ROLE)  # the newest rows
    finally:
        with tgt.admin.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_board_database_is_utf8_on_a_sql_ascii_server():
    """A server made with `initdb --no-locale` (its databases SQL_ASCII, as a learner's own server may be):
    a SQL_ASCII board holding rows (an earlier version's) is kept and upgraded, `?` standing for a control
    character; once it holds none it is made again in UTF8, where any text records and reads back."""
    from tests.test_escape import plain_server

    admin_url, stop = plain_server(None)
    admin = provision.Admin(admin_url)
    db = sql.Identifier(board.PROGRESS_DB)
    encoding = "SELECT oid, pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'course_progress'"
    try:
        with admin.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(db))  # the server's default: SQL_ASCII
        with admin.connect(board.PROGRESS_DB) as conn:
            conn.execute("CREATE SCHEMA progress")
            conn.execute(board._TABLE_SQL)
            insert(conn, learner="eve", message="a\x1b[2Jb")
        board.ensure_board(admin)
        with admin.connect() as conn:
            assert conn.execute(encoding).fetchone()[1] == "SQL_ASCII"  # rows in it: kept
        with admin.connect(board.PROGRESS_DB) as conn:
            assert conn.execute("SELECT message FROM progress.outcomes").fetchall() == [("a?[2Jb",)]
            conn.execute("DELETE FROM progress.outcomes")
        board.ensure_board(admin)
        with admin.connect() as conn:
            oid, name = conn.execute(encoding).fetchone()
        assert name == "UTF8"
        text = "café — ✓ ünïcödé"
        with admin.connect(board.PROGRESS_DB) as conn:
            insert(conn, learner="eve", message=text)
            assert conn.execute("SELECT message FROM progress.outcomes").fetchall() == [(text,)]
        board.ensure_board(admin)  # up to date: nothing made again
        with admin.connect() as conn:
            assert conn.execute(encoding).fetchone() == (oid, "UTF8")
    finally:
        stop()
