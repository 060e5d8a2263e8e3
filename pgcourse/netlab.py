"""A network between a driver and the course server: a TCP proxy on 127.0.0.1 that a lesson turns.

The course server and the notebook share one machine, so every connection runs over loopback, where a
round trip costs microseconds and nothing is ever lost. `NetLab` puts a proxy in between, running in
its own thread (so synchronous and asynchronous code can both use it), with three controls:

- ``lab.latency_ms = 10``: every byte read from now on is delivered 10 ms later, in each direction,
  so a round trip costs 20 ms more. A new connection also pays one round trip for its TCP handshake.
- ``lab.blackhole()`` / ``lab.heal()``: bytes stop moving, both ways, with no error and no goodbye, as
  when a firewall or a dead NAT entry drops traffic; new connections get no answer. Bytes held during
  the outage are delivered after ``heal()``, as TCP's retransmissions would. ``with lab.blackhole():``
  heals on exit.
- ``lab.reset()``: every open connection is aborted with a TCP reset (RST).

Where the operating system lets a process drop packets (a socket filter on Linux), the blackhole
drops them in the kernel: the proxy's end no longer acknowledges anything, so the client's TCP
keepalives and ``tcp_user_timeout`` see a dead path (``lab.packet_level`` is True). Elsewhere the
proxy only stops forwarding; its kernel still acknowledges every packet, which is what a hung peer
process looks like, and only a deadline kept by the client ends the wait.

`TLSProxy` is a `NetLab` that terminates TLS in front of the course server, as pgbouncer or a cloud
proxy does (the bundled server is built without OpenSSL). It speaks PostgreSQL's encryption negotiation
(``SSLRequest``, ``GSSENCRequest``, direct TLS with the ALPN protocol ``postgresql``) with a certificate
the lesson makes (`server_context` turns a trustme certificate into one), refuses or forwards plaintext,
records how each connection negotiated, and can keep the plaintext it relays (`Transcript`, read with
`wire_messages`): what a proxy that a client trusted, honest or not, can read. With no certificate it
answers ``N`` to every ``SSLRequest``, as a downgrading middlebox does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "NetLab",
    "Negotiation",
    "TLSProxy",
    "Transcript",
    "packet_drop_supported",
    "server_context",
    "wire_messages",
]

_SO_ATTACH_FILTER = 26
_SO_DETACH_FILTER = 27
_CHUNK = 65536


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_DROP_ALL = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0: keep no byte of the packet
_DROP_PROG = _SockFprog(1, ctypes.cast(_DROP_ALL, ctypes.POINTER(_SockFilter)))


def _drop_packets(sock: socket.socket) -> None:
    """Make the kernel discard every packet arriving for `sock` (no ACK is sent for them)."""
    sock.setsockopt(
        socket.SOL_SOCKET, _SO_ATTACH_FILTER, ctypes.string_at(ctypes.addressof(_DROP_PROG), ctypes.sizeof(_DROP_PROG))
    )


def _accept_packets(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)


def _unacked(sock) -> int:
    """Segments `sock` has sent that the other end has not acknowledged (Linux TCP_INFO)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return 0
    return struct.unpack_from("I", info, 24)[0] if len(info) >= 28 else 0


