"""Run the inference app on uvicorn (httptools framing) with timeouts, limits and a real backlog.

uvicorn brings HTTP/1.1 framing by httptools (no request smuggling: a body is consumed by the
parser whether or not the app reads it; Content-Length and Transfer-Encoding conflicts are
refused), keep-alive timeouts and a listen backlog. Its concurrency limit answers every request
503 while the limit is reached, so idle connections that never send a byte lock everyone out;
it is off. `DeadlineProtocol` adds what uvicorn lacks: a cap on open connections that closes
only the excess (a new connection past the cap replaces the oldest one that has not sent a
complete request, else the oldest idle keep-alive one, else it is closed itself: the
`ConnectionGuard`), `header_timeout` seconds to send a request's head, `request_timeout`
seconds from a request's first byte to its response's last, and at most `max_header_bytes` of
request line and headers; slow-drip clients are dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fedge.client.runtime.predictor import Predictor
from fedge.client.runtime.service import InferenceApp


@dataclass(frozen=True)
class ServerLimits:
    """Transport limits of `fedge serve`."""

    backlog: int = 1024  # pending connections the kernel queues (capped by somaxconn)
    max_connections: int = 512  # open at once; past it a new one replaces an idle one or is closed
    keep_alive: float = 5.0  # seconds an idle keep-alive connection is kept
    header_timeout: float = 5.0  # seconds to send a request line and headers (from connecting)
    request_timeout: float = 30.0  # seconds from a request's first byte to its response's last
    max_header_bytes: int = 16 << 10  # request line + headers


class ConnectionGuard:
    """One server's open connections, and which of them makes room when the cap is reached.

    First to go: the oldest connection that has not sent a complete request head (a client
    that connects and waits, or drips); then the oldest idle keep-alive connection. A
    connection that is being answered is never closed to make room: when every one is, the
    new connection is closed instead.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.unproven: OrderedDict[DeadlineProtocol, None] = OrderedDict()
        self.idle: OrderedDict[DeadlineProtocol, None] = OrderedDict()

    def admit(self, connection: DeadlineProtocol) -> bool:
        """Count a new connection, making room if needed; False: close this one instead."""
        if self.count >= self.limit:
            victim = next(iter(self.unproven), None) or next(iter(self.idle), None)
            if victim is None:
                return False
            self.release(victim)
            victim.transport.close()
        self.count += 1
        connection.counted = True
        self.unproven[connection] = None
        return True

    def waiting_for_head(self, connection: DeadlineProtocol) -> None:
        """A request begins on an idle kept-alive connection: it may make room again."""
        if self.idle.pop(connection, 0) is None:
            self.unproven[connection] = None

    def answering(self, connection: DeadlineProtocol) -> None:
        """A complete request head arrived: the connection is kept until it is answered."""
        self.unproven.pop(connection, None)
        self.idle.pop(connection, None)

    def resting(self, connection: DeadlineProtocol) -> None:
        """Answered, waiting on keep-alive: it may make room, after the unproven ones."""
        if connection.counted and connection not in self.unproven:
            self.idle[connection] = None

    def release(self, connection: DeadlineProtocol) -> None:
        """The connection is closing: no longer counted."""
        self.unproven.pop(connection, None)
        self.idle.pop(connection, None)
        if connection.counted:
            self.count -= 1
            connection.counted = False


class HeaderTooLargeError(Exception):
    """The request line and headers exceed the limit (httptools turns this into a 400)."""


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap, deadlines and a header size cap."""

    limits = ServerLimits()
    guard = ConnectionGuard(ServerLimits.max_connections)  # build_server gives each server one
    counted = False  # whether the guard counts this connection as open

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Admit or refuse it, and start the clocks: even a silent connection is closed in time."""
        self._deadline: asyncio.TimerHandle | None = None
        self._head_deadline: asyncio.TimerHandle | None = None
        self._receiving = False
        self._header_bytes = 0
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.close()  # every open connection is being answered: this one is excess
            return
        self._arm()
        self._head_deadline = self.loop.call_later(self.limits.header_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        """Bytes of a new request start its clock."""
        if self._deadline is None:
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        """A request starts: count its header bytes from zero, give it header_timeout for them."""
        self._receiving, self._header_bytes = True, 0
        self.guard.waiting_for_head(self)
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.limits.header_timeout, self._expire)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        """Count the request line."""
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count each header."""
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """A complete request head: the connection is kept until it is answered."""
        self._disarm_head()
        self.guard.answering(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The request is fully received."""
        self._receiving = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """The response is sent: stop the clock unless another request is under way."""
        self._disarm()
        super().on_response_complete()
        if self._receiving or self.pipeline:
            self._arm()
        elif not self.transport.is_closing():
            self.guard.resting(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timers and the count with the connection."""
        self._disarm()
        self._disarm_head()
        self.guard.release(self)
        super().connection_lost(exc)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise HeaderTooLargeError

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _disarm_head(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _expire(self) -> None:
        self._disarm()
        self._disarm_head()
        if not self.transport.is_closing():
            self.transport.close()


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name could resolve to anything
        return False


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket (IPv4 or IPv6 by the address); OSError when it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when it is set, and
    # without it Nagle + delayed ACK add ~40 ms to every response (headers and body are two writes)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def build_server(app: InferenceApp, limits: ServerLimits) -> uvicorn.Server:
    """A uvicorn server for `app` with `limits` (run it with `.run(sockets=[bind(...)])`)."""
    guard = ConnectionGuard(limits.max_connections)
    protocol = type("FedgeProtocol", (DeadlineProtocol,), {"limits": limits, "guard": guard})
    config = uvicorn.Config(
        app,
        http=protocol,
        ws="none",  # no protocol upgrades
        lifespan="off",
        interface="asgi3",
        loop="auto",  # uvloop when installed
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
        backlog=limits.backlog,
        limit_concurrency=None,  # it answers 503 to everyone at the limit: the guard caps instead
        timeout_keep_alive=max(1, round(limits.keep_alive)),
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


class Reloader(threading.Thread):
    """Calls `predictor.reload_if_newer()` every `interval` seconds, off the event loop."""

    def __init__(self, predictor: Predictor, interval: float = 1.0) -> None:
        super().__init__(name="fedge-reloader", daemon=True)
        self.predictor, self.interval = predictor, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        """Check until stopped; a failing check is in predictor.last_error, never fatal."""
        while not self.stopped.wait(self.interval):
            try:
                self.predictor.reload_if_newer()
            except Exception as err:  # noqa: BLE001  (the server must keep answering)
                self.predictor.last_error = f"reload failed: {err}"


def serve(app: InferenceApp, sock: socket.socket, limits: ServerLimits, **_: Any) -> None:
    """Serve on `sock` until SIGINT/SIGTERM, reloading newer bundles in the background."""
    reloader = Reloader(app.predictor)
    reloader.start()
    try:
        build_server(app, limits).run(sockets=[sock])
    finally:
        reloader.stopped.set()
        app.close()
        sock.close()
