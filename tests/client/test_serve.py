"""`fedge serve` in-process: its listening socket, loopback, and refusals before it binds.

The server as a real process (framing, limits, timeouts, auth, v2): tests/e2e/test_serve.py.
"""

import asyncio
import socket

import pytest
import uvloop
from typer.testing import CliRunner

from fedge.cli import app
from fedge.client.runtime.httpserver import bind, is_loopback


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_accepted_connections_send_without_nagle(loop_factory):
    """Headers and body are two writes: on a socket that waits for ACKs (Nagle) a keep-alive
    answer stalls ~40 ms behind the client's delayed ACK. bind() makes the event loop (asyncio's
    or uvloop's, which uvicorn picks) set TCP_NODELAY on every connection it accepts."""
    loop = loop_factory()
    accepted: asyncio.Future = loop.create_future()

    class Record(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> int:
        server = await loop.create_server(Record, sock=bind("127.0.0.1", 0, 16))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, timeout=60)  # bounds a hang
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    try:
        assert loop.run_until_complete(accept_one()) != 0
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.5.5", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("device.example", False),  # a name could resolve to anything
    ],
)
def test_only_loopback_addresses_count_as_local(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0 is reachable from the network and there is no"),
        (["--host", "::"], "--host :: is reachable from the network and there is no --token-file"),
        (["--token-file", "short"], "--token-file must hold one token of at least 16 printable"),
        (["--token-file", "missing"], "cannot read --token-file"),
    ],
)
def test_refusals_come_before_the_model_is_loaded_or_a_port_bound(tmp_path, args, message):
    """The store does not exist: a refusal that did not come first would name it instead."""
    (tmp_path / "short").write_text("too-short\n")
    args = [str(tmp_path / a) if a in ("short", "missing") else a for a in args]
    store = ["--model-dir", str(tmp_path / "no-store"), "--trusted-key", str(tmp_path / "k.pub")]
    result = CliRunner().invoke(app, ["serve", *store, "--port", "0", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
