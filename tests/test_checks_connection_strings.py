"""Lesson 02's checks reject plausible wrong answers, and say what they saw."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from pydantic import PostgresDsn, SecretStr
from pydantic_settings import BaseSettings
from sqlalchemy.engine import URL

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import connection_strings as checks

pytestmark = pytest.mark.usefixtures("checks_database")


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def url_quoted(user, password, host, port, dbname):
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(dbname, safe='')}"


def url_pasted(user, password, host, port, dbname):
    return f"postgresql://{user}:{password}@{host}:{port}/{dbname}"


def url_quote_default(user, password, host, port, dbname):  # quote() leaves "/" alone
    return f"postgresql://{quote(user)}:{quote(password)}@{host}:{port}/{dbname}"


def url_quote_plus(user, password, host, port, dbname):  # a space becomes "+", which libpq keeps as "+"
    return f"postgresql://{quote_plus(user)}:{quote_plus(password)}@{host}:{port}/{dbname}"


def url_sqlalchemy_rendered(user, password, host, port, dbname):  # leaves the space as it is
    return URL.create("postgresql", username=user, password=password, host=host, port=port,
                      database=dbname).render_as_string(hide_password=False)


def url_object(user, password, host, port, dbname):
    return URL.create("postgresql", username=user, password=password, host=host, port=port, database=dbname)


def test_build_url_passes_the_solution_and_stops_the_stub(capsys):
    checks.build_url(url_quoted)
    assert "Exercise 1 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.build_url(stub)


@pytest.mark.parametrize("wrong, said", [
    (url_pasted, "your URL failed for psycopg, psycopg2, asyncpg, SQLAlchemy"),
    (url_quote_default, "your URL failed for"),
    (url_quote_plus, "password authentication failed"),
    (url_sqlalchemy_rendered, "failed for psycopg \\(psycopg: ProgrammingError: unexpected spaces"),
    (url_object, "returned a URL, not a str"),
])
def test_build_url_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said):
        checks.build_url(wrong)
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:  # the check cleans up its role
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (checks.HOSTILE_ROLE,)).fetchone()[0] == 0


class GoodSettings(BaseSettings):
    database_url: SecretStr


class LeakySettings(BaseSettings):
    database_url: PostgresDsn


@dataclass
class PlainSettings:
    database_url: str


def settings_get():
    return PlainSettings(os.environ.get("DATABASE_URL"))


def settings_keyerror():
    return PlainSettings(os.environ["DATABASE_URL"])


def settings_vague():
    url = os.environ.get("DATABASE_URL")
    if url is None:
        raise RuntimeError("configuration incomplete")
    return GoodSettings(database_url=url)


class MaskedPlain(PlainSettings):
    def __repr__(self):
        return "MaskedPlain(database_url=***)"


def settings_masked_but_get():
    return MaskedPlain(os.environ.get("DATABASE_URL"))


def test_load_settings_passes_the_solution_and_stops_the_stub(capsys):
    checks.load_settings(GoodSettings)
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.load_settings(stub)
    assert os.environ.get("DATABASE_URL"), "the check puts DATABASE_URL back"


@pytest.mark.parametrize("wrong, said", [
    (LeakySettings, "shows the password in plain text"),
    (settings_get, "shows the password in plain text"),
    (settings_keyerror, "shows the password|bare KeyError"),
    (settings_vague, "the error does not name it"),
    (settings_masked_but_get, "returned MaskedPlain instead of failing"),
])
def test_load_settings_rejects_plausible_wrong_answers(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.load_settings(wrong)
    password = os.environ["DATABASE_URL"].split(":")[2].split("@")[0]
    assert password not in str(caught.value), "a check message must never show the password"
    assert os.environ.get("DATABASE_URL")


def test_a_bare_keyerror_is_not_a_clear_message():
    class MaskedKeyError(MaskedPlain):
        pass

    def settings():
        return MaskedKeyError(os.environ["DATABASE_URL"])

    with pytest.raises(CheckFailed, match="bare KeyError"):
        checks.load_settings(settings)


def connect_tagged(url, name):
    return psycopg.connect(url, application_name=name)


def find_session(conn, name):
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()
    return row[0] if row else None


def connect_pasted(url, name):
    return psycopg.connect(url + "?application_name=" + name)


def connect_set_later(url, name):
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"SET application_name = '{name}'")
    return conn


def connect_untagged(url, name):
    return psycopg.connect(url)


def find_fstring(conn, name):
    row = conn.execute(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{name}'").fetchone()
    return row[0] if row else None


def find_any(conn, name):
    return conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() LIMIT 1").fetchone()[0]


def test_tagged_session_passes_the_solution_and_stops_the_stub(capsys):
    checks.tagged_session(connect_tagged, find_session)
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.tagged_session(stub, find_session)


@pytest.mark.parametrize("functions, said", [
    ((connect_pasted, find_session), "connect_tagged.* raised ProgrammingError: unexpected spaces"),
    ((connect_set_later, find_session), "connect_tagged.* raised SyntaxError"),
    ((connect_untagged, find_session), "The server knows your session as ''"),
    ((connect_tagged, find_fstring), "raised|returned"),
    ((connect_tagged, find_any), "returned"),
])
def test_tagged_session_rejects_plausible_wrong_answers(functions, said):
    with pytest.raises(CheckFailed, match=said):
        checks.tagged_session(*functions)
