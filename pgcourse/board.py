"""The progress board: every check records its outcome in the server, in a table the learner roles may
insert into but read only their own rows of (row-level security); the instructor reads them all.

- `ensure_board(admin)` creates (or brings up to date) the database `course_progress`, owned by the admin,
  CONNECT revoked from PUBLIC, with the schema `progress` and the table `progress.outcomes`, its row-level
  security ENABLED and FORCED: a role inserts only rows naming itself (`learner = current_user`) and reads
  only those. Roles get INSERT (no `id`, no `at`: the server sets them) and SELECT, never UPDATE, DELETE or
  TRUNCATE. The admin, a superuser, bypasses the policies: the board reads as the admin.
- What a learner may store is bounded, since the learner writes the rows with its own code: the text columns
  refuse control characters (CHECK `outcomes_printable`: no escape sequence or line break reaches the
  instructor's terminal) and their lengths are capped; a role holds at most ROWS_PER_ROLE rows, counted in
  `progress.quota` by triggers owned by the admin (a learner can neither read nor switch them off: a
  statement that would pass the cap fails whole). Large objects cannot be created in this database.
- The board is a teaching aid, not a grade: a learner's own code may insert "passed" rows in its own name.
- `enroll(admin, role)` lets a role connect, record and read its own; `unenroll(admin, role)` takes that back
  (call it before DROP ROLE: the grants are objects of `course_progress`).
- `record(...)` is what every check calls (`pgcourse.checks`): in a daemon thread, waited for at most
  RECORD_WAIT seconds, every error swallowed. A learner's board is found from its `DATABASE_URL` (same
  server and role, database `course_progress`); `PGCOURSE_PROGRESS_URL` overrides it,
  `PGCOURSE_PROGRESS=off` turns recording off.
- `exercises()` is the course's list of exercises, read from the exercise notebooks (lesson 00 counts them).
- `main(args)` draws the board for `python -m pgcourse room board` (see `pgcourse/boardview.py`).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading
import time
import unicodedata
import urllib.parse
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

PROGRESS_DB = "course_progress"
SCHEMA = "progress"
TABLE = "outcomes"
STAMP = "pgcourse progress board, schema 2"  # the database's comment: up to date when it matches
PROGRESS_APP = "pgcourse progress"  # application_name of the recording sessions
RECORD_WAIT = 1.0  # seconds a check waits for its outcome to be recorded before going on without it
OUTCOMES = ("passed", "failed", "not done", "error")
INSERTABLE = ("learner", "database", "lesson", "exercise", "check_name", "outcome", "message")
ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_ROLE = 2000  # a learner's checks record a row each run: 30 exercises run 60 times each fit
# What the table refuses in its text columns (a PostgreSQL regular expression): C0 and C1 control characters
# and DEL, the Unicode line and paragraph separators, and the bidirectional controls that reorder a line.
REFUSED = r"[\x01-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]"

_TABLE_SQL = """
CREATE TABLE progress.outcomes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    learner name NOT NULL DEFAULT current_user,
    database text NOT NULL CHECK (length(database) BETWEEN 1 AND 63),
    lesson text NOT NULL CHECK (lesson ~ '^[a-z0-9_]{1,40}$'),
    exercise int CHECK (exercise BETWEEN 1 AND 99),
    check_name text NOT NULL DEFAULT '' CHECK (length(check_name) <= 80),
    outcome text NOT NULL CHECK (outcome IN ('passed', 'failed', 'not done', 'error')),
    message text NOT NULL DEFAULT '' CHECK (length(message) <= 500),
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outcomes_by_learner ON progress.outcomes (learner, database, at);
ALTER TABLE progress.outcomes ENABLE ROW LEVEL SECURITY;
ALTER TABLE progress.outcomes FORCE ROW LEVEL SECURITY;
CREATE POLICY record_own ON progress.outcomes FOR INSERT WITH CHECK (learner = current_user);
CREATE POLICY read_own ON progress.outcomes FOR SELECT USING (learner = current_user);
REVOKE ALL ON progress.outcomes FROM PUBLIC;
"""  # schema 1, as the first version made it: `_upgrade` brings it (and a table of that version) to today's

_QUOTA_SQL = """
CREATE TABLE progress.quota (learner name PRIMARY KEY, stored bigint NOT NULL);
REVOKE ALL ON progress.quota FROM PUBLIC;
INSERT INTO progress.quota SELECT learner, count(*) FROM progress.outcomes GROUP BY learner;
"""

_TRIGGERS_SQL = """
CREATE OR REPLACE FUNCTION progress.count_in() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE stored bigint;
BEGIN
    INSERT INTO progress.quota AS q (learner, stored) VALUES (NEW.learner, 1)
    ON CONFLICT (learner) DO UPDATE SET stored = q.stored + 1 RETURNING q.stored INTO stored;
    IF stored > {cap} THEN
        RAISE EXCEPTION 'the progress board holds at most {cap} rows per role, and % has them all', NEW.learner
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION progress.count_out() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE progress.quota AS q SET stored = q.stored - g.n
    FROM (SELECT learner, count(*) AS n FROM gone GROUP BY learner) AS g WHERE q.learner = g.learner;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION progress.count_none() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM progress.quota;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION progress.count_in(), progress.count_out(), progress.count_none() FROM PUBLIC;
