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
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator

__all__ = ["NetLab", "packet_drop_supported"]

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

    def __init__(self, lab: NetLab, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.lab = lab
        self.client_r, self.client_w = client_r, client_w
        self.server_w: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []

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
            self.tasks = [
                asyncio.ensure_future(self._pump(self.client_r, self.server_w)),
                asyncio.ensure_future(self._pump(server_r, self.client_w)),
            ]
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.close(abort=False)
            lab._links.discard(self)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward bytes from `reader` to `writer`, each chunk `latency` after it was read, in order."""
        lab = self.lab
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
