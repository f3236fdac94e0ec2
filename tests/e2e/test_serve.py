"""`fedge serve` as a process, torch blocked: framing, limits, timeouts, auth, bad bundles, v2."""

import json
import select
import selectors
import socket
import time

import numpy as np
import pytest

from fedge.compression.bundle import generate_keypair, load_private_key, make_bundle
from fedge.core.data import load_dataset
from tests.client.conftest import Device, bundle_config
from tests.e2e.serving import Reader, call, connect, request, running, wait_for

RAW = load_dataset("digits").x[:8]
LIVE = request("GET", "/v2/health/live")


@pytest.fixture(scope="module")
def device_m(tmp_path_factory, student_models) -> Device:
    root = tmp_path_factory.mktemp("serve")
    private_path, public_path = generate_keypair(root / "keys")
    dev = Device(root / "store", public_path, load_private_key(private_path), student_models[1])
    dev.install(1)
    return dev


@pytest.fixture(scope="module")
def server(device_m):
    with running(device_m.store, device_m.public_key, "--request-timeout", "2") as srv:
        yield srv


@pytest.mark.parametrize(
    "first",
    [
        request("POST", "/nothing", request("POST", "/predict", b'{"inputs": [[1]]}')),
        request("POST", "/predict", b"{" + request("GET", "/health")),
        request("GET", "/health", request("GET", "/health")),  # a GET with a body
    ],
)
def test_a_request_hidden_in_a_body_never_runs(server, first):
    with connect(server.port) as sock:
        sock.sendall(first + LIVE)
        reader = Reader(sock)
        statuses = [reader.response()[0], reader.response()]
    assert statuses[0] in (200, 400, 404)
    assert statuses[1][0] == 200 and json.loads(statuses[1][2]) == {"live": True}


def test_pipelined_requests_are_answered_in_order(server):
    with connect(server.port) as sock:
        sock.sendall(request("GET", "/health") + LIVE + request("GET", "/v2/health/ready"))
        reader = Reader(sock)
        bodies = [json.loads(reader.response()[2]) for _ in range(3)]
    assert bodies[0]["status"] == "ok" and bodies[1] == {"live": True}
    assert bodies[2] == {"ready": True}


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (request("POST", "/predict", b"x", {"Content-Length": "abc"}), 400, b"Invalid HTTP"),
        (request("POST", "/predict", b"[[1e400]]"), 400, b"NaN or Inf"),
        (request("POST", "/predict", b"[" * 100_000 + b"]" * 100_000), 400, b"too deeply"),
        (request("POST", "/predict", b"[[" + b"9" * 5000 + b"]]"), 400, b"NaN or Inf"),
        (request("POST", "/predict", b"{}"), 400, b"expected a list"),
        (request("POST", "/predict"), 400, b"no body"),
        (request("GET", "/predict"), 405, b"use POST"),
        (request("GET", "/x", headers={"X-Big": "a" * 20_000}), 400, b"Invalid HTTP"),
        (request("POST", "/predict", b"1", {"Content-Length": str(5 << 20)}), 413, b"at most"),
    ],
)
def test_bad_requests_get_an_answer(server, raw, status, message):
    with connect(server.port) as sock:
        sock.sendall(raw)
        answer = Reader(sock).response()
    assert answer is not None and answer[0] == status and message in answer[2], answer
    assert call(server.port, "GET", "/v2/health/live")[0] == 200  # and it keeps answering


def test_keep_alive_round_trips_do_not_wait_for_delayed_acks(server):
    """Headers and body are two writes: without TCP_NODELAY each keep-alive answer waits ~40 ms
    for the client's delayed ACK, while a fresh connection (quick ACKs at its start) does not.

    Relative and interleaved: a keep-alive round trip vs a fresh connection's (which also pays
    for connecting), side by side; the bug makes it ~100x, not < 3x (the socket option itself:
    tests/client/test_serve.py; the latency figure: benchmarks/device.py).
    """
    post = request("POST", "/predict", json.dumps({"inputs": RAW[:1].tolist()}).encode())
    keep_alive, fresh = [], []
    with connect(server.port) as sock:
        reader = Reader(sock)
        for _ in range(20):
            start = time.perf_counter()
            sock.sendall(post)
            assert reader.response()[0] == 200
            keep_alive.append(time.perf_counter() - start)
            start = time.perf_counter()
            with connect(server.port) as other:
                other.sendall(post)
                assert Reader(other).response()[0] == 200
            fresh.append(time.perf_counter() - start)
    assert np.median(keep_alive) < 3 * np.median(fresh), (keep_alive, fresh)