DROP TRIGGER IF EXISTS count_in ON progress.outcomes;
CREATE TRIGGER count_in BEFORE INSERT ON progress.outcomes
    FOR EACH ROW EXECUTE FUNCTION progress.count_in();
DROP TRIGGER IF EXISTS count_out ON progress.outcomes;
CREATE TRIGGER count_out AFTER DELETE ON progress.outcomes
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION progress.count_out();
DROP TRIGGER IF EXISTS count_none ON progress.outcomes;
CREATE TRIGGER count_none AFTER TRUNCATE ON progress.outcomes
    FOR EACH STATEMENT EXECUTE FUNCTION progress.count_none();
REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea), lo_import(text),
    lo_import(text, oid) FROM PUBLIC;
"""


def _upgrade(conn) -> None:
    """Bring a `progress.outcomes` of schema 1 (or one already up to date: nothing changes) to schema 2, in
    the caller's transaction: its text cleaned of control characters (each becomes U+FFFD, or `?` in a board
    database that is not UTF8, as an earlier version made on a SQL_ASCII server; the length kept) before the
    CHECK that refuses them is added, validated; the quota table counted from the rows, a role
    over the cap (a flood stored before the cap existed) trimmed to its newest ROWS_PER_ROLE rows; the
    triggers that keep the count."""
    conn.execute("LOCK TABLE progress.outcomes IN SHARE ROW EXCLUSIVE MODE")  # no insert while counting
    has = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'progress.outcomes'::regclass"
                       " AND conname = 'outcomes_printable'").fetchone()
    if has is None:
        refused = sql.Literal(REFUSED)
        utf8 = conn.execute("SELECT getdatabaseencoding() = 'UTF8'").fetchone()[0]  # U&'\\FFFD' fails elsewhere
        mark = sql.SQL("U&'\\FFFD'") if utf8 else sql.Literal("?")
        conn.execute(sql.SQL("UPDATE progress.outcomes SET"
                             " database = regexp_replace(database, {r}, {m}, 'g'),"
                             " check_name = regexp_replace(check_name, {r}, {m}, 'g'),"
                             " message = regexp_replace(message, {r}, {m}, 'g')"
                             " WHERE database ~ {r} OR check_name ~ {r} OR message ~ {r}").format(r=refused, m=mark))
        conn.execute(sql.SQL("ALTER TABLE progress.outcomes ADD CONSTRAINT outcomes_printable CHECK"
                             " (database !~ {r} AND check_name !~ {r} AND message !~ {r})").format(r=refused))
    if conn.execute("SELECT to_regclass('progress.quota')").fetchone()[0] is None:
        conn.execute(_QUOTA_SQL)
    conn.execute(_TRIGGERS_SQL.replace("{cap}", str(ROWS_PER_ROLE)))
    conn.execute("DELETE FROM progress.outcomes WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER"
                 " (PARTITION BY learner ORDER BY at DESC, id DESC) AS newest FROM progress.outcomes"
                 " WHERE learner IN (SELECT learner FROM progress.quota WHERE stored > %s)) AS o WHERE newest > %s)",
                 (ROWS_PER_ROLE, ROWS_PER_ROLE))


# ---- the database, its table and who may use it -------------------------------------------------------
def ensure_board(admin) -> None:
    """Create (or bring up to date) the progress database, its schema, table and policies.

    Cheap when up to date (it runs at every server start): one query on `postgres`, one DELETE of the rows
    of the test harness's databases that are gone (`nb_...`), so test runs do not pile rows up.

    The database is UTF8 whatever the server's default (a server made with `initdb --no-locale` makes
    SQL_ASCII databases, where the board's text and its checks do not work); one that is not UTF8 and holds
    no outcome (left by an earlier version that failed there) is dropped and made again."""
    db = sql.Identifier(PROGRESS_DB)
    with admin.connect() as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database'), pg_encoding_to_char(encoding) = 'UTF8'"
                           " FROM pg_database WHERE datname = %s", (PROGRESS_DB,)).fetchone()
        if row is not None and not row[1] and _holds_nothing(admin):
            try:
                conn.execute(sql.SQL("DROP DATABASE {}").format(db))
                row = None
            except psycopg.errors.InvalidCatalogName:  # another process dropped it a moment ago
                row = None
            except psycopg.errors.ObjectInUse:  # someone is in it: kept as it is this time
                pass
        if row is None:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(db))
            except psycopg.errors.DuplicateDatabase:  # another process made it a moment ago
                pass
        fresh = row is None or row[0] != STAMP
        if fresh:  # only then: a GRANT or REVOKE on a database at every start would collide with another's
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
    with admin.connect(PROGRESS_DB) as conn:
        if fresh:
            with conn.transaction():
                conn.execute("DROP SCHEMA IF EXISTS public")  # nothing of anyone's in the board's database
                if conn.execute("SELECT to_regclass('progress.outcomes')").fetchone()[0] is None:
                    conn.execute("CREATE SCHEMA IF NOT EXISTS progress")
                    conn.execute("REVOKE ALL ON SCHEMA progress FROM PUBLIC")
                    conn.execute(_TABLE_SQL)
                _upgrade(conn)  # a new table and one of an earlier version alike
                conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(STAMP)))
        conn.execute("DELETE FROM progress.outcomes WHERE database LIKE 'nb\\_%'"
                     " AND database NOT IN (SELECT datname FROM pg_database)")


def _holds_nothing(admin) -> bool:
    """Whether the board's database has no outcome recorded (no table, or an empty one)."""
    try:
        with admin.connect(PROGRESS_DB) as conn:
            return conn.execute("SELECT to_regclass('progress.outcomes') IS NULL"
                                " OR NOT EXISTS (SELECT FROM progress.outcomes)").fetchone()[0]
    except psycopg.OperationalError:  # gone meanwhile
        return True


