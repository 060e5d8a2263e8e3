"""Postgres from Python: the course's helper package.

It runs the bundled server, loads the sample data, checks exercises and draws measurements.
It never wraps the drivers a lesson teaches: lessons call psycopg, asyncpg and SQLAlchemy directly.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
