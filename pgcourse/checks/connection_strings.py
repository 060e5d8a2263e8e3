"""Checks for lesson 02 (connection strings): URLs with hostile parts, settings, tagged sessions.

Exercise 1 logs in through four parsers as demo roles with hostile passwords (made and dropped by the
check), and points them at a stand-in server (a socket on this machine that records the user, database
and password each driver sends, then refuses the login) for hostile user and database names and an
IPv6 host. Exercise 2 loads settings from several values of DATABASE_URL, and without it. Exercise 3
opens look-alike sessions of its own while it asks find_session for several names.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _secrets
import socket
import struct
import threading
import time
from contextlib import closing
from urllib.parse import quote, quote_plus

import asyncpg
import psycopg
import psycopg2
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine, make_url

from . import (
    CHECK_APP,
    CheckFailed,
    NotDone,
    check_connect,
    database_url,
    last_query_of,
    learner_env,
    mask,
    new_tag,
    passed,
    process_sessions,
    run,
    run_async,
    secrets_in,
    stop_sessions,
    with_params,
)

CALL_TIME_LIMIT = 20.0
"""Seconds one call of the learner's function may take (each is a few milliseconds when right)."""
HOSTILE_ROLE = "exercise02_hostile"  # the prefix of the demo roles the checks make (a random suffix follows)
HOSTILE_PASSWORD = "p@ss:w/rd#?%41 &=+'\"ü"
SECOND_PASSWORD = "new pass/word+%2F\\ 'x'&é=?"
SETTINGS_PASSWORD = "s3t/tings p@ss%41+:#é"
STAND_IN_USER, STAND_IN_DATABASE, STAND_IN_PASSWORD = "exercise02 o'brien@shop:admin/x#?%41", "shop db/ü?#%2F+", "pw:@/ +%41"
IPV6_USER, IPV6_DATABASE, IPV6_PASSWORD = "app_ipv6", "course", "v6 pass/@:#"
ENCODE_HINT = ("percent-encode the user and the password with urllib.parse.quote(value, safe=''); the string"
               " URL.create renders is not safe for every parser (lesson 02)")
TAG_HINT = ("give the name to libpq as the application_name connection parameter (a keyword argument of"
            " psycopg.connect), which quotes it and sets it for the whole session; never paste it into the string")


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"


def _demo_role(admin: psycopg.Connection, role: str, password: str) -> None:
    """Make a demo role through the course's function, which takes a SCRAM verifier made here."""
    verifier = admin.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    admin.execute("SELECT pgcourse.drop_demo_role(%s)", (role,))
    admin.execute("SELECT pgcourse.create_demo_role(%s, %s)", (role, verifier.decode()))


def _run(exercise: int, fn, *args, secrets=None, **kwargs):
    """`run`, with any secret masked in the verdict too (the shared run shows the first line of what the
    learner's code raised as it is, and that line may quote the URL)."""
    secrets = list(secrets) if secrets is not None else secrets_in()
    try:
        return run(exercise, fn, *args, secrets=secrets, **kwargs)
    except CheckFailed as failed:
        raise CheckFailed(mask(failed.observed, secrets), failed.hint) from None


def _masked(check):
    """Whatever a check says, DATABASE_URL's password is never in it (a parser's error can quote the URL)."""
    import functools

    @functools.wraps(check)
    def checked(*args, **kwargs):
        secrets = secrets_in(database_url())
        try:
            return check(*args, **kwargs)
        except CheckFailed as failed:
            raise CheckFailed(mask(failed.observed, secrets), mask(failed.hint, secrets)) from None

    return checked


def _password_forms(password: str) -> list[str]:
    """The ways a learner's code could print a password: as is, and URL-encoded."""
    return sorted({password, quote(password, safe=""), quote(password), quote_plus(password)})


# --- the four parsers ----------------------------------------------------------------------------

