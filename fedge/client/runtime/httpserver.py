"""Run the inference app on uvicorn (httptools framing) with timeouts, limits and a real backlog.

uvicorn brings HTTP/1.1 framing by httptools (no request smuggling: a body is consumed by the
parser whether or not the app reads it; Content-Length and Transfer-Encoding conflicts are
refused), keep-alive timeouts, a concurrency limit answered with 503, and a listen backlog.
It has no deadline for receiving a request and no cap on header size with httptools, so
`DeadlineProtocol` adds both: a connection must deliver a whole request and take the whole
response within `request_timeout` seconds of its first byte (or of connecting), and the
request line plus headers may have at most `max_header_bytes`; slow-drip clients are dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
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
    max_connections: int = 512  # beyond this, requests get 503 until others finish
    keep_alive: float = 5.0  # seconds an idle keep-alive connection is kept
    request_timeout: float = 30.0  # seconds from a request's first byte to its response's last
    max_header_bytes: int = 16 << 10  # request line + headers


class HeaderTooLargeError(Exception):
    """The request line and headers exceed the limit (httptools turns this into a 400)."""


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a per-request deadline and a header size cap."""

    limits = ServerLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: even a connection that never sends a byte is closed in time."""
        self._deadline: asyncio.TimerHandle | None = None
        self._receiving = False
        self._header_bytes = 0
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Bytes of a new request start its clock."""
        if self._deadline is None:
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        """A request starts: count its header bytes from zero."""
        self._receiving, self._header_bytes = True, 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        """Count the request line."""
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count each header."""
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

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

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timer with the connection."""
        self._disarm()
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

    def _expire(self) -> None:
        self._deadline = None
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
    protocol = type("FedgeProtocol", (DeadlineProtocol,), {"limits": limits})
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
        limit_concurrency=limits.max_connections,
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