def packet_drop_supported() -> bool:
    """Whether this process may drop packets in the kernel (Linux socket filters; may need rights)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with socket.socket() as probe:
            _drop_packets(probe)
            _accept_packets(probe)
    except OSError:
        return False
    return True


def _route(url: str, host: str, port: int) -> str:
    """`url` with its host and port replaced; the user, password, database and options are kept."""
    if "://" not in url:  # a key=value connection string
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(url)
        params.update(host=host, port=str(port))
        params.pop("hostaddr", None)
        return make_conninfo(**params)
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _upstream(url: str) -> tuple[str, int]:
    if "://" not in url:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(url)
        return params.get("hostaddr") or params.get("host") or "127.0.0.1", int(params.get("port") or 5432)
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


class _Link:
    """One client connection and its connection to the server."""

    def __init__(
        self,
        lab: NetLab,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        *,
        preamble: bytes = b"",
        transcript: Transcript | None = None,
    ) -> None:
        self.lab = lab
        self.client_r, self.client_w = client_r, client_w
        self.server_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.preamble = preamble  # bytes the proxy read from the client before it forwarded anything
        self.transcript = transcript

    @property
    def client_sock(self):
        return self.client_w.get_extra_info("socket")

    async def run(self) -> None:
        lab = self.lab
        try:
            await lab._flowing.wait()
            await asyncio.sleep(2 * lab._latency)  # the TCP handshake's round trip
            await lab._flowing.wait()
            server_r, self.server_w = await asyncio.open_connection(*lab.upstream)
            if self.preamble:
                if self.transcript is not None:
                    self.transcript.client.extend(self.preamble)
                self.server_w.write(self.preamble)
            self.tasks = [
                asyncio.ensure_future(self._pump(self.client_r, self.server_w, "client")),
                asyncio.ensure_future(self._pump(server_r, self.client_w, "server")),
            ]
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.close(abort=False)
            lab._links.discard(self)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sender: str) -> None:
        """Forward bytes from `reader` to `writer`, each chunk `latency` after it was read, in order."""
        lab = self.lab
        recorded = getattr(self.transcript, sender) if self.transcript is not None else None
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            loop = asyncio.get_running_loop()
            while True:
                due, data = await queue.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                await lab._flowing.wait()
                writer.write(data)
                await writer.drain()

        delivery = asyncio.ensure_future(deliver())
        try:
            while True:
                await lab._flowing.wait()
                data = await reader.read(_CHUNK)
                if recorded is not None:
                    recorded.extend(data)
                await lab._flowing.wait()  # read just before an outage: held, not sent
                queue.put_nowait((asyncio.get_running_loop().time() + lab._latency, data))
                if not data:
                    break
            await delivery
        finally:
            delivery.cancel()

    def close(self, abort: bool) -> None:
        for task in self.tasks:
            task.cancel()
        for w in (self.client_w, self.server_w):
            if w is None:
                continue
            if abort:
                sock = w.get_extra_info("socket")
                with contextlib.suppress(OSError):
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
            else:
                w.close()


class NetLab:
    """A TCP proxy between a driver and the server at `url`, with latency, a blackhole and resets.

    Use it as a context manager (or call `start()` and `close()`); connect your driver to `lab.url`.
    `packet_level=None` drops packets in the kernel during a blackhole where this process may;
    `False` never does (the proxy only stops forwarding).
    """

    def __init__(self, url: str, *, latency_ms: float = 0.0, packet_level: bool | None = None) -> None:
        self._target_url = url
        self.upstream = _upstream(url)
        self._latency = latency_ms / 1000
        self.packet_level = packet_drop_supported() if packet_level is None else packet_level
        self.host = "127.0.0.1"
        self.port = 0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._flowing: asyncio.Event
        self._blackholed = False

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> NetLab:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # surfaced in start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=main, name="netlab", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._on_client, self.host, 0, limit=_CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(self, reader, writer)
        self._links.add(link)
        if self._blackholed and self.packet_level and link.client_sock is not None:
            _drop_packets(link.client_sock)
        await link.run()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close(abort=True)
        await asyncio.sleep(0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Abort every connection through the lab and stop it."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> NetLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn) -> None:
        """Run `fn` in the lab's loop and wait for it (controls take effect before they return)."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("the lab is not running: use `with NetLab(url) as lab:` or lab.start()")
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)
        if errors:
            raise errors[0]

    # -- what a lesson reads and turns --------------------------------------------------------------
    @property
    def url(self) -> str:
        """The connection string given, routed through the lab."""
        return _route(self._target_url, self.host, self.port)

    @property
    def latency_ms(self) -> float:
        return self._latency * 1000

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError("latency_ms must be 0 or more")
        self._latency = value / 1000

    @property
    def connections(self) -> int:
        """Client connections open through the lab now."""
        return len(self._links)

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    def blackhole(self) -> contextlib.AbstractContextManager[NetLab]:
        """Stop moving bytes both ways, silently. Returns a context manager that heals on exit."""

        def stop() -> None:
            self._blackholed = True
            self._flowing.clear()

        def drop() -> None:
            for sock in self._packet_sockets():
                _drop_packets(sock)

        self._call(stop)
        if self.packet_level:
            # Bytes the proxy sent before the outage and the client has not acknowledged yet (a
            # delayed ACK) would be sent again through the outage, and the client would take them
            # as a sign of life: let them be acknowledged first (a few ms), then drop everything.
            deadline = time.monotonic() + 1
            while any(_unacked(s) for s in self._packet_sockets()) and time.monotonic() < deadline:
                time.sleep(0.005)
            self._call(drop)
        return self._healing()

    @contextlib.contextmanager
    def _healing(self) -> Iterator[NetLab]:
        try:
            yield self
        finally:
            self.heal()

    def heal(self) -> None:
        """Forward again; bytes held during the outage are delivered."""

        def go() -> None:
            self._blackholed = False
            for sock in self._packet_sockets():
                _accept_packets(sock)
            self._flowing.set()

        self._call(go)

    def reset(self) -> None:
        """Abort every open connection with a TCP reset."""

        def go() -> None:
            for link in list(self._links):
                link.close(abort=True)

        self._call(go)

    def _packet_sockets(self) -> list:
        """The listening socket and every client-side socket (asyncio's socket wrappers)."""
        socks = list(self._server.sockets if self._server else ())
        return socks + [link.client_sock for link in self._links if link.client_sock is not None]

    def __repr__(self) -> str:
        state = "blackholed" if self._blackholed else "forwarding"
        return f"<NetLab {state}, {self.latency_ms:g} ms each way, {self.connections} connections>"


