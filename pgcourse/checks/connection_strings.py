"""Checks for lesson 02 (connection strings): URLs with hostile passwords, settings, tagged sessions."""

from __future__ import annotations

import os
from contextlib import closing
from urllib.parse import unquote, urlsplit

import asyncpg
import psycopg
import psycopg2
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine, make_url

from . import CheckFailed, NotDone, call, database_url, passed, run_async

HOSTILE_ROLE = "exercise02_hostile"
HOSTILE_PASSWORD = "p@ss:w/rd#?%41 &=+'\"ü"
ENCODE_HINT = ("percent-encode the user and the password with urllib.parse.quote(value, safe=''); the string"
               " URL.create renders is not safe for every parser (lesson 02)")


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"


def _logins(url: str) -> dict[str, str]:
    """Who each of four parsers logs in as with `url` (or the error it gave)."""

    def with_psycopg():
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT current_user").fetchone()[0]

    def with_psycopg2():
        with closing(psycopg2.connect(url, connect_timeout=5)) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user")
            return cur.fetchone()[0]

    async def with_asyncpg():
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    def with_sqlalchemy():
        engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
        try:
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT current_user").scalar_one()
        finally:
            engine.dispose()

    results = {}
    for parser, attempt in [("psycopg", with_psycopg), ("psycopg2", with_psycopg2),
                            ("asyncpg", lambda: run_async(with_asyncpg())), ("SQLAlchemy", with_sqlalchemy)]:
        try:
            results[parser] = attempt()
        except Exception as exc:  # every parser fails in its own way; report what it said
            results[parser] = _short(exc)
    return results


def build_url(fn) -> None:
    """Exercise 1: fn(user, password, host, port, dbname) -> a URL every driver reads right."""
    url = database_url()
    parts = conninfo_to_dict(url)
    with psycopg.connect(url, autocommit=True) as learner:
        # The course's demo-role function (README, "The learner's rights") takes a SCRAM verifier made here.
        verifier = learner.pgconn.encrypt_password(HOSTILE_PASSWORD.encode(), HOSTILE_ROLE.encode(), b"scram-sha-256")
        learner.execute("SELECT pgcourse.drop_demo_role(%s)", (HOSTILE_ROLE,))
        learner.execute("SELECT pgcourse.create_demo_role(%s, %s)", (HOSTILE_ROLE, verifier.decode()))
        try:
            built = call(1, fn, HOSTILE_ROLE, HOSTILE_PASSWORD, parts["host"], int(parts["port"]), parts["dbname"])
            if not isinstance(built, str):
                raise CheckFailed(f"build_url returned a {type(built).__name__}, not a str.",
                                  "return the URL as a string")
            if not built.startswith(("postgresql://", "postgres://")):
                raise CheckFailed(f"The URL starts with {built.split('://')[0]!r}://; every driver here needs postgresql://",
                                  "build a plain postgresql:// URL; SQLAlchemy's driver name is added where it is used")
            logins = _logins(built)
        finally:
            learner.execute("SELECT pgcourse.drop_demo_role(%s)", (HOSTILE_ROLE,))
    wrong = {parser: who for parser, who in logins.items() if who != HOSTILE_ROLE}
    if wrong:
        said = "; ".join(f"{parser}: {who}" for parser, who in wrong.items())
        raise CheckFailed(f"With a password of {HOSTILE_PASSWORD!r}, your URL failed for {', '.join(wrong)} ({said}).",
                          ENCODE_HINT)
    passed(1, "psycopg, psycopg2, asyncpg and SQLAlchemy all logged in with the hostile password.")


def load_settings(fn) -> None:
    """Exercise 2: settings from the environment; clear failure when missing; the password never printed."""
    url = database_url()
    password = unquote(urlsplit(url).password or "")
    settings = call(2, fn)
    value = getattr(settings, "database_url", None)
    if value is None:
        raise CheckFailed(f"The settings object ({type(settings).__name__}) has no database_url.",
                          "give your settings class a field named database_url")
    value = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    try:
        psycopg.connect(value, connect_timeout=5).close()
    except psycopg.Error as exc:
        raise CheckFailed(f"Connecting with settings.database_url failed: {_short(exc)}",
                          "load the value of DATABASE_URL unchanged") from None
    for shown, text in (("repr(settings)", repr(settings)), ("str(settings)", str(settings))):
        if password and password in text:
            raise CheckFailed(f"{shown} shows the password in plain text (not repeated here).",
                              "declare database_url as pydantic's SecretStr (or mask it in __repr__)")
    saved = os.environ.pop("DATABASE_URL")
    try:
        result = call(2, fn)
    except NotDone:
        raise
    except KeyError as exc:
        raise CheckFailed(f"With DATABASE_URL unset, load_settings() raised a bare KeyError({exc}).",
                          "fail with a message that says what is missing: pydantic-settings' BaseSettings does,"
                          " or raise your own error naming DATABASE_URL") from None
    except Exception as exc:  # any clear error is right: the check reads its message
        if "database_url" not in str(exc).lower():
            raise CheckFailed(f"With DATABASE_URL unset, the error does not name it: {_short(exc)}",
                              "say which variable is missing, so that whoever deploys it knows what to set") from None
    else:
        raise CheckFailed(f"With DATABASE_URL unset, load_settings() returned {type(result).__name__} instead of failing.",
                          "a missing setting must stop the program at start-up, not fail later with None")
    finally:
        os.environ["DATABASE_URL"] = saved
    passed(2, "settings load from the environment, fail clearly without DATABASE_URL, and hide the password.")


def tagged_session(connect_fn, find_fn) -> None:
    """Exercise 3: connect_fn(url, name) tags the session; find_fn(conn, name) finds its pid."""
    url = database_url()
    name = "exercise02: it's \"tagged\" & 100%"
    try:
        conn = call(3, connect_fn, url, name)
    except psycopg.Error as exc:
        raise CheckFailed(f"connect_tagged(url, {name!r}) raised {_short(exc)}",
                          "pass application_name=name to psycopg.connect, so that libpq quotes it for you") from None
    if not isinstance(conn, psycopg.Connection):
        raise CheckFailed(f"connect_tagged returned a {type(conn).__name__}, not a psycopg connection.",
                          "return the connection from psycopg.connect(...)")
    try:
        with psycopg.connect(url, autocommit=True) as observer:
            known_as = observer.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                                        (conn.info.backend_pid,)).fetchone()[0]
            if known_as != name:
                raise CheckFailed(f"The server knows your session as {known_as!r}, not {name!r}.",
                                  "pass application_name=name to psycopg.connect, so that libpq quotes it for you")
            for wanted, expected in [(name, conn.info.backend_pid), ("nobody uses this name", None),
                                     ("' OR '1'='1", None)]:
                try:
                    got = call(3, find_fn, observer, wanted)
                except psycopg.Error as exc:
                    raise CheckFailed(f"find_session(conn, {wanted!r}) raised {_short(exc)}",
                                      "pass the name as a parameter") from None
                if got != expected:
                    raise CheckFailed(f"find_session(conn, {wanted!r}) returned {got!r}; expected {expected!r}.",
                                      "SELECT pid FROM pg_stat_activity WHERE application_name = %s, with the name"
                                      " as a parameter; return None when no session has it")
    finally:
        conn.close()
    passed(3, "the session carried its name, and find_session found it and nothing else.")