def test_200_simultaneous_connections_are_all_served(server):
    """All answered, however long it takes here (the figure: benchmarks/device.py's burst)."""
    socks = [socket.socket() for _ in range(200)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))
        selector = selectors.DefaultSelector()
        for sock in socks:
            selector.register(sock, selectors.EVENT_WRITE)
        pending, answered = set(socks), 0
        heads = {sock: b"" for sock in socks}
        while pending:
            events = selector.select(timeout=60)
            assert events, f"{answered} of 200 answered, then nothing for 60 s"  # a hang
            for key, mask in events:
                sock = key.fileobj
                if mask & selectors.EVENT_WRITE:
                    sock.send(LIVE)
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                data = sock.recv(4096)
                heads[sock] += data
                if b"\r\n" in heads[sock] or not data:  # a status line, or closed without one
                    assert heads[sock].startswith(b"HTTP/1.1 200 "), heads[sock][:100]
                    answered += 1
                    pending.discard(sock)
                    selector.unregister(sock)
    finally:
        for sock in socks:
            sock.close()
    assert answered == 200


def test_slow_drip_and_idle_connections_are_dropped(server):
    """500 connections that never finish a request: the server closes them (--request-timeout 2:
    a deadline from the first byte, so a byte now and then does not keep one open)."""
    drips = [connect(server.port) for _ in range(500)]
    try:
        for sock in drips[::2]:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")  # half never send a byte
        assert call(server.port, "GET", "/health")[0] == 200  # others are still served
        dripping, silent = drips[0:20:2], drips[1:20:2]
        still_open = set(dripping + silent)
        deadline = time.monotonic() + 60  # bounds a hang: an idle timeout would never fire
        while still_open:
            assert time.monotonic() < deadline, f"{len(still_open)} of 20 still open after 60 s"
            for sock in still_open & set(dripping):
                try:
                    sock.sendall(b"a")  # keeps an idle timer from ever expiring
                except (BrokenPipeError, ConnectionResetError):
                    still_open.discard(sock)
            readable, _, _ = select.select(list(still_open), [], [], 0.5)
            still_open -= {sock for sock in readable if Reader(sock).closed()}
    finally:
        for sock in drips:
            sock.close()


def test_bodies_are_capped_and_memory_stays_bounded(server):
    big = json.dumps({"inputs": np.resize(RAW, (11000, 64)).round(3).tolist()}).encode()
    assert 3 << 20 < len(big) < 4 << 20
    start = server.rss_kb()
    for _ in range(3):
        with connect(server.port, timeout=30) as sock:
            sock.sendall(request("POST", "/predict", big))
            status, _, body = Reader(sock).response()
        assert status == 200 and len(json.loads(body)["labels"]) == 11000
    assert server.rss_kb() - start < 150_000, f"{start} KB -> {server.rss_kb()} KB"


def test_health_answers_while_a_bad_bundle_sits_in_the_store(server, device_m):
    """Written behind the installer's back: the server keeps serving and reports it."""
    store = device_m.store
    bad = make_bundle(device_m.model_bytes, bundle_config(5), device_m.private_key)
    manifest = json.loads(bad["manifest.json"])
    del manifest["preprocessing"]["input_shape"]
    bad["manifest.json"] = json.dumps(manifest).encode()
    bad["manifest.sig"] = device_m.private_key.sign(bad["manifest.json"])
    (store / "versions" / "5").mkdir()
    for name, data in bad.items():
        (store / "versions" / "5" / name).write_bytes(data)
    (store / "CURRENT").write_text("5")
    wait_for(lambda: call(server.port, "GET", "/health")[1]["last_error"] is not None)
    status, health = call(server.port, "GET", "/health")
    assert status == 200 and health["version"] == 1 and "input_shape" in health["last_error"]
    assert call(server.port, "POST", "/predict", {"inputs": RAW[:1].tolist()})[0] == 200
    device_m.install(6)  # a good newer bundle is picked up
    wait_for(lambda: call(server.port, "GET", "/health")[1]["version"] == 6)