# -- TLS: a proxy that terminates it, as pgbouncer or a cloud proxy does ----------------------------------

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello
_ALPN = "postgresql"


def server_context(cert) -> ssl.SSLContext:
    """A server-side TLS context presenting trustme's `cert` (a `LeafCert`), with PostgreSQL's ALPN name.

    TLS 1.2 at least, as PostgreSQL's own default ``ssl_min_protocol_version`` is.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert.configure_cert(context)
    context.set_alpn_protocols([_ALPN])
    return context


@dataclass
class Negotiation:
    """How one client connection negotiated with a `TLSProxy`.

    `request` is what the client opened with: ``"SSLRequest"``, ``"direct"`` (a TLS ClientHello
    straight away) or ``"plaintext"`` (a startup packet or a cancel request, in the clear);
    `outcome` is ``"TLS"``, ``"plaintext"`` or ``"refused"`` (with `reason`); `packet` is what came
    next, ``"startup"`` or ``"cancel"`` (a cancel request); `gssenc_declined` is True when the client
    first asked for GSSAPI encryption and was answered ``N``.
    """

    request: str = ""
    packet: str | None = None
    outcome: str = ""
    tls_version: str | None = None
    alpn: str | None = None
    reason: str | None = None
    gssenc_declined: bool = False

    def __str__(self) -> str:
        text = f"{self.request}: {self.outcome}"
        if self.tls_version:
            text += f", {self.tls_version}, ALPN {self.alpn or 'none'}"
        text += ", cancel request" if self.packet == "cancel" else ""
        return text + (f" ({self.reason})" if self.reason else "")


@dataclass
class Transcript:
    """The plaintext bytes a proxy relayed for one connection, as each side sent them."""

    client: bytearray = field(default_factory=bytearray)
    server: bytearray = field(default_factory=bytearray)

    def messages(self) -> list[tuple[str, str, object]]:
        """(sender, kind, content) for each protocol message: client's, then server's (see `wire_messages`)."""
        return [("client", *m) for m in wire_messages(bytes(self.client), from_client=True)] + [
            ("server", *m) for m in wire_messages(bytes(self.server), from_client=False)
        ]


def _fields(body: bytes) -> list[bytes]:
    return body.split(b"\0")


def _value(raw: bytes | None) -> object:
    if raw is None:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return raw
    return text if text.isprintable() else raw


def wire_messages(data: bytes, *, from_client: bool) -> list[tuple[str, object]]:
    """PostgreSQL protocol messages in `data` as (kind, content), as anyone on the path would read them.

    Kinds a lesson shows: from the client ``startup`` (its parameters), ``query`` (simple protocol),
    ``parse`` (the statement text), ``bind`` (the parameter values), ``cancel``; from the server
    ``columns`` (a RowDescription's names), ``row`` (a DataRow's values), ``complete`` (the command tag),
    ``error``. Every other message is listed by its type letter, its content None.
    """
    out: list[tuple[str, object]] = []
    pos = 0
    if from_client and len(data) >= 8:
        length, code = struct.unpack_from("!ii", data)
        if code == _CANCEL_REQUEST:
            return [("cancel", None)]
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            pos = 8
            length, code = struct.unpack_from("!ii", data, pos) if len(data) >= pos + 8 else (0, 0)
        if code >> 16 == 3:  # a startup packet: protocol 3.x, then name/value pairs
            pairs = _fields(data[pos + 8 : pos + length])
            out.append(
                ("startup", {k.decode(): v.decode() for k, v in zip(pairs[::2], pairs[1::2], strict=False) if k})
            )
            pos += length
    while pos + 5 <= len(data):
        kind = chr(data[pos])
        (length,) = struct.unpack_from("!i", data, pos + 1)
        body = data[pos + 5 : pos + 1 + length]
        pos += 1 + length
        if from_client and kind == "Q":
            out.append(("query", body.rstrip(b"\0").decode()))
        elif from_client and kind == "P":
            out.append(("parse", _fields(body)[1].decode()))
        elif from_client and kind == "B":
            out.append(("bind", _bind_values(body)))
        elif not from_client and kind == "T":
            out.append(("columns", _column_names(body)))
        elif not from_client and kind == "D":
            out.append(("row", _row_values(body)))
        elif not from_client and kind == "C":
            out.append(("complete", body.rstrip(b"\0").decode()))
        elif not from_client and kind == "E":
            out.append(("error", {chr(f[0]): f[1:].decode() for f in _fields(body) if f}))
        else:
            out.append((kind, None))
    return out


def _bind_values(body: bytes) -> list[object]:
    pos = body.index(b"\0") + 1
    pos = body.index(b"\0", pos) + 1
    (n_formats,) = struct.unpack_from("!h", body, pos)
    pos += 2 + 2 * n_formats
    (n_values,) = struct.unpack_from("!h", body, pos)
    pos += 2
    values = []
    for _ in range(n_values):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        values.append(None if size < 0 else _value(body[pos : pos + size]))
        pos += max(size, 0)
    return values


def _row_values(body: bytes) -> list[object]:
    (n,) = struct.unpack_from("!h", body)
    pos, values = 2, []
    for _ in range(n):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        values.append(None if size < 0 else _value(body[pos : pos + size]))
        pos += max(size, 0)
    return values


def _column_names(body: bytes) -> list[str]:
    (n,) = struct.unpack_from("!h", body)
    pos, names = 2, []
    for _ in range(n):
        end = body.index(b"\0", pos)
        names.append(body[pos:end].decode())
        pos = end + 1 + 18  # table oid, column number, type oid, size, modifier, format
    return names


def _error_response(message: str, hint: str, sqlstate: str = "28000") -> bytes:
    """A FATAL ErrorResponse, as the server sends when it refuses a connection."""
    fields = b"".join(
        code + text.encode() + b"\0"
        for code, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message), (b"H", hint))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


class TLSProxy(NetLab):
    """A `NetLab` that terminates TLS in front of the course server, as pgbouncer or a cloud proxy does.

    It speaks PostgreSQL's encryption negotiation (protocol-flow.html#PROTOCOL-FLOW-SSL) to clients
    and forwards plaintext to the server, so latency, blackholes and resets still apply:

    - an ``SSLRequest`` is answered ``S`` and the TLS handshake follows, with the certificate of
      `context` (build one with `server_context(leaf_cert)`); with ``context=None`` the proxy answers
      ``N`` and forwards the plaintext session that follows, as a downgrading middlebox does;
    - a ``GSSENCRequest`` is answered ``N`` and the next packet is read;
    - a TLS ClientHello straight away (libpq 17+ ``sslnegotiation=direct``, asyncpg ``direct_tls=True``)
      gets TLS directly, if the client offers the ALPN protocol ``postgresql``, as a PostgreSQL 17+
      server requires; otherwise the connection is closed, and the reason recorded;
    - a plaintext startup packet is refused with a FATAL ``ErrorResponse`` that says TLS is required
      (``plaintext="refuse"``, the default when there is a context) or forwarded (``"forward"``);
    - a cancel request is forwarded, in the clear or inside TLS (libpq 17+ encrypts it).

    `negotiated()` lists how each connection negotiated (a `Negotiation`); with ``record=True``,
    `transcripts` holds the plaintext each relayed (a `Transcript`): what a proxy, honest or not, reads.
    """

    def __init__(
        self,
        url: str,
        context: ssl.SSLContext | None,
        *,
        plaintext: str | None = None,
        record: bool = False,
        latency_ms: float = 0.0,
        packet_level: bool | None = False,
    ) -> None:
        super().__init__(url, latency_ms=latency_ms, packet_level=packet_level)
        plaintext = plaintext or ("refuse" if context is not None else "forward")
        if plaintext not in ("refuse", "forward"):
            raise ValueError("plaintext must be 'refuse' or 'forward'")
        self.context = context
        self.plaintext = plaintext
        self.record = record
        self.negotiations: list[Negotiation] = []
        self.transcripts: list[Transcript] = []
        self._listener: socket.socket | None = None
        self._pending: set[socket.socket] = set()

    def negotiated(self, timeout: float = 10.0) -> list[Negotiation]:
        """Every connection's `Negotiation`, once each has an outcome (a client may see its error first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = list(self.negotiations)
            if len(done) >= self.accepted and all(n.outcome for n in done):
                return done
            time.sleep(0.005)
        return list(self.negotiations)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, ctx: None)  # failed handshakes are recorded, not logged
        self._flowing = asyncio.Event()
        self._flowing.set()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accepting = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            self.accepted += 1
            asyncio.ensure_future(self._negotiate(sock))

    async def _negotiate(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._pending.add(sock)
        record = Negotiation()
        self.negotiations.append(record)
        try:
            await self._flowing.wait()
            while True:
                if await self._first_byte(sock) == _TLS_HANDSHAKE:
                    record.request = "direct"
                    return await self._tls(sock, record)
                head = await self._recv_exactly(sock, 8)
                length, code = struct.unpack("!ii", head)
                if length == 8 and code == _GSSENC_REQUEST:
                    record.gssenc_declined = True
                    await loop.sock_sendall(sock, b"N")
                    continue
                if length == 8 and code == _SSL_REQUEST:
                    record.request = "SSLRequest"
                    if self.context is not None:
                        await loop.sock_sendall(sock, b"S")
                        return await self._tls(sock, record)
                    await loop.sock_sendall(sock, b"N")  # downgrade: the client carries on in plaintext
                    record.outcome, record.reason = "plaintext", "answered N"
                    return await self._forward(sock, b"")
                record.request = "plaintext"
                record.packet = "cancel" if code == _CANCEL_REQUEST else "startup"
                rest = await self._recv_exactly(sock, max(0, min(length, 10000) - 8))
                if record.packet == "startup" and self.plaintext == "refuse":
                    record.outcome, record.reason = "refused", "TLS required"
                    await loop.sock_sendall(
                        sock,
                        _error_response(
                            "TLS is required: this server accepts no unencrypted connection",
                            "Connect with sslmode=verify-full and sslrootcert set to the file of the server's CA certificate.",
                        ),
                    )
                    return
                record.outcome = "plaintext"
                return await self._forward(sock, head + rest)
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            if not record.outcome:
                record.outcome, record.reason = (
                    "refused",
                    record.reason or f"connection ended: {exc or type(exc).__name__}",
                )
        finally:
            if sock in self._pending:
                self._pending.discard(sock)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    async def _first_byte(self, sock: socket.socket) -> int:
        """The first byte waiting on `sock`, left unread (MSG_PEEK): 0x16 starts a TLS handshake."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                peeked = sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                await _readable(loop, sock)
                continue
            if not peeked:
                raise EOFError("the client closed the connection")
            return peeked[0]

    @staticmethod
    async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        data = b""
        while len(data) < n:
            chunk = await loop.sock_recv(sock, n - len(data))
            if not chunk:
                raise EOFError("the client closed the connection")
            data += chunk
        return data

    async def _tls(self, sock: socket.socket, record: Negotiation) -> None:
        loop = asyncio.get_running_loop()
        if self.context is None:
            record.outcome, record.reason = "refused", "no TLS here"
            return
        reader = asyncio.StreamReader(limit=_CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        self._pending.discard(sock)  # the transport owns it from here
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock=sock, ssl=self.context, ssl_handshake_timeout=10
            )
        except (TimeoutError, OSError) as exc:
            sock.close()
            record.outcome = "refused"
            record.reason = _handshake_failure(exc)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        tls = transport.get_extra_info("ssl_object")
        record.tls_version, record.alpn = tls.version(), tls.selected_alpn_protocol()
        if record.request == "direct" and record.alpn != _ALPN:
            # What a PostgreSQL 17+ server does: it logs the reason and closes the connection.
            record.outcome, record.reason = "refused", "direct TLS without the ALPN protocol 'postgresql'"
            writer.transport.abort()
            return
        record.outcome = "TLS"
        try:
            first = await reader.readexactly(8)  # a startup packet or, from libpq 17 on, a cancel request
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return
        except asyncio.CancelledError:  # the proxy closes while a client is silent after its handshake
            writer.transport.abort()
            raise
        record.packet = "cancel" if struct.unpack("!ii", first)[1] == _CANCEL_REQUEST else "startup"
        await self._relay(reader, writer, first)

    async def _forward(self, sock: socket.socket, preamble: bytes) -> None:
        self._pending.discard(sock)
        reader, writer = await asyncio.open_connection(sock=sock, limit=_CHUNK)
        await self._relay(reader, writer, preamble)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, preamble: bytes) -> None:
        transcript = Transcript() if self.record else None
        if transcript is not None:
            self.transcripts.append(transcript)
        link = _Link(self, reader, writer, preamble=preamble, transcript=transcript)
        self._links.add(link)
        await link.run()

    async def _shutdown(self) -> None:
        if self._listener is not None:
            self._accepting.cancel()
            self._listener.close()
        for sock in list(self._pending):
            sock.close()
        await super()._shutdown()

    def _packet_sockets(self) -> list:
        socks = [self._listener] if self._listener is not None else []
        return socks + [link.client_sock for link in self._links if link.client_sock is not None]

    def __repr__(self) -> str:
        tls = "terminating TLS" if self.context is not None else "declining TLS"
        plaintext = "refusing" if self.plaintext == "refuse" else "forwarding"
        return f"<TLSProxy {tls}, {plaintext} plaintext, {self.connections} connections>"


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until `sock` has bytes to read (or the client closed it)."""
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _handshake_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed, in a few words: the alert the client sent, if it sent one."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        reason = exc.reason.lower().replace("_", " ")
        if reason.startswith(("tlsv1 alert", "sslv3 alert")):
            return "the client rejected the certificate: " + reason.split(" alert ", 1)[1]
        return reason
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"the client left during the TLS handshake ({type(exc).__name__})"