def _with_psycopg(url):
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def _with_psycopg2(url):
    with closing(psycopg2.connect(url, connect_timeout=5)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        return cur.fetchone()[0]


def _with_asyncpg(url):
    async def attempt():
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    return run_async(attempt())


def _with_sqlalchemy(url):
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT current_user").scalar_one()
    finally:
        engine.dispose()


PARSERS = [("psycopg", _with_psycopg), ("psycopg2", _with_psycopg2), ("asyncpg", _with_asyncpg),
           ("SQLAlchemy", _with_sqlalchemy)]


def _logins(url: str) -> dict[str, str]:
    """'logged in as ...' for each of four parsers with `url`, or the error it gave."""
    results = {}
    for parser, attempt in PARSERS:
        try:
            results[parser] = f"logged in as {attempt(url)!r}"
        except Exception as exc:  # every parser fails in its own way; report what it said
            results[parser] = _short(exc)
    return results


class _StandIn:
    """A stand-in server on this machine: it records the user, database and password of every login
    attempt (offering no TLS, asking for the password in clear), then refuses the login."""

    def __init__(self, host: str):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.bind((host, 0))
            self.sock.listen(16)
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.2)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.seen: list[dict] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True, name="exercise 02 stand-in").start()

    def _serve(self):
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._login, args=(client,), daemon=True).start()

    @staticmethod
    def _read(client, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = client.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _login(self, client):
        client.settimeout(5)
        with contextlib.suppress(Exception), client:
            while True:
                size, = struct.unpack("!i", self._read(client, 4))
                body = self._read(client, size - 4)
                if struct.unpack("!i", body[:4])[0] in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                    client.sendall(b"N")
                    continue
                break
            fields = body[4:].split(b"\0")
            sent = {k.decode(): v.decode("utf-8", "replace") for k, v in zip(fields[0::2], fields[1::2], strict=False) if k}
            client.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            self._read(client, 1)
            size, = struct.unpack("!i", self._read(client, 4))
            sent["password"] = self._read(client, size - 4).rstrip(b"\0").decode("utf-8", "replace")
            self.seen.append(sent)
            message = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed (the check's stand-in server)\0\0"
            client.sendall(b"E" + struct.pack("!i", len(message) + 4) + message)

    def close(self):
        self._stop = True
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sent_to(stand_in: _StandIn, url: str) -> dict[str, dict | str]:
    """What each parser sent to the stand-in with `url`: {user, database, password}, or what went wrong."""
    results: dict[str, dict | str] = {}
    for parser, attempt in PARSERS:
        before = len(stand_in.seen)
        try:
            who = attempt(url)
            outcome: dict | str = f"logged in as {who!r} on another server, not the one at {stand_in.host} port {stand_in.port}"
        except Exception as exc:  # noqa: BLE001 - the stand-in refuses every login; what it recorded counts
            outcome = _short(exc)
        new = stand_in.seen[before:]
        results[parser] = new[-1] if new else (
            f"never reached the server at {stand_in.host} port {stand_in.port} ({outcome})")
    return results


def _built(fn, args: tuple, secrets: list[str]) -> str:
    built = _run(1, fn, *args, secrets=secrets, timeout=CALL_TIME_LIMIT,
                hint="run build_url on its own in a cell with these arguments, and read the error")
    if not isinstance(built, str):
        raise CheckFailed(f"build_url returned a {type(built).__name__}, not a str.", "return the URL as a string")
    if not built.startswith(("postgresql://", "postgres://")):
        raise CheckFailed(f"The URL starts with {built.split('://')[0][:30]!r}; every driver here reads postgresql://",
                          "build a plain postgresql:// URL; SQLAlchemy's driver name is added where it is used")
    return built


def _misread(built: str, host: str, port: int) -> str:
    """Which part of the URL libpq reads wrong when a parser never reached the stand-in: port, host, or the rest."""
    try:
        read = conninfo_to_dict(built)
    except psycopg.Error:
        return "host" if ":" in host else "parts"
    if read.get("host") != host:
        return "host"
    return "port" if read.get("port") != str(port) else "parts"


def _stand_in_case(fn, host: str, user: str, password: str, dbname: str, secrets: list[str], hint_for) -> bool:
    """Point the four parsers at a stand-in server on `host`; False when the host cannot be used here."""
    try:
        stand_in = _StandIn(host)
    except OSError:
        return False
    with stand_in:
        built = _built(fn, (user, password, host, stand_in.port, dbname), secrets + _password_forms(password))
        sent = _sent_to(stand_in, built)
    wanted = {"user": user, "database": dbname, "password": password}
    for parser, got in sent.items():
        if isinstance(got, str):
            raise CheckFailed(f"build_url({user!r}, ..., {host!r}, {stand_in.port}, {dbname!r}): with your URL, {parser} {got}.",
                              hint_for(_misread(built, host, stand_in.port)))
        wrong = [key for key in wanted if got.get(key) != wanted[key]]
        if wrong:
            said = ", ".join(f"{key} {got.get(key)!r} instead of {wanted[key]!r}" for key in wrong)
            raise CheckFailed(f"build_url(..., {host!r}, {stand_in.port}, ...): with your URL, {parser} sent {said}.",
                              hint_for(wrong[0]))
    return True


@_masked
def build_url(fn) -> None:
    """Exercise 1: fn(user, password, host, port, dbname) -> a URL every driver reads right."""
    url = database_url()
    parts = conninfo_to_dict(url)
    token = _secrets.token_hex(3)
    roles = [(f"{HOSTILE_ROLE}_{token}", HOSTILE_PASSWORD), (f"exercise02_second_{token}", SECOND_PASSWORD)]
    secrets = secrets_in(url) + [form for _, password in roles for form in _password_forms(password)]
    with check_connect(url, autocommit=True) as admin:
        try:
            for role, password in roles:
                _demo_role(admin, role, password)
            for role, password in roles:
                built = _built(fn, (role, password, parts["host"], int(parts["port"]), parts["dbname"]), secrets)
                logins = _logins(built)
                wrong = {parser: who for parser, who in logins.items() if who != f"logged in as {role!r}"}
                if wrong:
                    said = "; ".join(f"{parser}: {who}" for parser, who in wrong.items())
                    raise CheckFailed(f"With a password of {password!r}, your URL failed for {', '.join(wrong)} ({said}).",
                                      ENCODE_HINT)
        finally:
            for role, _ in roles:
                with contextlib.suppress(psycopg.Error):
                    admin.execute("SELECT pgcourse.drop_demo_role(%s)", (role,))

    def parts_hint(field):
        return {"port": "use the port you are given: the check runs servers on other ports than 5432 or the course's",
                "host": "use the host you are given, and percent-encode the user and the password: an @ or : left in"
                        " them moves where the host seems to start",
                "parts": "percent-encode the user name and the database name the way you encode the password: each"
                        " part of a URL is read back decoded",
                "password": ENCODE_HINT}.get(
            field, f"percent-encode the {'user name' if field == 'user' else 'database name'} the way you encode the"
                   " password: each part of a URL is read back decoded")

    # On 127.0.0.2 where it can (Linux routes all of 127/8 here), so that a host written into the URL shows.
    if not _stand_in_case(fn, "127.0.0.2", STAND_IN_USER, STAND_IN_PASSWORD, STAND_IN_DATABASE, secrets, parts_hint):
        _stand_in_case(fn, "127.0.0.1", STAND_IN_USER, STAND_IN_PASSWORD, STAND_IN_DATABASE, secrets, parts_hint)

    def ipv6_hint(field):
        return ("an IPv6 address has colons of its own: a URL writes it in square brackets, [::1], so that its"
                " colons are not read as the one before the port" if field in ("host", "parts") else parts_hint(field))

    _stand_in_case(fn, "::1", IPV6_USER, IPV6_PASSWORD, IPV6_DATABASE, secrets, ipv6_hint)  # skipped without IPv6
    passed(1, "psycopg, psycopg2, asyncpg and SQLAlchemy all logged in with two hostile passwords, and sent hostile"
              " user and database names unchanged.")


# --- exercise 2 ----------------------------------------------------------------------------------

SECRET_HINT = ("declare database_url as pydantic's SecretStr: it prints as stars everywhere, and you ask for the"
               " value with .get_secret_value() only where you connect")


def _views(settings) -> list[tuple[str, object]]:
    """The ways a program shows its settings, as (what the learner would write, how to get it)."""
    value = getattr(settings, "database_url", None)
    views = [("print(settings)", lambda: str(settings)), ("repr(settings)", lambda: repr(settings)),
             ("f'{settings}'", lambda: f"{settings}"), ("f'{settings!r}'", lambda: f"{settings!r}"),
             ("print(settings.database_url)", lambda: str(value)), ("repr(settings.database_url)", lambda: repr(value)),
             ("f'{settings.database_url}'", lambda: f"{value}")]
    if hasattr(settings, "__dict__"):
        views.append(("print(vars(settings))", lambda: repr(vars(settings))))
    if callable(getattr(settings, "model_dump", None)):
        views.append(("print(settings.model_dump())", lambda: repr(settings.model_dump())))
    import dataclasses

    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        views.append(("print(dataclasses.asdict(settings))", lambda: repr(dataclasses.asdict(settings))))
    return views


def _loaded(fn, env_url: str, secrets: list[str], tag: str):
    """Call load_settings() with DATABASE_URL = env_url; judge what it returned."""
    passwords = [s for s in secrets if "://" not in s]
    shown = mask(env_url, passwords)
    settings = _run(2, fn, secrets=secrets, timeout=CALL_TIME_LIMIT, tag=tag,
                   hint="run load_settings() on its own in a cell, with DATABASE_URL set, and read the error")
    if isinstance(settings, type):
        raise CheckFailed(f"load_settings() returned the class {settings.__name__}, not settings loaded with it.",
                          "return an instance: calling the class is what reads the environment")
    if not hasattr(settings, "database_url"):
        raise CheckFailed(f"The settings object ({type(settings).__name__}) has no database_url.",
                          "give your settings class a field named database_url")
    here = secrets_in(env_url)
    for said, view in _views(settings):
        try:
            text = view()
        except Exception as exc:  # noqa: BLE001 - the learner's __repr__ or __str__ raised
            raise CheckFailed(f"{said} raised {mask(_short(exc), secrets)}",
                              "printing the settings must work: let pydantic write __repr__, or write one that returns"
                              " a str") from None
        if any(secret in text for secret in here):
            raise CheckFailed(f"With DATABASE_URL = {shown}, {said} shows the password in plain text (not repeated here).",
                              SECRET_HINT)
    value = settings.database_url
    reveal = getattr(value, "get_secret_value", None)
    if not callable(reveal):
        raise CheckFailed(f"settings.database_url is a {type(value).__name__}; the check reads the URL with"
                          " settings.database_url.get_secret_value(), as the code that connects would.", SECRET_HINT)
    try:
        got = reveal()
    except Exception as exc:  # noqa: BLE001
        raise CheckFailed(f"settings.database_url.get_secret_value() raised {mask(_short(exc), secrets)}",
                          SECRET_HINT) from None
    if str(got) != env_url:  # a str, or a URL object that keeps the text (pydantic's Secret[PostgresDsn])
        raise CheckFailed(f"With DATABASE_URL = {shown}, settings.database_url.get_secret_value() gave"
                          f" {mask(str(got), passwords)[:200]!r}, not that value.",
                          "load the value of the environment variable DATABASE_URL as it is, at the moment"
                          " load_settings() is called (no default, no URL written in the code)")


def _must_fail(fn, value: str | None, secrets: list[str]) -> None:
    """With DATABASE_URL unset (None) or set to `value`, load_settings() must raise, naming DATABASE_URL."""
    how = "unset" if value is None else f"set to {value!r}"
    saved = os.environ.get("DATABASE_URL")
    if value is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = value
    try:
        result = _run(2, fn, secrets=secrets, timeout=CALL_TIME_LIMIT, allowed=(Exception,),
                     hint="raise an exception that names DATABASE_URL; never end the program from a function")
    except NotDone:
        raise
    except CheckFailed:
        raise
    except Exception as exc:  # any clear error is right: the check reads its message
        text = str(exc).strip()
        if isinstance(exc, KeyError) and text.strip("'\"").lower() == "database_url":
            raise CheckFailed(f"With DATABASE_URL {how}, load_settings() raised a bare KeyError({text}).",
                              "fail with a message that says what is wrong: pydantic-settings' BaseSettings does,"
                              " or raise your own error saying that DATABASE_URL is missing") from None
        if "database_url" not in text.lower():
            raise CheckFailed(f"With DATABASE_URL {how}, the error does not name it: {mask(_short(exc), secrets)}",
                              "say which variable is wrong, so that whoever deploys the program knows what to set"
                              ) from None
    else:
        raise CheckFailed(f"With DATABASE_URL {how}, load_settings() returned {type(result).__name__} instead of failing.",
                          "a missing or empty setting must stop the program at start-up, not fail later with None"
                          + (": an empty value counts as missing (pydantic's Field has min_length)" if value == "" else
                             "; use no default value"))
    finally:
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved


@_masked
def load_settings(fn) -> None:
    """Exercise 2: settings from the environment; clear failure when missing or empty; the password never shown."""
    url = database_url()
    parts = conninfo_to_dict(url)
    role = f"exercise02_settings_{_secrets.token_hex(3)}"
    second = (f"postgresql://{role}:{quote(SETTINGS_PASSWORD, safe='')}@{parts['host']}:{parts['port']}/"
              f"{quote(parts['dbname'], safe='')}?connect_timeout=10"
              # the password a second time, where a mask that replaces only its first occurrence leaves it
              f"&fallback_application_name={quote(SETTINGS_PASSWORD, safe='')}")
    tag = new_tag(2)
    tagged = with_params(url, application_name=tag)
    secrets = sorted(set(secrets_in(url) + secrets_in(tagged) + secrets_in(second)))
    with check_connect(url, autocommit=True) as admin:
        try:
            _demo_role(admin, role, SETTINGS_PASSWORD)
            for env_url in (tagged, second):
                with learner_env(tag, env_url):
                    os.environ["DATABASE_URL"] = env_url
                    _loaded(fn, env_url, secrets, tag)
        finally:
            with contextlib.suppress(psycopg.Error):
                admin.execute("SELECT pgcourse.drop_demo_role(%s)", (role,))
    _must_fail(fn, None, secrets)
    _must_fail(fn, "", secrets)
    passed(2, "settings load DATABASE_URL as it is, fail clearly when it is missing or empty, and never show the password.")


# --- exercise 3 ----------------------------------------------------------------------------------

FIND_HINT = ("compare application_name with the whole name, exactly (=, not LIKE, lower() or a prefix), in the WHERE"
             " clause, and return None when no row comes back")
PASTED_HINT = ("send the name as a query parameter (a placeholder in the SQL, the name in the parameters): pasted into"
               " the SQL, even with its quotes doubled by hand, it is read differently when standard_conforming_strings"
               " is off")
OWN_PID_HINT = ("the connection you are given is only the way to ask the server; return the pid of the session that"
                " carries the name")
TAGGED_PASSWORD = "tag/ged p@ss:%41"


def _tagged_name(conn: psycopg.Connection, observer: psycopg.Connection) -> str | None:
    row = observer.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                           (conn.info.backend_pid,)).fetchone()
    return row[0] if row else None


def _decoys(url: str, names: list[str]) -> list[psycopg.Connection]:
    return [check_connect(url, application_name=name, autocommit=True) for name in names]


def _judge_find(find_fn, handed: psycopg.Connection, observer: psycopg.Connection, wanted: str,
                expected: int | None) -> None:
    """Ask find_session for `wanted` on the connection handed to it; the answer must be `expected`."""
    try:
        got = _run(3, find_fn, handed, wanted, timeout=CALL_TIME_LIMIT, stop_pids=[handed.info.backend_pid], allowed=(psycopg.Error,),
                  hint="run find_session on its own in a cell with a connection and a name, and read the error")
    except psycopg.Error as exc:
        pasted = isinstance(exc, psycopg.errors.SyntaxError)
        raise CheckFailed(f"find_session(conn, {wanted!r}) raised {_short(exc)}",
                          PASTED_HINT if pasted else "run find_session on its own in a cell with a connection and"
                          " this name, and read the error") from None
    if handed.closed:
        raise CheckFailed(f"find_session(conn, {wanted!r}) closed the connection it was given.",
                          "leave the connection open: its caller owns it, and `with conn:` closes it at the end of"
                          " the block (use `with conn.cursor() as cur:` if you want a block)")
    if got is not None and not isinstance(got, int) or isinstance(got, bool):
        raise CheckFailed(f"find_session(conn, {wanted!r}) returned a {type(got).__name__} ({got!r}), not a pid.",
                          "return the pid itself (an int), or None")
    if got == expected:
        return
    sent = last_query_of(handed.info.backend_pid, observer)
    pasted = "$1" not in sent and any(part in sent for part in wanted.split("'") if len(part.strip()) >= 4)
    whose, hint = "", PASTED_HINT if pasted else FIND_HINT
    if got is not None:
        row = observer.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", (got,)).fetchone()
        if got == handed.info.backend_pid:
            whose, hint = " (the pid of the connection you were given)", hint if pasted else OWN_PID_HINT
        else:
            whose = f" (the session called {row[0]!r})" if row else " (no session has it)"
    raise CheckFailed(f"While sessions with look-alike names were open, find_session(conn, {wanted!r}) returned"
                      f" {got!r}{whose}; expected {expected!r}.", hint)


@_masked
def tagged_session(connect_fn, find_fn) -> None:
    """Exercise 3: connect_fn(url, name) tags the session; find_fn(conn, name) finds its pid."""
    url = database_url()
    parts = conninfo_to_dict(url)
    token = _secrets.token_hex(2)
    role = f"exercise02_tagged_{token}"
    role_url = (f"postgresql://{role}:{quote(TAGGED_PASSWORD, safe='')}@{parts['host']}:{parts['port']}/"
                f"{quote(parts['dbname'], safe='')}")
    rounds = [  # (url to connect with, the role it logs in as, the name); the second url names its session already
        (url, parts["user"], f"Exercise02 {token}: it's \"Tagged\" & 100%_done"),
        (with_params(role_url, application_name=f"exercise02 {token} from the url", connect_timeout="10"), role,
         f"Exercise02_{token} a\\' OR true -- 50%"),
    ]
    with check_connect(url, autocommit=True) as admin:
        try:
            _demo_role(admin, role, TAGGED_PASSWORD)
            for conn_url, user, name in rounds:
                _tagged_round(connect_fn, find_fn, url, conn_url, user, name)
        finally:
            with contextlib.suppress(psycopg.Error):
                admin.execute("SELECT pgcourse.drop_demo_role(%s)", (role,))
    passed(3, "each session carried its name from the start, and find_session found it, and nothing else, among"
              " look-alike names.")


def _tagged_round(connect_fn, find_fn, url: str, conn_url: str, user: str, name: str) -> None:
    # Sessions of other connections with look-alike names, open while the learner's code runs.
    like = name.replace("%", "% more")  # what LIKE with the name as its pattern also matches
    decoys = _decoys(url, [name + " (2)", name[:-3], name.swapcase(), like])
    conn = None
    with check_connect(url, autocommit=True) as observer:
        before = {r["pid"] for r in process_sessions(observer) or []}
    try:
        try:
            conn = _run(3, connect_fn, conn_url, name, timeout=CALL_TIME_LIMIT, hint=TAG_HINT,
                        secrets=secrets_in(url) + secrets_in(conn_url))
        except CheckFailed:  # the connection it may have opened (then printed a secret, say) never reached us
            stop_sessions(name)
            raise
        if not isinstance(conn, psycopg.Connection):
            raise CheckFailed(f"connect_tagged returned a {type(conn).__name__}, not a psycopg connection.",
                              "return the connection that psycopg.connect(...) gives you")
        if conn.closed:
            raise CheckFailed(f"connect_tagged(url, {name!r}) returned a closed connection.",
                              "return the connection open: a `with psycopg.connect(...) as conn:` block closes it"
                              " when the function returns from inside it")
        with check_connect(url, autocommit=True) as observer:
            row = observer.execute("SELECT application_name, usename FROM pg_stat_activity WHERE pid = %s",
                                   (conn.info.backend_pid,)).fetchone()
            known_as, logged_in_as = row if row else (None, None)
            if logged_in_as != user:
                raise CheckFailed(f"connect_tagged(url, {name!r}) logged in as {logged_in_as!r}, not as the user of the"
                                  f" url it was given ({user!r}).", "connect with the url you are given, not another one")
            if known_as != name:
                raise CheckFailed(f"connect_tagged(url, {name!r}): the server knows your session as {known_as!r}.",
                                  TAG_HINT)
            try:  # what a connection pool does between two borrowers
                conn.execute("RESET ALL")
                after_reset = _tagged_name(conn, observer)
            except psycopg.Error as exc:
                raise CheckFailed(f"The connection connect_tagged(url, {name!r}) returned cannot run a statement:"
                                  f" {_short(exc)}", "return a connection that is ready to use, outside any failed"
                                  " transaction") from None
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            if after_reset != name:
                raise CheckFailed(f"connect_tagged(url, {name!r}): after RESET ALL (what a connection pool runs"
                                  f" between borrowers) the server knows your session as {after_reset!r}: the name"
                                  " was set after connecting, not when connecting.", TAG_HINT)
            # find_session gets a connection of its own, with standard_conforming_strings off: a quote escaped by
            # hand is then no longer safe, while the name sent as a parameter (or quoted by psycopg) still is.
            with check_connect(url, autocommit=True) as handed:
                handed.execute("SET standard_conforming_strings = off")
                handed.add_notice_handler(lambda diag: None)
                # Names no session has, which a LIKE, a lower(), a prefix match, a query without WHERE, or a
                # quote escaped by hand would still find among the look-alikes.
                for wanted, expected in [(name, conn.info.backend_pid), (name.split(" ")[0] + "%", None),
                                         (name.upper(), None), (name[:14], None), (name + " x", None),
                                         ("' OR '1'='1", None)]:
                    _judge_find(find_fn, handed, observer, wanted, expected)
        conn.close()
        _judge_left_open(url, before | {d.info.backend_pid for d in decoys}, name)
    finally:
        if isinstance(conn, psycopg.Connection):
            conn.close()
        for decoy in decoys:
            decoy.close()


def _judge_left_open(url: str, known: set[int], name: str) -> None:
    """Sessions the learner's code opened besides the one it returned, still open once that one is closed."""
    with check_connect(url, autocommit=True) as observer:
        deadline = time.monotonic() + 3
        while True:
            left = [r for r in process_sessions(observer) or [] if r["pid"] not in known
                    and r["application_name"] != CHECK_APP]
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if left:
            stop_sessions(pids=[r["pid"] for r in left])
            raise CheckFailed(f"connect_tagged(url, {name!r}) and find_session left {len(left)} other session(s) open"
                              " after the check closed the connection it got (the check has now ended them).",
                              "close every connection your functions open besides the one connect_tagged returns:"
                              " open them in a `with` block, or do not open them")