def enroll(admin, role: str) -> None:
    """Let `role` connect to the board, record its outcomes and read its own (nothing when it already may)."""
    who = sql.Identifier(role)
    with admin.connect(PROGRESS_DB) as conn:
        may = conn.execute(
            "SELECT has_database_privilege(%(r)s, current_database(), 'CONNECT')"
            " AND has_schema_privilege(%(r)s, 'progress', 'USAGE')"
            " AND has_table_privilege(%(r)s, 'progress.outcomes', 'SELECT')"
            " AND has_column_privilege(%(r)s, 'progress.outcomes', 'message', 'INSERT')", {"r": role}).fetchone()[0]
        if may:
            return
        for attempt in range(8):  # a GRANT on the database from two sessions at once: "tuple concurrently updated"
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(PROGRESS_DB), who))
                    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA progress TO {}").format(who))
                    conn.execute(sql.SQL("GRANT SELECT, INSERT ({}) ON progress.outcomes TO {}").format(
                        sql.SQL(", ").join(map(sql.Identifier, INSERTABLE)), who))
                return
            except psycopg.errors.InternalError_ as exc:
                if "concurrently updated" not in str(exc) or attempt == 7:
                    raise
                time.sleep(0.05 * (attempt + 1))


def unenroll(admin, role: str, *, forget: bool = False) -> None:
    """Take back what `enroll` gave (before DROP ROLE); with `forget`, delete the role's rows too."""
    who = sql.Identifier(role)
    with admin.connect() as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PROGRESS_DB,)).fetchone():
            return
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            return
    with admin.connect(PROGRESS_DB) as conn, conn.transaction():
        conn.execute(sql.SQL("REVOKE ALL ON progress.outcomes FROM {}").format(who))
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA progress FROM {}").format(who))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(PROGRESS_DB), who))
        if forget:
            conn.execute("DELETE FROM progress.outcomes WHERE learner = %s", (role,))