def test_the_open_inference_protocol(server):
    port = server.port
    name = call(port, "GET", "/health")[1]["model_id"]
    status, meta = call(port, "GET", f"/v2/models/{name}")
    assert status == 200 and meta["inputs"][0] == {
        "name": "input",
        "datatype": "FP32",
        "shape": [-1, 1, 8, 8],
    }
    tensor = {
        "name": "input",
        "shape": [2, 64],
        "datatype": "FP32",
        "data": RAW[:2].ravel().tolist(),
    }
    status, out = call(port, "POST", f"/v2/models/{name}/infer", {"id": "r1", "inputs": [tensor]})
    assert status == 200 and out["id"] == "r1" and out["model_name"] == name
    probabilities, label = out["outputs"]
    assert probabilities["shape"] == [2, 10] and len(probabilities["data"]) == 20
    assert label["datatype"] == "INT64" and label["shape"] == [2]
    legacy = call(port, "POST", "/predict", {"inputs": RAW[:2].tolist()})[1]
    assert label["data"] == legacy["labels"]
    nested = {**tensor, "shape": [2, 1, 8, 8], "data": RAW[:2].reshape(2, 1, 8, 8).tolist()}
    request_ = {"inputs": [nested], "outputs": [{"name": "label"}]}
    status, out = call(
        port, "POST", f"/v2/models/{name}/versions/{meta['versions'][0]}/infer", request_
    )
    assert status == 200 and [o["name"] for o in out["outputs"]] == ["label"]
    for bad, message in [
        ({**tensor, "datatype": "INT8"}, "is not 'FP32'"),
        ({**tensor, "shape": [3, 64]}, "needs 192"),
        ({**tensor, "name": "x"}, "is not 'input'"),
        ({**tensor, "data": [1e300] * 128}, "NaN or Inf"),  # inf as float32
    ]:
        status, out = call(port, "POST", f"/v2/models/{name}/infer", {"inputs": [bad]})
        assert status == 400 and message in out["error"], out
    assert call(port, "GET", "/v2/models/other")[0] == 404
    assert (
        call(port, "POST", f"/v2/models/{name}/versions/999/infer", {"inputs": [tensor]})[0] == 404
    )
    assert call(port, "GET", "/v2/health/ready") == (200, {"ready": True})


def test_a_token_guards_everything_but_the_probes(device_m, tmp_path):
    (tmp_path / "token").write_text("s3cret-token-of-some-length\n")
    with running(
        device_m.store, device_m.public_key, "--token-file", str(tmp_path / "token")
    ) as srv:
        assert call(srv.port, "GET", "/health")[0] == 401
        wrong = {"Authorization": "Bearer s3cret-token-of-some-lengtX"}
        assert call(srv.port, "GET", "/health", headers=wrong)[0] == 401
        right = {"Authorization": "Bearer s3cret-token-of-some-length"}
        assert call(srv.port, "GET", "/health", headers=right)[0] == 200
        assert call(srv.port, "GET", "/v2/health/live")[0] == 200


def test_fedge_serve_without_torch(device):
    """Health, a prediction, a refused input, and a newer bundle picked up without a restart."""
    with running(device.store, device.public_key) as srv:
        status, health = call(srv.port, "GET", "/health")
        assert status == 200 and health["version"] == 1 and health["model_id"] == "test"
        status, result = call(srv.port, "POST", "/predict", {"inputs": RAW[:2].tolist()})
        assert status == 200 and len(result["labels"]) == 2
        assert len(result["probabilities"][0]) == 10
        status, error = call(srv.port, "POST", "/predict", {"inputs": [[1, 2, 3]]})
        assert status == 400 and "does not fit" in error["error"]
        assert call(srv.port, "POST", "/predict", {"inputs": RAW[:1].tolist()})[0] == 200
        device.install(2)
        wait_for(lambda: call(srv.port, "GET", "/health")[1]["version"] == 2)
