"""Lesson 02's checks reject plausible wrong answers, accept the right alternatives, and say what they saw."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import sys
import time
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import Field, PostgresDsn, Secret, SecretStr
from pydantic_settings import BaseSettings
from sqlalchemy.engine import URL

from pgcourse.checks import CheckFailed, NotDone
from pgcourse.checks import connection_strings as checks

pytestmark = pytest.mark.usefixtures("checks_database")


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def password_of_database_url():
    return urlsplit(os.environ["DATABASE_URL"]).password


TOKENS: list[str] = []


@pytest.fixture(autouse=True)
def recorded_tokens(monkeypatch):
    """The random parts of the demo roles' names the checks make in this test (roles are shared by the
    whole server, and other runs of these checks may have theirs at the same time)."""
    import secrets

    class Recorder:
        @staticmethod
        def token_hex(n):
            TOKENS.append(secrets.token_hex(n))
            return TOKENS[-1]

    TOKENS.clear()
    monkeypatch.setattr(checks, "_secrets", Recorder)
    yield TOKENS


def no_demo_roles_left():
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        left = [name for (name,) in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'exercise02%'")
                if any(token in name for token in TOKENS)]
    assert TOKENS and left == [], "the check drops the demo roles it made"


# --- exercise 1 ----------------------------------------------------------------------------------

def in_brackets(host):
    return f"[{host}]" if ":" in host else host


def url_quoted(user, password, host, port, dbname):  # the solution
    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{in_brackets(host)}:{port}/"
            f"{quote(dbname, safe='')}")


def url_postgres_scheme(user, password, host, port, dbname):
    return url_quoted(user, password, host, port, dbname).replace("postgresql://", "postgres://", 1)


def url_every_byte(user, password, host, port, dbname):  # every byte percent-encoded, letters too
    def enc(text):
        return "".join(f"%{b:02x}" for b in text.encode())
    return f"postgresql://{enc(user)}:{enc(password)}@{in_brackets(host)}:{port}/{enc(dbname)}"


def url_urlunsplit_ipaddress(user, password, host, port, dbname):
    try:
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        shown = host
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{shown}:{port}"
    return urlunsplit(("postgresql", netloc, "/" + quote(dbname, safe=""), "", ""))


def url_pasted(user, password, host, port, dbname):
    return f"postgresql://{user}:{password}@{host}:{port}/{dbname}"


def url_quote_default(user, password, host, port, dbname):  # quote() leaves "/" alone
    return f"postgresql://{quote(user)}:{quote(password)}@{in_brackets(host)}:{port}/{quote(dbname)}"


def url_quote_plus(user, password, host, port, dbname):  # a space becomes "+", which libpq keeps as "+"
    return f"postgresql://{quote_plus(user)}:{quote_plus(password)}@{in_brackets(host)}:{port}/{quote_plus(dbname)}"


def url_sqlalchemy_rendered(user, password, host, port, dbname):  # leaves the space as it is
    return URL.create("postgresql", username=user, password=password, host=host, port=port,
                      database=dbname).render_as_string(hide_password=False)


def url_object(user, password, host, port, dbname):
    return URL.create("postgresql", username=user, password=password, host=host, port=port, database=dbname)


def url_password_only(user, password, host, port, dbname):  # the user and database pasted in
    return f"postgresql://{user}:{quote(password, safe='')}@{in_brackets(host)}:{port}/{dbname}"


def url_database_pasted(user, password, host, port, dbname):
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{in_brackets(host)}:{port}/{dbname}"


def url_no_brackets(user, password, host, port, dbname):
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(dbname, safe='')}"


def url_quoted_host(user, password, host, port, dbname):  # %3A%3A1 is not an IPv6 host for every parser
    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{quote(host, safe='')}:{port}/"
            f"{quote(dbname, safe='')}")


def url_default_port(user, password, host, port, dbname):
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{in_brackets(host)}:54329/{quote(dbname, safe='')}"


def url_fixed_host(user, password, host, port, dbname):
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}/{quote(dbname, safe='')}"


def url_the_course_url_mangled(user, password, host, port, dbname):  # a parser's error quotes this URL
    return os.environ["DATABASE_URL"] + "?x y"


def url_printed(user, password, host, port, dbname):
    url = url_quoted(user, password, host, port, dbname)
    print("built", url)
    return url


def url_logged_password(user, password, host, port, dbname):
    logging.getLogger("app.config").debug("password for %s is %s", user, password)
    return url_quoted(user, password, host, port, dbname)


def url_exits(user, password, host, port, dbname):
    sys.exit("cannot build")


def url_keyvalue(user, password, host, port, dbname):
    return make_conninfo(user=user, password=password, host=host, port=port, dbname=dbname)


def test_build_url_passes_the_solution_and_stops_the_stub(capsys):
    checks.build_url(url_quoted)
    assert "Exercise 1 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.build_url(stub)
    no_demo_roles_left()


@pytest.mark.parametrize("right", [url_postgres_scheme, url_every_byte, url_urlunsplit_ipaddress])
def test_build_url_accepts_right_alternatives(right, capsys):
    checks.build_url(right)
    assert "Exercise 1 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, said", [
    (url_pasted, "your URL failed for psycopg, psycopg2, asyncpg, SQLAlchemy"),
    (url_quote_default, "your URL failed for"),
    (url_quote_plus, "password authentication failed"),
    (url_sqlalchemy_rendered, "failed for psycopg \\(psycopg: ProgrammingError: unexpected spaces"),
    (url_object, "returned a URL, not a str"),
    (url_password_only, "sent user|never reached"),
    (url_database_pasted, "sent database|never reached"),
    (url_no_brackets, "'::1'.*never reached"),
    (url_quoted_host, "'::1'.*never reached"),
    # Port 54329 is the course server's usual port: where another checkout's server holds it, the wrong
    # port reaches that server, and the URL fails there instead of reaching nothing.
    (url_default_port, "(?s)never reached.*Hint: use the port you are given|failed for"),
    (url_fixed_host, "never reached"),
    (url_the_course_url_mangled, "failed for"),
    (url_printed, "printed or logged a secret"),
    (url_logged_password, "printed or logged a secret"),
    (url_exits, "tried to end the program"),
    (url_keyvalue, "The URL starts with"),
])
def test_build_url_rejects_plausible_wrong_answers(wrong, said, capsys):
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.build_url(wrong)
    assert "Hint:" in str(caught.value)
    assert password_of_database_url() not in str(caught.value) + capsys.readouterr().out
    no_demo_roles_left()


def test_build_url_hints_at_the_part_that_went_wrong():
    with pytest.raises(CheckFailed, match="Hint: percent-encode the user name"):
        checks.build_url(url_password_only)
    with pytest.raises(CheckFailed, match="Hint: percent-encode the (user name and the )?database name"):
        checks.build_url(url_database_pasted)
    with pytest.raises(CheckFailed, match="Hint: an IPv6 address"):
        checks.build_url(url_no_brackets)


# --- exercise 2 ----------------------------------------------------------------------------------

class GoodSettings(BaseSettings):  # the solution
    database_url: SecretStr = Field(min_length=1)


class LeakySettings(BaseSettings):
    database_url: PostgresDsn


class EmptyAllowed(BaseSettings):  # the lesson's class: an empty DATABASE_URL passes
    database_url: SecretStr


@dataclass
class PlainSettings:
    database_url: str


@dataclass
class SecretDataclass:
    database_url: SecretStr


class ValidatedSecret(BaseSettings):  # validated as a URL, and hidden
    database_url: Secret[PostgresDsn]


def settings_that_connect():  # a right alternative: tries the URL at start-up
    settings = GoodSettings()
    with psycopg.connect(settings.database_url.get_secret_value(), connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    return settings


def find_own_role_only(conn, name):  # the session may belong to another role
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND usename = current_user",
                       (name,)).fetchone()
    return row[0] if row else None


def settings_logs_masked():  # a right alternative: logs what it loaded, masked
    settings = GoodSettings()
    logging.getLogger("app").info("loaded %s / %r / %s", settings, settings, settings.database_url)
    print(settings)
    return settings


def settings_explicit():  # a right alternative: read the variable yourself, fail clearly, wrap it
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is not set (or empty): set it to the database's URL")
    return SecretDataclass(SecretStr(url))


def settings_own_error_type():
    class ConfigError(Exception):
        pass

    try:
        return GoodSettings()
    except Exception as exc:
        raise ConfigError("DATABASE_URL: missing or empty") from exc


def settings_class():
    return GoodSettings


def settings_get():
    return PlainSettings(os.environ.get("DATABASE_URL"))


def settings_keyerror():
    return PlainSettings(os.environ["DATABASE_URL"])


def settings_vague():
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("configuration incomplete")
    return SecretDataclass(SecretStr(url))


class MaskedPlain(PlainSettings):
    def __repr__(self):
        return "MaskedPlain(database_url=***)"

    __str__ = __repr__


def settings_masked_repr_plain_field():  # repr masked, but the field is a plain str (vars(), the field itself)
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is missing")
    return MaskedPlain(url)


class StrOnlyMasked:
    def __init__(self, url):
        self.database_url = SecretStr(url)
        self._url = url

    def __str__(self):
        return "Settings(***)"

    def __repr__(self):
        return f"Settings(database_url={self._url!r})"


def settings_str_masked_repr_not():
    return StrOnlyMasked(GoodSettings().database_url.get_secret_value())


class DecodedMask:
    """Masks the password as decoded, but the URL holds it percent-encoded."""

    def __init__(self, url):
        self.database_url = SecretStr(url)
        self._url = url

    def __repr__(self):
        from urllib.parse import unquote
        return f"Settings({self._url.replace(unquote(urlsplit(self._url).password or 'x'), '***')})"

    __str__ = __repr__


class FirstOnly:
    """Masks the password where it first appears in the URL, and only there."""

    __slots__ = ("_url",)

    def __init__(self, url):
        self._url = url

    @property
    def database_url(self):
        return self

    def get_secret_value(self):
        return self._url

    def __repr__(self):
        return self._url.replace(urlsplit(self._url).password or "x", "***", 1)

    __str__ = __repr__


def settings_masks_first_occurrence():
    return FirstOnly(GoodSettings().database_url.get_secret_value())


def settings_own_secret_type():  # a right alternative: a class of its own that prints masked
    class Hidden:
        def __init__(self, value):
            self._value = value

        def get_secret_value(self):
            return self._value

        def __repr__(self):
            return "Hidden('***')"

    class Settings:
        def __init__(self):
            value = os.environ.get("DATABASE_URL", "")
            if not value:
                raise LookupError("set DATABASE_URL to the database's URL")
            self.database_url = Hidden(value)

        def __repr__(self):
            return f"Settings(database_url={self.database_url!r})"

    return Settings()


def settings_masks_decoded_only():
    return DecodedMask(GoodSettings().database_url.get_secret_value())


def settings_printed():
    settings = GoodSettings()
    print("loaded", settings.database_url.get_secret_value())
    return settings


def settings_logged():
    settings = GoodSettings()
    logging.getLogger("app").info("DATABASE_URL=%s", os.environ["DATABASE_URL"])
    return settings


CONSTANT = {}


def settings_cached():  # reads the environment once, then always returns the first value
    if "s" not in CONSTANT:
        CONSTANT["s"] = GoodSettings()
    return CONSTANT["s"]


def settings_default():
    return SecretDataclass(SecretStr(os.environ.get("DATABASE_URL") or "postgresql://localhost/course"))


def settings_none_on_error():
    try:
        return GoodSettings()
    except Exception:
        return None


def settings_exits():
    try:
        return GoodSettings()
    except Exception:
        sys.exit("DATABASE_URL is missing")


def settings_stripped_query():  # drops the ?application_name=... of the URL
    settings = GoodSettings()
    return SecretDataclass(SecretStr(settings.database_url.get_secret_value().split("?")[0]))


def test_load_settings_passes_the_solution_and_stops_the_stub(capsys):
    checks.load_settings(GoodSettings)
    assert "Exercise 2 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.load_settings(stub)
    assert os.environ.get("DATABASE_URL"), "the check puts DATABASE_URL back"
    no_demo_roles_left()


@pytest.mark.parametrize("right", [settings_explicit, settings_own_error_type, ValidatedSecret, settings_that_connect, settings_logs_masked,
                                   settings_own_secret_type])
def test_load_settings_accepts_right_alternatives(right, capsys):
    checks.load_settings(right)
    assert "Exercise 2 passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, said", [
    (LeakySettings, "shows the password in plain text"),
    (settings_get, "shows the password in plain text"),
    (settings_keyerror, "shows the password"),
    (settings_vague, "the error does not name it"),
    (settings_masked_repr_plain_field, r"print\(settings.database_url\) shows the password"),
    (settings_str_masked_repr_not, r"repr\(settings\) shows the password"),
    (settings_masks_decoded_only, "shows the password"),
    (settings_masks_first_occurrence, "(?s)fallback_application_name.*shows the password"),
    (settings_printed, "printed or logged a secret"),
    (settings_logged, "printed or logged a secret"),
    (settings_default, "unset, load_settings\\(\\) returned SecretDataclass instead of failing"),
    (settings_none_on_error, "returned NoneType instead of failing"),
    (settings_exits, "tried to end the program"),
    (settings_class, "returned the class GoodSettings"),
    (EmptyAllowed, "set to '', load_settings\\(\\) returned EmptyAllowed instead of failing"),
    (settings_stripped_query, "not that value"),
])
def test_load_settings_rejects_plausible_wrong_answers(wrong, said, capsys):
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.load_settings(wrong)
    assert "Hint:" in str(caught.value)
    assert password_of_database_url() not in str(caught.value) + capsys.readouterr().out, \
        "a check message must never show the password"
    assert os.environ.get("DATABASE_URL")
    no_demo_roles_left()


def settings_raise_with_url():
    raise ValueError(f"cannot use {os.environ.get('DATABASE_URL')}")


def test_an_error_that_quotes_the_url_is_masked_in_the_verdict():
    with pytest.raises(CheckFailed, match=r"raised ValueError: cannot use \*+") as caught:
        checks.load_settings(settings_raise_with_url)
    assert password_of_database_url() not in str(caught.value)


def test_a_constant_read_once_fails():
    CONSTANT.clear()
    with pytest.raises(CheckFailed, match="not that value"):
        checks.load_settings(settings_cached)


def test_a_bare_keyerror_is_not_a_clear_message():
    def settings():
        return SecretDataclass(SecretStr(os.environ["DATABASE_URL"]))

    with pytest.raises(CheckFailed, match="bare KeyError"):
        checks.load_settings(settings)


# --- exercise 3 ----------------------------------------------------------------------------------

def connect_tagged(url, name):  # the solution
    return psycopg.connect(url, application_name=name)


def find_session(conn, name):  # the solution
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()
    return row[0] if row else None


def connect_make_conninfo(url, name):
    return psycopg.connect(make_conninfo(url, application_name=name))


def connect_url_param(url, name):  # appending to the URL, with the name encoded and the right separator
    return psycopg.connect(url + ("&" if "?" in url else "?") + "application_name=" + quote(name, safe=""))


def connect_options(url, name):  # a startup option: the URL's own application_name wins over it
    escaped = name.replace("\\", "\\\\").replace(" ", "\\ ")
    return psycopg.connect(url, options=f"-c application_name={escaped}")


def find_client_cursor(conn, name):  # client-side binding by psycopg: safe
    row = psycopg.ClientCursor(conn).execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()
    return row[0] if row else None


def find_sql_literal(conn, name):
    query = sql.SQL("SELECT pid FROM pg_stat_activity WHERE application_name = {}").format(sql.Literal(name))
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def find_newest_in_database(conn, name):
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()"
                       " AND backend_type = 'client backend' ORDER BY backend_start DESC LIMIT 1", (name,)).fetchone()
    return row[0] if row else None


def find_fetchall(conn, name):
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,))
        rows = cur.fetchall()
    return rows[0][0] if rows else None


def connect_pasted(url, name):
    return psycopg.connect(url + "?application_name=" + name)


def connect_pasted_keyvalue(url, name):
    return psycopg.connect(f"{url} application_name='{name}'")


def connect_url_param_always_question(url, name):  # breaks on a URL that already has parameters
    return psycopg.connect(url + "?application_name=" + quote(name, safe=""))


def connect_set_later(url, name):
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"SET application_name = '{name}'")
    return conn


def connect_set_config(url, name):  # right name, but set after connecting: RESET ALL forgets it
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT set_config('application_name', %s, false)", (name,))
    return conn


def connect_pgappname(url, name):  # the URL's application_name wins over PGAPPNAME
    os.environ["PGAPPNAME"] = name
    return psycopg.connect(url)


def connect_from_environment(url, name):  # the right name, but not the url it was given
    return psycopg.connect(os.environ["DATABASE_URL"], application_name=name)


def connect_untagged(url, name):
    return psycopg.connect(url)


def connect_in_with_block(url, name):
    with psycopg.connect(url, application_name=name) as conn:
        return conn


def connect_in_failed_transaction(url, name):
    conn = psycopg.connect(url, application_name=name)
    try:
        conn.execute("SELECT 1/0")
    except psycopg.errors.DivisionByZero:
        pass
    return conn


def find_closes_the_connection(conn, name):
    with conn:
        return find_session(conn, name)


def connect_printing_url(url, name):
    print("connecting to", url)
    return psycopg.connect(url, application_name=name)


def connect_exits(url, name):
    raise SystemExit(1)


def connect_with_a_probe(url, name):  # "test the URL first", and the probe is never closed
    probe = psycopg.connect(url)
    probe.execute("SELECT 1")
    connect_with_a_probe.kept = probe
    return psycopg.connect(url, application_name=name)


def find_with_a_connection_of_its_own(conn, name):  # opens another connection and keeps it
    extra = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    find_with_a_connection_of_its_own.kept = extra
    return find_session(extra, name)


def find_fstring(conn, name):
    row = conn.execute(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{name}'").fetchone()
    return row[0] if row else None


def find_hand_escaped(conn, name):
    escaped = name.replace("'", "''")
    row = conn.execute(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{escaped}'").fetchone()
    return row[0] if row else None


def find_like(conn, name):
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (name,)).fetchone()
    return row[0] if row else None


def find_ilike(conn, name):
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE lower(application_name) = lower(%s)", (name,)).fetchone()
    return row[0] if row else None


def find_prefix(conn, name):
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE starts_with(application_name, %s)", (name,)).fetchone()
    return row[0] if row else None


def find_any(conn, name):
    return conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() LIMIT 1").fetchone()[0]


def find_own_pid(conn, name):
    return conn.info.backend_pid


def find_row(conn, name):
    return conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()


def find_in_python(conn, name):  # right: every session fetched, filtered in Python (not forbidden here)
    for pid, app in conn.execute("SELECT pid, application_name FROM pg_stat_activity"):
        if app == name:
            return pid
    return None


def find_raises(conn, name):
    raise LookupError(name)


def test_tagged_session_passes_the_solution_and_stops_the_stub(capsys):
    checks.tagged_session(connect_tagged, find_session)
    assert "Exercise 3 passed" in capsys.readouterr().out
    with pytest.raises(NotDone):
        checks.tagged_session(stub, find_session)
    with pytest.raises(NotDone):
        checks.tagged_session(connect_tagged, stub)


@pytest.mark.parametrize("functions", [
    (connect_make_conninfo, find_client_cursor),
    (connect_url_param, find_sql_literal),
    (connect_tagged, find_newest_in_database),
    (connect_tagged, find_fetchall),
    (connect_tagged, find_in_python),
])
def test_tagged_session_accepts_right_alternatives(functions, capsys):
    checks.tagged_session(*functions)
    assert "Exercise 3 passed" in capsys.readouterr().out


@pytest.mark.parametrize("functions, said", [
    ((connect_pasted, find_session), "raised ProgrammingError: unexpected spaces"),
    ((connect_pasted_keyvalue, find_session), "connect_pasted_keyvalue.* raised"),
    ((connect_url_param_always_question, find_session), "raised|knows your session as"),
    ((connect_set_later, find_session), "connect_set_later.* raised SyntaxError"),
    ((connect_set_config, find_session), "after RESET ALL"),
    ((connect_options, find_session), "knows your session as 'exercise02 .* from the url'"),
    ((connect_pgappname, find_session), "knows your session as 'exercise02 .* from the url'"),
    ((connect_untagged, find_session), "knows your session as ''"),
    ((connect_from_environment, find_session), "logged in as 'learner', not as the user of the url"),
    ((connect_exits, find_session), "tried to end the program"),
    ((connect_with_a_probe, find_session), "left 1 other session"),
    ((connect_tagged, find_with_a_connection_of_its_own), "left 1 other session"),
    ((connect_printing_url, find_session), "printed or logged a secret"),
    ((connect_in_with_block, find_session), "returned a closed connection"),
    ((connect_in_failed_transaction, find_session), "cannot run a statement: InFailedSqlTransaction"),
    ((connect_tagged, find_closes_the_connection), "closed the connection it was given"),
    ((connect_tagged, find_fstring), "(?s)raised SyntaxError.*Hint: send the name as a query parameter"),
    ((connect_tagged, find_hand_escaped), "(?s)returned.*Hint: send the name as a query parameter"),
    ((connect_tagged, find_like), "(?s)returned.*Hint: compare application_name with the whole name"),
    ((connect_tagged, find_ilike), "returned"),
    ((connect_tagged, find_prefix), "returned"),
    ((connect_tagged, find_any), "returned"),
    ((connect_tagged, find_own_pid), "(?s)the pid of the connection you were given.*Hint: the connection you are"),
    ((connect_tagged, find_row), "returned a Row|returned a tuple"),
    ((connect_tagged, find_raises), "raised LookupError"),
    ((connect_tagged, find_own_role_only), "returned None"),
])
def test_tagged_session_rejects_plausible_wrong_answers(functions, said):
    saved = os.environ.get("PGAPPNAME")
    try:
        with pytest.raises(CheckFailed, match=said) as caught:
            checks.tagged_session(*functions)
    finally:
        if saved is None:
            os.environ.pop("PGAPPNAME", None)
        else:
            os.environ["PGAPPNAME"] = saved
    assert "Hint:" in str(caught.value)
    gc.collect()  # a connection the learner's code lost (the check never got it) closes when collected
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:  # the check's and the learner's sessions are closed
        for _ in range(50):
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name ILIKE 'exercise02%'"
                                " AND datname = current_database()").fetchone()[0]
            if not left:
                break
            time.sleep(0.1)
        assert left == 0


# --- time limits: a hang gets a verdict, never a frozen cell ---------------------------------------

def url_forever(user, password, host, port, dbname):
    while True:
        time.sleep(0.05)


def settings_forever():
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        conn.execute("SELECT pg_sleep(600)")


def find_forever(conn, name):
    conn.execute("SELECT pg_sleep(600)")


@pytest.mark.parametrize("check, functions", [
    (checks.build_url, (url_forever,)),
    (checks.load_settings, (settings_forever,)),
    (checks.tagged_session, (connect_tagged, find_forever)),
])
def test_a_function_that_never_returns_gets_a_verdict(check, functions, monkeypatch):
    monkeypatch.setattr(checks, "CALL_TIME_LIMIT", 2.0)
    start = time.monotonic()
    with pytest.raises(CheckFailed, match="did not finish within 2 s") as caught:
        check(*functions)
    assert "Hint:" in str(caught.value)
    assert time.monotonic() - start < 30
    no_demo_roles_left()
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:  # the sleeping query was cancelled
        for _ in range(100):
            sleeping = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'"
                                    " AND state = 'active' AND datname = current_database()").fetchone()[0]
            if not sleeping:
                break
            time.sleep(0.1)
        assert sleeping == 0