def forget_database(admin, database: str) -> None:
    """Delete the rows recorded against `database` (a test's clone, dropped)."""
    try:
        with admin.connect(PROGRESS_DB) as conn:
            conn.execute("DELETE FROM progress.outcomes WHERE database = %s", (database,))
    except psycopg.OperationalError:  # no board on this server (not provisioned by this version yet)
        pass


# ---- recording ----------------------------------------------------------------------------------------
def progress_url(database_url: str | None = None) -> str | None:
    """Where this learner records: PGCOURSE_PROGRESS_URL, else DATABASE_URL's server and role in the database
    course_progress; None when PGCOURSE_PROGRESS=off or there is no DATABASE_URL."""
    if os.environ.get("PGCOURSE_PROGRESS", "").strip().lower() in ("off", "0", "no", "false"):
        return None
    if os.environ.get("PGCOURSE_PROGRESS_URL"):
        return os.environ["PGCOURSE_PROGRESS_URL"]
    url = database_url if database_url is not None else os.environ.get("DATABASE_URL")
    if not url:
        return None
    if "://" in url:  # keep a URL a URL (every driver reads it), its parameters as they were
        parts = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + PROGRESS_DB))
    return psycopg.conninfo.make_conninfo(url, dbname=PROGRESS_DB)


def database_of(database_url: str) -> str:
    """The database a URL (or key=value conninfo) names: what a row's `database` says."""
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.Error:
        return ""
    return str(params.get("dbname") or params.get("user") or "")


_pending: set[threading.Thread] = set()


def _insert(url: str, row: dict) -> None:
    try:
        with psycopg.connect(url, application_name=PROGRESS_APP, connect_timeout=2, autocommit=True) as conn:
            conn.execute("INSERT INTO progress.outcomes (database, lesson, exercise, check_name, outcome, message)"
                         " VALUES (%(database)s, %(lesson)s, %(exercise)s, %(check)s, %(outcome)s, %(message)s)",
                         row)
    except Exception:  # noqa: BLE001 - recording never fails a check: no board, no rights, a bad row
        pass
    finally:
        _pending.discard(threading.current_thread())


