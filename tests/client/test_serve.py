"""`fedge serve` in-process: its socket, loopback, refusals before it binds, and the ASGI app
(inference in a bounded pool with a time limit, strict v2 shapes) called without a server.

The server as a real process (framing, limits, timeouts, auth, v2): tests/e2e/test_serve.py.
"""

import asyncio
import json
import socket
import threading

import numpy as np
import pytest
import uvloop
from typer.testing import CliRunner

from fedge.cli import app
from fedge.client.runtime.httpserver import ConnectionGuard, bind, is_loopback
from fedge.client.runtime.predictor import Predictor
from fedge.client.runtime.service import InferenceApp, ServiceLimits
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key
from fedge.compression.bundle import make_bundle
from tests.client import hostile
from tests.client.conftest import bundle_config

ZEROS = np.zeros((1, 64)).tolist()


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


async def asgi(app_, method: str, path: str, payload=None) -> tuple[int, dict, dict]:
    """One request through the ASGI app, no server: (status, JSON body, headers)."""
    body = b"" if payload is None else json.dumps(payload).encode()
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"content-length", str(len(body)).encode())],
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app_(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"]), dict(sent[0]["headers"])


class GatedPredictor(Predictor):
    """A predictor whose model runs until the test opens its gate (an hour at most)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entered, self.gate = threading.Event(), threading.Event()

    def predict(self, batch, run_options=None):
        self.entered.set()
        self.gate.wait(timeout=3600)
        return super().predict(batch, *([run_options] if run_options else []))


@pytest.fixture()
def gated(device):
    predictor = GatedPredictor(device.store, device.public_key, warmup=0, check_interval=None)
    yield predictor
    predictor.gate.set()


def test_a_slow_model_run_does_not_stall_other_requests(gated):
    """The run blocks until released; GET /health is answered meanwhile (the old server ran the
    model on the event loop, so /health waited for the run: a safety timer ends the run)."""
    safety = threading.Timer(10, gated.gate.set)
    safety.start()

    async def scenario() -> tuple[bool, int, int]:
        service = InferenceApp(gated)
        slow = asyncio.create_task(asgi(service, "POST", "/predict", ZEROS))
        await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait, 60)
        status = (await asyncio.wait_for(asgi(service, "GET", "/health"), 60))[0]
        answered_during_run = not gated.gate.is_set()
        gated.gate.set()
        return answered_during_run, status, (await slow)[0]

    try:
        assert asyncio.run(scenario()) == (True, 200, 200)
    finally:
        safety.cancel()


def test_a_run_over_the_time_limit_is_answered_504_and_a_full_pool_503(gated):
    async def scenario() -> list[tuple[int, dict, dict]]:
        limits = ServiceLimits(workers=1, waiting=0, inference_timeout=0.5)
        service = InferenceApp(gated, limits=limits)
        first = asyncio.create_task(asgi(service, "POST", "/predict", ZEROS))
        await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait, 60)
        second = await asgi(service, "POST", "/predict", ZEROS)  # the one worker is busy
        answers = [second, await first]
        gated.gate.set()
        return answers

    (busy, busy_body, busy_headers), (late, late_body, _) = asyncio.run(scenario())
    assert busy == 503 and "busy" in busy_body["error"] and busy_headers[b"retry-after"] == b"1"
    assert late == 504 and "did not answer within 0.5 s" in late_body["error"]


def test_a_model_bomb_is_stopped_and_its_worker_serves_the_next_request(device):
    """A model that loops ~forever on large inputs, installed past the device check: the run is
    stopped at the time limit, so the pool's one worker is free for the next request."""
    files = make_bundle(hostile.input_loop_model(), bundle_config(2), device.private_key)
    key = load_public_key(device.public_key)
    ModelStore(device.store).install(files, key, device_check=lambda *_, **__: None)
    predictor = Predictor(device.store, device.public_key, warmup=1, check_interval=None)

    async def scenario() -> list[int]:
        limits = ServiceLimits(workers=1, waiting=4, inference_timeout=1.0)
        service = InferenceApp(predictor, limits=limits)
        bomb = (await asgi(service, "POST", "/predict", np.full((1, 64), 100.0).tolist()))[0]
        return [bomb, (await asgi(service, "POST", "/predict", ZEROS))[0]]

    assert asyncio.run(scenario()) == [504, 200]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"shape": [2, 32]}, "shape [2, 32] does not fit: expected [N, 1, 8, 8] or [N, 64]"),
        ({"shape": [1, 64, 1]}, "shape [1, 64, 1] does not fit"),
        ({"shape": [64]}, "shape [64] does not fit"),
        ({"data": [True] * 64}, "true (a boolean) is not a number"),
        ({"data": ["0.5"] * 64}, '"0.5" (a string) is not a number'),
    ],
)
def test_v2_refuses_a_shape_or_values_the_model_does_not_take(device, tensor, message):
    """[2, 32] holds 64 values: it was read as one sample, against the declared batch of 2."""
    predictor = Predictor(device.store, device.public_key, warmup=0, check_interval=None)
    good = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    request = {"inputs": [{**good, **tensor}]}
    status, body, _ = asyncio.run(
        asgi(InferenceApp(predictor), "POST", "/v2/models/test/infer", request)
    )
    assert status == 400 and message in body["error"], body
    status, body, _ = asyncio.run(
        asgi(InferenceApp(predictor), "POST", "/v2/models/test/infer", {"inputs": [good]})
    )
    assert status == 200 and body["outputs"][1]["shape"] == [1]


def test_v2_refuses_an_output_named_twice_and_answers_all_for_none_named(device):
    predictor = Predictor(device.store, device.public_key, warmup=0, check_interval=None)
    good = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}

    def infer(outputs):
        request = {"inputs": [good], "outputs": outputs}
        return asyncio.run(asgi(InferenceApp(predictor), "POST", "/v2/models/test/infer", request))

    status, body, _ = infer([{"name": "label"}, {"name": "label"}])
    assert status == 400 and "outputs must name each wanted output once" in body["error"], body
    status, body, _ = infer([])
    assert status == 200 and [o["name"] for o in body["outputs"]] == list(predictor.output_names)


class FakeConnection:
    """What the guard touches of a connection: its count flag and its transport."""

    counted = False

    def __init__(self) -> None:
        self.closed = False
        self.transport = self

    def close(self) -> None:
        self.closed = True


def test_past_the_cap_a_new_connection_makes_room_or_is_the_one_closed():
    """Silent connections go first, then idle keep-alive ones; one being answered never does."""
    guard = ConnectionGuard(2)
    a, b, c, d, e = (FakeConnection() for _ in range(5))
    assert guard.admit(a) and guard.admit(b)
    guard.answering(a)
    guard.answering(b)
    assert not guard.admit(c)  # both are being answered: the newcomer is the excess
    guard.release(c)  # its connection_lost: it was never counted
    guard.resting(b)  # b was answered and waits on keep-alive
    assert guard.admit(d) and b.closed and not a.closed  # d took b's place
    guard.resting(a)
    assert guard.admit(e) and d.closed and not a.closed  # silent d goes before idle a
    guard.release(b)
    guard.release(d)
    assert guard.count == 2 and not a.closed and not e.closed
