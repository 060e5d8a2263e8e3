"""The network lab: the delay it adds is the delay measured; a blackhole leaves the client waiting;
a reset breaks connections; keepalives see a packet-level blackhole; closing leaves nothing behind.
The TLS proxy: each negotiation path with real connections (SSLRequest, direct TLS with and without
ALPN, GSSENCRequest declined, plaintext refused or forwarded, downgrade), what it records, a cancel
request through it, and close() ending clients that stay silent."""

from __future__ import annotations

import os
import statistics
import threading
import time

import psycopg
import pytest

from pgcourse.netlab import NetLab, _route, packet_drop_supported


@pytest.fixture(scope="module")
def url(checks_database) -> str:
    return os.environ["DATABASE_URL"]


def _round_trip(conn: psycopg.Connection, n: int = 7) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.execute("SELECT 1")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _server_sessions(url: str, app: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()[0]


def test_route_keeps_everything_but_host_and_port():
    assert _route("postgresql://u:p%40ss@db.example:5432/shop?sslmode=require", "127.0.0.1", 7000) == (
        "postgresql://u:p%40ss@127.0.0.1:7000/shop?sslmode=require"
    )
    assert _route("postgresql:///shop", "127.0.0.1", 7000) == "postgresql://127.0.0.1:7000/shop"
    routed = psycopg.conninfo.conninfo_to_dict(_route("host=db port=5432 dbname=shop user=u", "127.0.0.1", 7000))
    assert routed == {"host": "127.0.0.1", "port": "7000", "dbname": "shop", "user": "u"}


@pytest.mark.parametrize("latency_ms", [10, 25])
def test_a_round_trip_grows_by_twice_the_latency(url, latency_ms):
    with NetLab(url) as lab, psycopg.connect(lab.url, autocommit=True) as conn:
        base = _round_trip(conn)
        lab.latency_ms = latency_ms
        added = _round_trip(conn) - base
    expected = 2 * latency_ms / 1000
    assert 0.9 * expected <= added <= expected + 0.02, (
        f"added {added * 1000:.1f} ms, expected about {expected * 1000:.0f} ms"
    )


def test_a_connect_pays_several_round_trips(url):
    with NetLab(url, latency_ms=10) as lab:
        start = time.perf_counter()
        psycopg.connect(lab.url).close()
        elapsed = time.perf_counter() - start
    # TCP handshake + at least the startup and the password exchange: 3 round trips or more
    assert elapsed >= 3 * 0.020


def test_a_blackhole_leaves_the_client_waiting_until_healed(url):
    with NetLab(url) as lab, psycopg.connect(lab.url, autocommit=True) as conn:
        result: list = []
        thread = threading.Thread(target=lambda: result.append(conn.execute("SELECT 42").fetchone()[0]))
        with lab.blackhole():
            assert lab.blackholed
            thread.start()
            thread.join(1.5)
            assert thread.is_alive() and result == [], "the query finished through a blackhole"
        thread.join(5)
        assert result == [42], "the held query did not finish after heal()"
        assert not lab.blackholed


@pytest.mark.parametrize("packet_level", [False, None])
def test_connect_timeout_ends_a_connect_into_a_blackhole(url, packet_level):
    with NetLab(url, packet_level=packet_level) as lab, lab.blackhole():
        start = time.perf_counter()
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            psycopg.connect(lab.url, connect_timeout=2)
        assert 1.5 <= time.perf_counter() - start < 6


def test_reset_breaks_open_connections_and_new_ones_work(url):
    with NetLab(url) as lab:
        with psycopg.connect(lab.url, autocommit=True) as conn:
            lab.reset()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with psycopg.connect(lab.url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_close_leaves_no_server_session(url):
    app = "netlab-close-test"
    lab = NetLab(url).start()
    conn = psycopg.connect(lab.url, application_name=app, autocommit=True)
    assert _server_sessions(url, app) == 1
    lab.close()
    deadline = time.monotonic() + 5
    while _server_sessions(url, app) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _server_sessions(url, app) == 0
    conn.close()
    with pytest.raises(RuntimeError, match="not running"):
        lab.blackhole()


def _query_in_thread(conn: psycopg.Connection, wait: float) -> tuple[list, float]:
    """Run SELECT 1 in a thread for at most `wait` seconds: (errors it raised, seconds it took)."""
    failed: list = []

    def query():
        try:
            conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            failed.append(exc)

    start = time.perf_counter()
    thread = threading.Thread(target=query, daemon=True)
    thread.start()
    thread.join(wait)
    return failed, time.perf_counter() - start


def test_without_packet_drop_keepalives_cannot_see_the_blackhole(url):
    """The proxy's kernel still answers every probe: only a deadline kept by the client helps."""
    opts = dict(keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2, tcp_user_timeout=2000)
    with NetLab(url, packet_level=False) as lab, psycopg.connect(lab.url, autocommit=True, **opts) as conn:
        with lab.blackhole():
            failed, elapsed = _query_in_thread(conn, 5)
            assert not failed and elapsed >= 4.9, "the query ended in a blackhole the client's kernel cannot see"
        assert conn.execute("SELECT 1").fetchone() == (1,), "the connection did not survive the outage"


needs_packet_drop = pytest.mark.skipif(
    not packet_drop_supported(), reason="this process may not drop packets (Linux socket filters)"
)


@needs_packet_drop
def test_with_packet_drop_tcp_user_timeout_ends_a_query_in_flight(url):
    with NetLab(url) as lab:
        assert lab.packet_level
        with psycopg.connect(lab.url, autocommit=True, tcp_user_timeout=2000) as conn, lab.blackhole():
            failed, elapsed = _query_in_thread(conn, 15)
    assert failed, "the query through a dropped path never failed"
    assert 1.5 <= elapsed < 12


@needs_packet_drop
@pytest.mark.parametrize("keepalives", [True, False])
def test_with_packet_drop_keepalives_end_an_idle_connection(url, keepalives):
    opts = dict(keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2) if keepalives else {}
    with NetLab(url) as lab, psycopg.connect(lab.url, autocommit=True, **opts) as conn:
        with lab.blackhole():
            time.sleep(5)  # idle: 1 s before the first probe, 2 unanswered probes 1 s apart
        failed, elapsed = _query_in_thread(conn, 5)
    if keepalives:
        assert failed and elapsed < 2, "keepalives did not end the connection during the outage"
    else:
        assert not failed and elapsed < 2, "without keepalives the idle connection should survive the outage"


# -- TLSProxy: PostgreSQL's encryption negotiation, in front of the course server --------------------------

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, its certificate in a file, a certificate for 127.0.0.1, and one from another CA."""
    from pgcourse.netlab import server_context

    ca, impostor_ca = trustme.CA(), trustme.CA()
    path = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return {
        "root": str(path),
        "good": server_context(ca.issue_cert("127.0.0.1", "localhost")),
        "evil": server_context(impostor_ca.issue_cert("127.0.0.1", "localhost")),
        "other_name": server_context(ca.issue_cert("db.example.com")),
    }


def _tls_in_use(url: str, **kw) -> bool:
    with psycopg.connect(url, connect_timeout=5, **kw) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        return conn.pgconn.ssl_in_use


def test_tls_proxy_answers_sslrequest_and_verifies(url, pki):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, pki["good"]) as proxy:
        assert _tls_in_use(proxy.url, sslmode="verify-full", sslrootcert=pki["root"])
        (seen,) = proxy.negotiated()
        assert (seen.request, seen.outcome, seen.alpn, seen.packet) == ("SSLRequest", "TLS", "postgresql", "startup")
        assert seen.tls_version in ("TLSv1.2", "TLSv1.3")
    assert not [t for t in threading.enumerate() if t.name == "netlab"], "close() left the proxy's thread"


def test_tls_proxy_refuses_plaintext_with_a_fatal_error_or_forwards_it(url, pki):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, pki["good"]) as proxy:
        with pytest.raises(psycopg.OperationalError, match="FATAL:  TLS is required") as info:
            psycopg.connect(proxy.url, sslmode="disable", connect_timeout=5)
        assert "sslmode=verify-full" in str(info.value)
        assert (proxy.negotiated()[0].outcome, proxy.negotiated()[0].reason) == ("refused", "TLS required")
    with TLSProxy(url, pki["good"], plaintext="forward") as proxy:
        assert not _tls_in_use(proxy.url, sslmode="disable")
        assert proxy.negotiated()[0].outcome == "plaintext"


def test_an_impostor_passes_require_and_fails_verification(url, pki):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, pki["evil"]) as impostor:
        assert _tls_in_use(impostor.url, sslmode="require")
        for mode in ("verify-ca", "verify-full"):
            with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
                psycopg.connect(impostor.url, sslmode=mode, sslrootcert=pki["root"], connect_timeout=5)
        assert impostor.negotiated()[-1].reason == "the client rejected the certificate: unknown ca"


def test_a_name_mismatch_passes_verify_ca_and_fails_verify_full(url, pki):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, pki["other_name"]) as proxy:
        assert _tls_in_use(proxy.url, sslmode="verify-ca", sslrootcert=pki["root"])
        with pytest.raises(psycopg.OperationalError, match='"db.example.com" does not match host name'):
            psycopg.connect(proxy.url, sslmode="verify-full", sslrootcert=pki["root"], connect_timeout=5)


def test_without_a_certificate_the_proxy_downgrades(url):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, None) as middlebox:
        assert not _tls_in_use(middlebox.url, sslmode="prefer")
        with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
            psycopg.connect(middlebox.url, sslmode="require", connect_timeout=5)
        assert [(n.request, n.outcome) for n in middlebox.negotiated()][0] == ("SSLRequest", "plaintext")


@pytest.mark.skipif(psycopg.pq.version() < 170000, reason="sslnegotiation=direct needs libpq 17+")
def test_direct_tls_with_alpn_from_libpq(url, pki):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, pki["good"]) as proxy:
        assert _tls_in_use(proxy.url, sslmode="verify-full", sslrootcert=pki["root"], sslnegotiation="direct")
        (seen,) = proxy.negotiated()
        assert (seen.request, seen.outcome, seen.alpn) == ("direct", "TLS", "postgresql")


def test_direct_tls_without_alpn_is_refused_and_gssenc_declined(url, pki):
    import socket
    import ssl
    import struct

    from pgcourse.netlab import TLSProxy

    client = ssl.create_default_context(cafile=pki["root"])
    with TLSProxy(url, pki["good"]) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
            with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                try:
                    ended = tls.recv(1) == b""
                except ConnectionResetError:
                    ended = True
                assert ended, "the proxy kept a direct TLS connection without ALPN"
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
            raw.sendall(struct.pack("!ii", 8, 80877104))  # GSSENCRequest
            assert raw.recv(1) == b"N"
            raw.sendall(struct.pack("!ii", 8, 80877103))  # then SSLRequest
            assert raw.recv(1) == b"S"
        refused, declined = proxy.negotiated()
    assert (refused.request, refused.outcome) == ("direct", "refused")
    assert refused.reason == "direct TLS without the ALPN protocol 'postgresql'"
    assert declined.gssenc_declined and declined.request == "SSLRequest"


def test_recording_shows_the_query_its_parameters_and_the_rows(url, pki):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, pki["evil"], record=True) as impostor:
        with psycopg.connect(impostor.url, sslmode="require") as conn:
            conn.execute("SELECT %s::text AS secret, 7 AS n", ("hunter2",)).fetchall()
        (transcript,) = impostor.transcripts
        messages = transcript.messages()
    assert ("client", "parse", "SELECT $1::text AS secret, 7 AS n") in messages
    assert ("client", "bind", ["hunter2"]) in messages
    assert ("server", "columns", ["secret", "n"]) in messages
    assert ("server", "row", ["hunter2", "7"]) in messages
    assert next(m for m in messages if m[1] == "startup")[2]["user"]


def test_an_encrypted_cancel_request_reaches_the_server(url, pki):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, pki["good"]) as proxy:
        with psycopg.connect(proxy.url, sslmode="verify-full", sslrootcert=pki["root"]) as conn:
            timer = threading.Timer(0.3, conn.cancel_safe)
            timer.start()
            start = time.perf_counter()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(10)")
            assert time.perf_counter() - start < 5
            timer.join()
        cancel = proxy.negotiated()[-1]
    if psycopg.pq.version() >= 170000:  # libpq 17+ cancels over TLS
        assert (cancel.request, cancel.outcome, cancel.packet) == ("SSLRequest", "TLS", "cancel")
    else:
        assert (cancel.request, cancel.packet) == ("plaintext", "cancel")


def test_latency_still_applies_behind_the_tls_proxy(url, pki):
    from pgcourse.netlab import TLSProxy

    with TLSProxy(url, pki["good"]) as proxy:
        with psycopg.connect(proxy.url, sslmode="verify-full", sslrootcert=pki["root"], autocommit=True) as conn:
            base = _round_trip(conn)
            proxy.latency_ms = 10
            added = _round_trip(conn) - base
    assert 0.018 <= added <= 0.04, f"added {added * 1000:.1f} ms, expected about 20 ms"


def test_close_ends_silent_clients_and_leaves_no_socket(url, pki):
    import gc
    import socket
    import ssl
    import struct
    import warnings

    from pgcourse.netlab import TLSProxy

    client = ssl.create_default_context(cafile=pki["root"])
    gc.collect()  # what earlier tests left for the collector is theirs: only this test's leaks are caught below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        proxy = TLSProxy(url, pki["good"]).start()
        raw = socket.create_connection((proxy.host, proxy.port), timeout=5)
        raw.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert raw.recv(1) == b"S"
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:  # TLS up, then silence
            with socket.create_connection((proxy.host, proxy.port), timeout=5) as idle:  # sends nothing
                proxy.close()
                assert tls.recv(1) == b"" and idle.recv(1) == b"", "close() left a client connected"
        gc.collect()
    assert not [t for t in threading.enumerate() if t.name == "netlab"], "close() left the proxy's thread"
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaked, leaked