def start_recording(lesson: str, exercise: int | None, outcome: str, message: str = "", *, check: str = "",
                    database_url: str | None = None) -> threading.Thread | None:
    """Start recording one outcome in a daemon thread; the thread, or None when recording is off."""
    try:
        url = progress_url(database_url)
        source = database_url if database_url is not None else os.environ.get("DATABASE_URL", "")
        if url is None or outcome not in OUTCOMES:
            return None
        row = {"database": printable(database_of(source))[:63] or "?", "lesson": lesson, "exercise": exercise,
               "check": printable(check)[:80], "outcome": outcome, "message": printable(_one_line(message))[:500]}
        thread = threading.Thread(target=_insert, args=(url, row), name="pgcourse progress", daemon=True)
        _pending.add(thread)
        thread.start()
        return thread
    except Exception:  # noqa: BLE001 - recording never fails a check
        return None


def record(lesson: str, exercise: int | None, outcome: str, message: str = "", *, check: str = "",
           database_url: str | None = None, wait: float = RECORD_WAIT) -> None:
    """Record one check's outcome; waits at most `wait` seconds, never raises."""
    thread = start_recording(lesson, exercise, outcome, message, check=check, database_url=database_url)
    if thread is not None:
        thread.join(wait)


@atexit.register
def _finish_pending(wait: float = RECORD_WAIT) -> None:
    """A kernel that exits right after a check still gets its outcome recorded (within `wait` seconds)."""
    deadline = time.monotonic() + wait
    for thread in list(_pending):
        thread.join(max(0.0, deadline - time.monotonic()))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


_ESCAPED = ("Cc", "Cf", "Cs", "Zl", "Zp")  # control and format characters, surrogates, line separators


def printable(text: str) -> str:
    """`text` with every control or format character written as its escape (ESC as `\\x1b`, a line break as
    `\\n`): what the board prints and what a check records, which the table's CHECK accepts."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c == " " or unicodedata.category(c) not in _ESCAPED
                   else c.encode("unicode_escape").decode("ascii") for c in text)


# ---- the exercises, from the notebooks ---------------------------------------------------------------
@dataclass(frozen=True)
class Exercise:
    lesson: str  # "03"
    number: int
    title: str
    check: str  # "pooling.order_counts"


@cache
def exercises(root: Path = ROOT) -> tuple[Exercise, ...]:
    """Every exercise of the course, in order: a `## Exercise N: title` heading and the check its cell calls,
    read from `exercises/` (or `solutions/`). Empty when neither folder is there."""
    folder = next((root / d for d in ("exercises", "solutions") if (root / d).is_dir()), None)
    found: list[Exercise] = []
    for path in sorted(folder.glob("[0-9][0-9]_*_exercises.ipynb")) if folder else []:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        text = ["".join(c.get("source", "")) for c in cells]
        module = next((m.group(1) for t in text for m in [re.search(r"from pgcourse\.checks import (\w+) as check", t)]
                       if m), None)
        number = title = None
        for cell, source in zip(cells, text, strict=True):
            heading = re.search(r"^## Exercise (\d+): (.+)$", source, re.M) if cell.get("cell_type") == "markdown" else None
            if heading:
                number, title = int(heading.group(1)), heading.group(2).strip()
            call = re.search(r"check\.(\w+)\(", source) if "check" in cell.get("metadata", {}).get("tags", []) else None
            if call and number and module:
                found.append(Exercise(path.name[:2], number, title, f"{module}.{call.group(1)}"))
    return tuple(found)


def exercise_of(check: str) -> Exercise | None:
    """The exercise whose check cell calls `check` ("pooling.order_counts")."""
    return next((e for e in exercises() if e.check == check), None)


# ---- the instructor's board --------------------------------------------------------------------------
def main(args, admin=None) -> None:
    """`python -m pgcourse room board [--once] [--interval S]`: the board, drawn once or live until Ctrl-C."""
    from . import boardview

    if admin is None:
        from . import target

        admin = target.load(say=lambda *_: None).admin
    boardview.show(admin, once=bool(getattr(args, "once", False)), interval=float(getattr(args, "interval", 3.0) or 3.0))
