"""Lesson 08's checks reject plausible wrong answers, accept the right alternatives, and say what they saw."""

from __future__ import annotations

import contextlib
import os
import time

import psycopg
import pytest
from sqlalchemy import create_engine, func, make_url, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import (
    Session,
    close_all_sessions,
    contains_eager,
    joinedload,
    selectinload,
    sessionmaker,
    subqueryload,
)

from pgcourse.checks import CheckFailed, NotDone, check_connect
from pgcourse.checks import sqlalchemy_sessions as checks
from pgcourse.shop import Customer, Order, OrderItem

pytestmark = pytest.mark.usefixtures("checks_database")


def stub(*args):
    raise NotImplementedError("Exercise 1: write your code here")


def nothing_left(tag_prefix: str = "pgcourse learner") -> list:
    with check_connect(autocommit=True) as conn:
        return conn.execute("SELECT application_name, state FROM pg_stat_activity WHERE application_name LIKE %s"
                            " AND datname = current_database()", (tag_prefix + "%",)).fetchall()


# --- exercise 1: the session dependency ----------------------------------------------------------

def get_session(SessionLocal):
    session = SessionLocal()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session_begin(SessionLocal):
    with SessionLocal.begin() as session:  # commits on success, rolls back on any exception, closes
        yield session


def get_session_minimal(SessionLocal):
    session = SessionLocal()
    try:
        yield session
        session.commit()
    finally:
        session.close()  # an uncommitted session rolls back when it closes


def get_session_with(SessionLocal):
    with SessionLocal() as session:
        yield session
        session.commit()


def get_session_else(SessionLocal):
    session = SessionLocal()
    try:
        yield session
    except Exception:
        session.rollback()
        raise
    else:
        session.commit()
    finally:
        session.close()


def get_session_returns(SessionLocal):
    return SessionLocal()


@contextlib.contextmanager
def get_session_decorated(SessionLocal):
    with SessionLocal.begin() as session:
        yield session


def get_session_no_finally(SessionLocal):
    session = SessionLocal()
    yield session
    session.commit()
    session.close()


def get_session_commit_in_finally(SessionLocal):
    session = SessionLocal()
    try:
        yield session
    finally:
        session.commit()
        session.close()


def get_session_swallows(SessionLocal):
    session = SessionLocal()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
    finally:
        session.close()


