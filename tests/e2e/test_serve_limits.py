"""`fedge serve` as a process under connection floods: idle connections lock nobody out.

The p99 latency under 1,000 idle connections is a figure, measured by benchmarks/serve_idle.py.
"""

import select
import socket
import time

import pytest

from fedge.compression.bundle import generate_keypair, load_private_key
from tests.client.conftest import Device
from tests.e2e.serving import Reader, call, connect, request, running

TOKEN = "s3cret-token-of-some-length"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def device_m(tmp_path_factory, student_models) -> Device:
    root = tmp_path_factory.mktemp("serve-limits")
    private_path, public_path = generate_keypair(root / "keys")
    dev = Device(root / "store", public_path, load_private_key(private_path), student_models[1])
    dev.install(1)
    (root / "token").write_text(TOKEN + "\n")
    return dev


def _serve(device: Device, *args: str):
    return running(device.store, device.public_key, "--token-file", str(_token(device)), *args)


def _token(device: Device):
    return device.store.parent / "token"


def _closed_by_server(socks: list[socket.socket], bound: float = 60.0) -> set[socket.socket]:
    """The sockets the server has closed, once no more close within a short while (or `bound`)."""
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + bound  # bounds a hang, not a speed
    while time.monotonic() < deadline:
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [], 1.0)
        if not readable:
            return closed
        closed |= {sock for sock in readable if Reader(sock).closed()}
    return closed


def test_idle_connections_past_the_cap_do_not_lock_out_a_client_with_a_token(device_m):
    """60 silent connections against a cap of 20: uvicorn's limit_concurrency answered every
    request 503 while they were open (even with the right token); now they make room."""
    with _serve(device_m, "--max-connections", "20") as srv:
        idle = [connect(srv.port) for _ in range(60)]
        try:
            status, health = call(srv.port, "GET", "/health", headers=AUTH)
            assert status == 200 and health["status"] == "ok", health
            with connect(srv.port) as sock:  # a keep-alive client is answered again and again
                reader = Reader(sock)
                for _ in range(3):
                    sock.sendall(request("GET", "/health", headers=AUTH))
                    assert reader.response()[0] == 200
        finally:
            for sock in idle:
                sock.close()


def test_only_the_excess_connections_are_closed_oldest_silent_first(device_m):
    """With the timeouts far away only the cap closes connections: 30 silent ones and a
    cap of 20 close the 10 oldest, and a client's connection after them closes one more. (The
    kernel hands connections over in the order they were made, so the answer to the client
    means all 30 were taken in.)"""
    timeouts = ("--header-timeout", "600", "--request-timeout", "600")
    with _serve(device_m, "--max-connections", "20", *timeouts) as srv:
        idle = [connect(srv.port) for _ in range(30)]
        try:
            assert call(srv.port, "GET", "/health", headers=AUTH)[0] == 200
            closed = _closed_by_server(idle)
            assert closed == set(idle[:11]), [idle.index(sock) for sock in closed]
        finally:
            for sock in idle:
                sock.close()


def test_a_connection_that_sends_no_complete_head_is_closed_after_the_header_timeout(device_m):
    with _serve(device_m, "--header-timeout", "1", "--request-timeout", "600") as srv:
        silent, dripping = connect(srv.port), connect(srv.port)
        try:
            dripping.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
            deadline = time.monotonic() + 60  # bounds a hang, not a speed
            open_ = {silent, dripping}
            while open_:
                assert time.monotonic() < deadline, f"{len(open_)} of 2 still open after 60 s"
                if dripping in open_:
                    try:
                        dripping.sendall(b"a")
                    except (BrokenPipeError, ConnectionResetError):
                        open_.discard(dripping)
                readable, _, _ = select.select(list(open_), [], [], 0.2)
                open_ -= {sock for sock in readable if Reader(sock).closed()}
            assert call(srv.port, "GET", "/health", headers=AUTH)[0] == 200
        finally:
            silent.close()
            dripping.close()


def test_a_request_without_the_token_is_answered_401_and_its_connection_closed(device_m):
    with _serve(device_m) as srv, connect(srv.port) as sock:
        sock.sendall(request("GET", "/health"))
        reader = Reader(sock)
        status, headers, _ = reader.response()
        assert status == 401 and headers["connection"] == "close"
        try:
            sock.sendall(request("GET", "/health"))
        except (BrokenPipeError, ConnectionResetError):
            return
        assert reader.response() is None  # closed, not a second answer
