"""The check each lesson's setup cell runs: is DATABASE_URL set, and does its server answer?"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .errors import DatabaseUnavailable


def check_database(url: str | None, timeout: int = 5) -> str:
    """Connect once with `url`; return a one-line summary, or raise one sentence saying what to run."""
    if not url:
        raise DatabaseUnavailable(
            "DATABASE_URL is not set in this kernel's environment.",
            "start JupyterLab with `make lab` from the course folder (it sets DATABASE_URL), then open this notebook there")
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUnavailable(f"DATABASE_URL is not a valid connection string ({exc}).",
                                  "run `make db-start`: it writes a correct DATABASE_URL to .env") from None
    where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
    user, dbname = params.get("user", "?"), params.get("dbname", "?")
    try:
        with psycopg.connect(url, connect_timeout=timeout) as conn:
            version = conn.info.server_version
    except psycopg.OperationalError as exc:
        text = str(exc)
        if "password authentication failed" in text:
            raise DatabaseUnavailable(
                f"The server at {where} rejected the password for {user!r} in DATABASE_URL.",
                "run `make db-start` (it repairs .env), then stop JupyterLab and start it again with `make lab`") from None
        if f'database "{dbname}" does not exist' in text:
            raise DatabaseUnavailable(f"The server at {where} has no database {dbname!r}.",
                                      "run `make db-reset` to recreate it") from None
        if "Connection refused" in text or "timeout expired" in text or "No such file" in text:
            raise DatabaseUnavailable(f"Nothing answers at {where}, the server in DATABASE_URL.",
                                      "run `make db-start` in a terminal, then run this cell again") from None
        raise DatabaseUnavailable(f"Could not connect with DATABASE_URL: {text.strip()}",
                                  "run `make db-status` to see what the server says") from None
    return f"Connected to PostgreSQL {version // 10000} as {user}."