def get_session_engine_per_call(SessionLocal):
    engine = create_engine(make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+psycopg"))
    with Session(engine) as session:
        yield session
        session.commit()


def get_session_tutorial(SessionLocal):
    db = SessionLocal()  # the classic tutorial form: the handler is left to commit
    try:
        yield db
    finally:
        db.close()


_shared: list = []


def get_session_shared(SessionLocal):
    if not _shared:
        _shared.append(SessionLocal())
    session = _shared[0]
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def get_session_close_skipped_on_generator_exit(SessionLocal):
    session = SessionLocal()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        session.close()
        raise
    else:
        session.close()


def get_session_commits_when_abandoned(SessionLocal):
    session = SessionLocal()
    failed = False
    try:
        yield session
    except Exception:
        failed = True
        session.rollback()
        raise
    finally:
        if not failed:
            session.commit()  # GeneratorExit is not an Exception: an abandoned request commits
        session.close()


def get_session_replaces_the_error(SessionLocal):
    session = SessionLocal()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        raise RuntimeError("the request failed")  # noqa: B904 - the wrong answer under test
    finally:
        session.close()


def get_session_swallows_commit_errors(SessionLocal):
    session = SessionLocal()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    else:
        try:
            session.commit()
        except DBAPIError:
            session.rollback()  # the client is told the request succeeded
    finally:
        session.close()


def get_session_yields_the_maker(SessionLocal):
    yield SessionLocal


async def get_session_async(SessionLocal):
    with SessionLocal() as session:
        yield session
        session.commit()


def get_session_closes_all(SessionLocal):
    session = SessionLocal()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        close_all_sessions()  # every session of the process: also another request's, still running


_current = None


def get_session_global(SessionLocal):
    global _current
    _current = SessionLocal()  # the latest request's session, when two run at once
    try:
        yield _current
        _current.commit()
    except Exception:
        _current.rollback()
        raise
    finally:
        _current.close()


def get_session_by_hand(SessionLocal):
    with Session(bind=SessionLocal.kw["bind"]) as session:  # the engine, without the sessionmaker's settings
        yield session
        session.commit()


def get_session_prints_url(SessionLocal):
    print("session on", os.environ["DATABASE_URL"])
    yield from get_session(SessionLocal)


@pytest.mark.parametrize("right", [get_session, get_session_begin, get_session_minimal, get_session_with,
                                   get_session_else])
def test_session_dependency_accepts(right, capsys):
    checks.session_dependency(right)
    assert "Exercise 1 passed" in capsys.readouterr().out
    assert nothing_left() == []


def test_session_dependency_stops_the_stub():
    with pytest.raises(NotDone):
        checks.session_dependency(stub)


@pytest.mark.parametrize("wrong, said", [
    (get_session_returns, "returned a Session instead of yielding one"),
    (get_session_decorated, "a context manager, not a generator"),
    (get_session_no_finally, "handler raised ValueError .*still checked out of the pool"),
    (get_session_commit_in_finally, "handler raised ValueError .*its row was committed"),
    (get_session_swallows, "did not reach the caller"),
    (get_session_engine_per_call, "an engine of its own"),
    (get_session_tutorial, "the dependency did not commit"),
    (get_session_shared, "got the same Session"),
    (get_session_close_skipped_on_generator_exit, "abandoned .*still checked out of the pool"),
    (get_session_commits_when_abandoned, "abandoned .*its row was committed"),
    (get_session_replaces_the_error, "raised RuntimeError: the request failed instead of the request's own error"),
    (get_session_swallows_commit_errors, "the commit failed .* did not reach the caller"),
    (get_session_yields_the_maker, "yielded sessionmaker, not a Session"),
    (get_session_async, "is an `async def` function"),
    (get_session_prints_url, "printed or logged a secret"),
    (get_session_closes_all, r"When request \d+ ended \(it succeeded\), your dependency also changed the session of"
                             r" request \d+, which was still running"),
    (get_session_global, r"When request \d+ ended .* still running: that session lost its transaction"),
    (get_session_by_hand, "a Session that SessionLocal did not make"),
])
def test_session_dependency_rejects(wrong, said):
    _shared.clear()
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.session_dependency(wrong)
    assert "Hint:" in str(caught.value)
    assert nothing_left() == [], "the check left sessions behind"


# --- exercise 2: an N+1 removed ------------------------------------------------------------------

def _report(customers):
    return [(c.id, c.name, [(o.id, sum(i.quantity * i.unit_price for i in o.items)) for o in c.orders])
            for c in customers]


def _found(country, since):
    return select(Customer).where(Customer.country == country, Customer.created_at >= since).order_by(Customer.id)


def totals_selectin(session, country, since):
    return _report(session.scalars(_found(country, since).options(
        selectinload(Customer.orders).selectinload(Order.items))))


def totals_joined(session, country, since):
    return _report(session.scalars(_found(country, since).options(
        joinedload(Customer.orders).joinedload(Order.items))).unique())


def totals_subquery(session, country, since):
    return _report(session.scalars(_found(country, since).options(
        subqueryload(Customer.orders).subqueryload(Order.items))))


def totals_in_sql(session, country, since):
    rows = session.execute(
        select(Customer.id, Customer.name, Order.id, func.sum(OrderItem.quantity * OrderItem.unit_price))
        .outerjoin(Order, Order.customer_id == Customer.id).outerjoin(OrderItem, OrderItem.order_id == Order.id)
        .where(Customer.country == country, Customer.created_at >= since)
        .group_by(Customer.id, Customer.name, Order.id).order_by(Customer.id, Order.id))
    report = []
    for cid, name, oid, total in rows:
        if not report or report[-1][0] != cid:
            report.append((cid, name, []))
        if oid is not None:
            report[-1][2].append((oid, total))
    return report


def totals_contains_eager(session, country, since):
    stmt = (select(Customer).outerjoin(Customer.orders).outerjoin(Order.items)
            .where(Customer.country == country, Customer.created_at >= since)
            .order_by(Customer.id, Order.id, OrderItem.line_no)
            .options(contains_eager(Customer.orders).contains_eager(Order.items)))
    return _report(session.scalars(stmt).unique())


def totals_lazy(session, country, since):
    return _report(session.scalars(_found(country, since)))


def totals_half_fixed(session, country, since):
    return _report(session.scalars(_found(country, since).options(selectinload(Customer.orders))))


def totals_every_item(session, country, since):
    by_order: dict = {}
    for item in session.scalars(select(OrderItem)):
        by_order[item.order_id] = by_order.get(item.order_id, 0) + item.quantity * item.unit_price
    customers = session.scalars(_found(country, since).options(selectinload(Customer.orders)))
    return [(c.id, c.name, [(o.id, by_order[o.id]) for o in c.orders]) for c in customers]


def totals_streams_every_item(session, country, since):
    by_order: dict = {}
    for item in session.scalars(select(OrderItem).execution_options(yield_per=5000)):  # a server-side cursor
        by_order[item.order_id] = by_order.get(item.order_id, 0) + item.quantity * item.unit_price
    customers = session.scalars(_found(country, since).options(selectinload(Customer.orders)))
    return [(c.id, c.name, [(o.id, by_order[o.id]) for o in c.orders]) for c in customers]


def totals_filtered_in_python(session, country, since):
    customers = session.scalars(select(Customer).where(Customer.country == country).order_by(Customer.id)
                                .options(selectinload(Customer.orders).selectinload(Order.items)))
    return _report(c for c in customers if c.created_at >= since)


def totals_unordered(session, country, since):
    return _report(session.scalars(_found(country, since).order_by(None).options(
        selectinload(Customer.orders).selectinload(Order.items))))


def totals_by_name(session, country, since):
    return _report(session.scalars(_found(country, since).order_by(None).order_by(Customer.name).options(
        selectinload(Customer.orders).selectinload(Order.items))))


def totals_float(session, country, since):
    return [(cid, name, [(oid, float(total)) for oid, total in orders])
            for cid, name, orders in totals_selectin(session, country, since)]


def totals_inner_join(session, country, since):
    return [row for row in totals_in_sql(session, country, since) if row[2]]  # customers without orders lost


def totals_f_string(session, country, since):
    rows = session.execute(text(
        f"SELECT c.id FROM customers c WHERE c.country = '{country}' AND c.created_at >= '{since.isoformat()}'"
        " ORDER BY c.id")).scalars().all()
    return _report(session.scalars(select(Customer).where(Customer.id.in_(rows)).order_by(Customer.id).options(
        selectinload(Customer.orders).selectinload(Order.items))))


def totals_own_engine(session, country, since):
    engine = create_engine(make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+psycopg"))
    try:
        with Session(engine) as mine:
            return totals_selectin(mine, country, since)
    finally:
        engine.dispose()


_cache: dict = {}


def totals_cached(session, country, since):
    if (country, since) not in _cache:
        _cache[country, since] = totals_selectin(session, country, since)
    return _cache[country, since]


def totals_strictly_after(session, country, since):
    return _report(session.scalars(select(Customer).where(Customer.country == country, Customer.created_at > since)
                                   .order_by(Customer.id).options(selectinload(Customer.orders)
                                                                  .selectinload(Order.items))))


def totals_date_only(session, country, since):
    return _report(session.scalars(select(Customer).where(Customer.country == country,
                                                          func.date(Customer.created_at) >= since.date())
                                   .order_by(Customer.id).options(selectinload(Customer.orders)
                                                                  .selectinload(Order.items))))


def totals_naive(session, country, since):
    return totals_selectin(session, country, since.replace(tzinfo=None))  # read in the session's time zone


def totals_ilike(session, country, since):
    return _report(session.scalars(select(Customer).where(Customer.country.ilike(f"%{country}%"),
                                                          Customer.created_at >= since)
                                   .order_by(Customer.id).options(selectinload(Customer.orders)
                                                                  .selectinload(Order.items))))


_by_day: dict = {}


def totals_cached_by_day(session, country, since):
    key = (country, since.date())
    if key not in _by_day:
        _by_day[key] = totals_selectin(session, country, since)
    return _by_day[key]


def totals_dict(session, country, since):
    return {cid: orders for cid, _name, orders in totals_selectin(session, country, since)}


@pytest.mark.parametrize("right", [totals_selectin, totals_joined, totals_subquery, totals_in_sql,
                                   totals_contains_eager])
def test_order_totals_accepts(right, capsys):
    checks.order_totals(right)
    assert "Exercise 2 passed" in capsys.readouterr().out


def test_order_totals_stops_the_stub():
    with pytest.raises(NotDone):
        checks.order_totals(stub)


@pytest.mark.parametrize("wrong, said", [
    (totals_lazy, r"ran \d+ statements for \d+ customers"),
    (totals_half_fixed, r"ran \d+ statements for \d+ customers"),
    (totals_every_item, r"send [\d,]+ rows to Python, where the customers, their orders and their items come to"),
    (totals_streams_every_item, r"send [\d,]+ rows to Python"),
    (totals_filtered_in_python, r"send [\d,]+ rows to Python"),
    (totals_unordered, "at position 0"),
    (totals_by_name, "at position 0"),
    (totals_float, r"returned order totals of type float \([\d.]+, \.\.\.\), not Decimal"),
    (totals_inner_join, r"order_totals\(session, 'IT', 2025-12-20T00:00:00\+00:00\) returned \d+ customers"),
    (totals_f_string, r"wrote a value into the SQL text: .*WHERE c.country = 'SE' AND c.created_at >= '2025-12-01T00:00:00\+00:00'"),
    (totals_strictly_after, r"order_totals\(session, 'SE', 2025-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\) returned (\d+)"
                            r" customers; at position \d+ it has .* \(\d+ customers"),
    (totals_date_only, r"order_totals\(session, 'SE', 2025-[\d-]+T\d\d:\d\d:\d\d\+00:00\) returned \d+ customers"),
    (totals_naive, r"order_totals\(session, 'DE', 2025-[\d-]+T[\d:]+\+02:00\) returned \d+ customers"),
    (totals_ilike, r"order_totals\(session, 'se', 2025-12-01T00:00:00\+00:00\) returned \d+ customers; at position 0"
                   r" it has .* where nothing was expected"),
    (totals_cached_by_day, r"order_totals\(session, 'SE', 2025-[\d-]+T[\d:]+\+00:00\) ran no statement"),
    (totals_own_engine, "ran no statement through the session it was given"),
    (totals_cached, "ran no statement through the session it was given"),
    (totals_dict, "returned dict, not a list"),
])
def test_order_totals_rejects(wrong, said):
    _by_day.clear()
    if wrong is totals_cached:
        checks.order_totals(totals_cached)  # the first run fills the cache: it passes
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.order_totals(wrong)
    assert "Hint:" in str(caught.value)
    assert nothing_left() == [], "the check left sessions behind"


# --- exercise 3: a retry through SQLAlchemy's wrapped errors ----------------------------------------

RETRYABLE = ("40001", "40P01")


def retry_begin(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) not in RETRYABLE or attempt == attempts:
                raise


def retry_explicit(SessionLocal, work, attempts):
    attempt = 0
    while True:
        attempt += 1
        session = SessionLocal()
        try:
            result = work(session)
            session.commit()
            return result
        except OperationalError as exc:
            session.rollback()
            retryable = isinstance(exc.orig, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected))
            if not retryable or attempt >= attempts:
                raise
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


class GaveUp(Exception):
    pass


def retry_backoff(SessionLocal, work, attempts):
    for attempt in range(attempts):
        try:
            with SessionLocal() as session, session.begin():
                result = work(session)
            return result
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) not in RETRYABLE:
                raise
            if attempt == attempts - 1:
                raise GaveUp(f"gave up after {attempts} attempts") from exc
            time.sleep(0.002 * 2 ** attempt)


