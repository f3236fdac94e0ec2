"""Helpers for `fedge serve` tests: start it (torch-free) on a free port, speak raw HTTP to it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.e2e.processes import NO_TORCH


@dataclass
class Server:
    port: int
    proc: subprocess.Popen

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as handle:
            line = next(line for line in handle if line.startswith("VmRSS:"))
        return int(line.split()[1])


@contextmanager
def running(store, key, *args: str) -> Iterator[Server]:
    """`fedge serve` on 127.0.0.1 and a free port; killed by pid however the test ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", NO_TORCH, "serve", "--model-dir", str(store)]
        + ["--trusted-key", str(key), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        yield Server(int(line.rsplit(":", 1)[1]), proc)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(
    method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    headers = dict(headers or {})
    if body is not None and "Content-Length" not in headers:
        headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class Reader:
    """Reads HTTP/1.1 responses off one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def response(self) -> tuple[int, dict, bytes] | None:
        """(status, headers, body), or None when the server closed the connection first."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._more():
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        length = int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            if not self._more():
                return None
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """Whether the server closed the connection: end of stream or a reset, not a timeout."""
        if self.buffer:
            return False
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return False
        self.buffer += data
        return bool(data)


def call(port: int, method: str, path: str, payload=None, headers: dict | None = None):
    """One request on a fresh connection: (status, parsed JSON body)."""
    body = None if payload is None else json.dumps(payload).encode()
    with connect(port) as sock:
        sock.sendall(request(method, path, body, headers))
        answer = Reader(sock).response()
    assert answer is not None, "no response"
    status, _, data = answer
    return status, json.loads(data) if data.startswith((b"{", b"[")) else data


def wait_for(condition, timeout: float = 60.0, interval: float = 0.1) -> None:
    """Poll until `condition()` holds; `timeout` bounds a hang, it is not a speed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met in {timeout:.0f} s"
        time.sleep(interval)