def retry_driver_class(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except psycopg.errors.SerializationFailure:  # never raised as such: SQLAlchemy wraps it
            if attempt == attempts:
                raise


def retry_any_operational(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except OperationalError:
            if attempt == attempts:
                raise


def retry_everything(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except Exception:
            if attempt == attempts:
                raise


def retry_by_message(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except Exception as exc:
            if "could not serialize" not in str(exc) or attempt == attempts:
                raise


def retry_40001_only(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate != "40001" or attempt == attempts:
                raise


def retry_commit_outside(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        session = SessionLocal()
        try:
            result = work(session)
        except DBAPIError as exc:
            session.close()
            if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                raise
            continue
        session.commit()  # a failure here is never retried
        session.close()
        return result


def retry_one_too_many(SessionLocal, work, attempts):
    for attempt in range(attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                raise


def retry_forever(SessionLocal, work, attempts):
    while True:
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE:
                raise


def retry_same_session(SessionLocal, work, attempts):
    with SessionLocal() as session:
        for attempt in range(1, attempts + 1):
            try:
                result = work(session)
                session.commit()
                return result
            except DBAPIError as exc:
                session.rollback()
                if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                    raise


def retry_never_commits(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal() as session:
                return work(session)  # closed without a commit: rolled back
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                raise


def retry_returns_none(SessionLocal, work, attempts):
    for _ in range(attempts):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE:
                raise
    return None


def retry_leaks(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        session = SessionLocal()
        try:
            result = work(session)
            session.commit()
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                raise  # the session is neither rolled back nor closed
            session.rollback()
            continue
        session.close()
        return result


def retry_loses_the_error(SessionLocal, work, attempts):
    for _ in range(attempts):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE:
                raise
    raise GaveUp("gave up")


def retry_class_40(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if not str(exc.orig.sqlstate).startswith("40") or attempt == attempts:  # 40002, 40003 too
                raise


def retry_uncapped_backoff(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                raise
            time.sleep(2 ** attempt)


def retry_raises_orig(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                raise exc.orig  # noqa: B904 - the wrong answer under test


def retry_read_committed(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with SessionLocal.begin() as session:
                session.connection(execution_options={"isolation_level": "READ COMMITTED"})
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                raise


def retry_session_by_hand(SessionLocal, work, attempts):
    for attempt in range(1, attempts + 1):
        try:
            with Session(SessionLocal.kw["bind"]) as session, session.begin():  # not SessionLocal's settings
                return work(session)
        except DBAPIError as exc:
            if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                raise


def retry_own_engine(SessionLocal, work, attempts):
    engine = create_engine(make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+psycopg"))
    try:
        return retry_begin(sessionmaker(engine), work, attempts)
    finally:
        engine.dispose()


@pytest.mark.parametrize("right", [retry_begin, retry_explicit, retry_backoff])
def test_with_retry_accepts(right, capsys):
    checks.with_retry(right)
    assert "Exercise 3 passed" in capsys.readouterr().out
    assert nothing_left() == []


def test_with_retry_stops_the_stub():
    with pytest.raises(NotDone):
        checks.with_retry(stub)


@pytest.mark.parametrize("wrong, said", [
    (retry_driver_class, r"two serialization failures .* raised OperationalError.*after 1 call"),
    (retry_any_operational, "lock timeout .* ran the work 5 times; that error is not one to retry"),
    (retry_everything, "unique violation .* ran the work 5 times; that error is not one to retry"),
    (retry_by_message, r"deadlock .* raised OperationalError.*\(SQLSTATE 40P01\)"),
    (retry_40001_only, r"deadlock .* raised OperationalError"),
    (retry_commit_outside, r"at COMMIT .* raised OperationalError.*\(SQLSTATE 40001\)"),
    (retry_one_too_many, "every time, ran the work 5 times; `attempts` is 4"),
    (retry_forever, "ran the work 8 times before the check stopped it"),
    (retry_same_session, "ran the work twice in the same Session"),
    (retry_never_commits, "the work's write was not committed"),
    (retry_returns_none, "returned None instead of raising"),
    (retry_leaks, "left a connection checked out of the pool"),
    (retry_own_engine, "a session that SessionLocal did not make"),
    (retry_loses_the_error, r"raised GaveUp: gave up; the database error \(SQLSTATE 40001\) was lost"),
    (retry_class_40, r"statement completion unknown \(40003.*ran the work 5 times; that error is not one to retry"),
    (retry_uncapped_backoff, r"waited [\d.]+ s between attempts \d and \d; at most 1 s is allowed"),
    (retry_raises_orig, r"every time, raised psycopg's SerializationFailure: .*not SQLAlchemy's error"),
    (retry_read_committed, r"two serialization failures .* ran the work once and returned: no serialization failure"
                           r" or deadlock happened.*Was the isolation level lowered\?"),
    (retry_session_by_hand, "a session that SessionLocal did not make"),
])
def test_with_retry_rejects(wrong, said):
    with pytest.raises(CheckFailed, match=said) as caught:
        checks.with_retry(wrong)
    assert "Hint:" in str(caught.value)
    assert nothing_left() == [], "the check left sessions behind"


def test_with_retry_forces_real_failures(capsys):
    """The 40001s come from a concurrent update and a write skew, the 40P01 from a lock cycle the server detected."""
    seen: list = []

    def recording(SessionLocal, work, attempts):
        for attempt in range(1, attempts + 1):
            try:
                with SessionLocal.begin() as session:
                    return work(session)
            except DBAPIError as exc:
                seen.append(str(exc.orig))
                if exc.orig.sqlstate not in RETRYABLE or attempt == attempts:
                    raise

    checks.with_retry(recording)
    assert "Exercise 3 passed" in capsys.readouterr().out
    assert any("could not serialize access due to concurrent update" in s for s in seen)
    assert any("could not serialize access due to read/write dependencies" in s for s in seen)
    assert any(s.startswith("deadlock detected") and "waits for ShareLock" in s for s in seen)
    assert any("duplicate key" in s for s in seen) and any("lock timeout" in s for s in seen)


@pytest.mark.parametrize("check, answer", [(checks.session_dependency, get_session_no_finally),
                                           (checks.order_totals, totals_unordered),
                                           (checks.with_retry, retry_leaks)])
def test_a_failed_check_leaves_no_table_index_or_schema_behind(check, answer):
    with pytest.raises(CheckFailed):
        check(answer)
    with check_connect(autocommit=True) as conn:
        left = conn.execute("SELECT to_regnamespace('exercise08'), to_regclass('exercise08_customers_created_at')"
                            ).fetchone()
    assert left == (None, None)
    assert nothing_left() == []
