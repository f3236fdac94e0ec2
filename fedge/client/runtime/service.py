"""The HTTP API of `fedge serve` as a small ASGI app: fedge's JSON and the Open Inference Protocol.

Routes: GET /health and POST /predict (fedge's own JSON), and KServe's v2 REST protocol:
GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}][/ready] and
POST /v2/models/{name}[/versions/{v}]/infer. With a token, every route but the v2 liveness and
readiness probes needs `Authorization: Bearer <token>`. Bodies are capped per request and in
total; parsing and inference run in a small worker pool with a time limit (`pool`), never on the
event loop. The transport (framing, timeouts, connection limits) is set up in `httpserver`.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from fedge.client.runtime.inputs import from_json, parse_json
from fedge.client.runtime.pool import InferencePool, PoolBusyError, PoolTimeoutError
from fedge.client.runtime.predictor import InputError, Predictor
from fedge.client.runtime.v2 import V2_ROUTE, infer_request, metadata, v2_response

log = logging.getLogger("fedge.runtime")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = [(b"content-type", b"application/json")]
CLOSE = [(b"connection", b"close")]  # after a refusal the unread body is not worth reading
OPEN_ROUTES = ("/v2/health/live", "/v2/health/ready")  # probes: no model details, no token
RETRY = [(b"retry-after", b"1")]


@dataclass(frozen=True)
class ServiceLimits:
    """Per-request and total body limits, and the inference pool's size and time limit."""

    max_body: int = 4 << 20  # bytes in one request body
    body_budget: int = 64 << 20  # bytes of request bodies held at once, all requests together
    workers: int = 2  # threads that parse and run the model (onnxruntime releases the GIL)
    waiting: int = 254  # requests that may wait for a worker; beyond them, 503 at once
    inference_timeout: float = 10.0  # seconds a request may wait and run; then 504, run stopped


class HttpError(Exception):
    """An error response: status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or []


class InferenceApp:
    """The ASGI application over a Predictor."""

    def __init__(
        self, predictor: Predictor, *, token: str | None = None, limits: ServiceLimits | None = None
    ) -> None:
        self.predictor = predictor
        self.limits = limits or ServiceLimits()
        self._auth = None if token is None else f"Bearer {token}".encode()
        self._held = 0  # body bytes held by requests in flight
        self._pool: InferencePool | None = None  # made on the server's event loop, when needed

    @property
    def pool(self) -> InferencePool:
        """The worker pool that parses bodies and runs the model."""
        if self._pool is None:
            limits = self.limits
            self._pool = InferencePool(limits.workers, limits.waiting, limits.inference_timeout)
        return self._pool

    def close(self) -> None:
        """Stop the worker pool (runs under way finish in their threads)."""
        if self._pool is not None:
            self._pool.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request (other ASGI scope types are ignored)."""
        if scope["type"] != "http":
            return
        reserved = [0]
        try:
            status, payload, headers = 200, await self._route(scope, receive, reserved), []
        except HttpError as err:
            status, payload, headers = err.status, {"error": str(err)}, err.headers
        except Exception:
            log.exception("error answering %s %s", scope["method"], scope["path"])
            status, payload, headers = 500, {"error": "internal error; see the server log"}, []
        finally:
            self._held -= reserved[0]
        try:
            body = json.dumps(payload, allow_nan=False).encode()
        except ValueError:
            status, body = 500, b'{"error": "the model produced non-finite outputs"}'
        length = [(b"content-length", str(len(body)).encode())]
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": JSON + length + headers,
        }
        await send(start)
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive, reserved: list[int]) -> Any:
        method, path = scope["method"], scope["path"]
        if path not in OPEN_ROUTES:
            self._authorize(scope)
        predictor = self.predictor
        if path == "/health":
            _allow(method, "GET")
            return {
                "status": "ok",
                "model_id": predictor.model_id,
                "version": predictor.version,
                "input_shape": list(predictor.sample_shape),
                "last_error": predictor.last_error,
            }
        if path == "/predict":
            _allow(method, "POST")
            body = await self._body(scope, receive, reserved)
            return await self._run(
                lambda run: predictor.predict(from_json(body, "request body"), run).to_json()
            )
        if path in ("/v2/health/live", "/v2/health/ready"):
            _allow(method, "GET")
            return {"live": True} if path.endswith("live") else {"ready": True}
        if path == "/v2":
            _allow(method, "GET")
            return {"name": "fedge", "version": "1", "extensions": []}
        match = V2_ROUTE.fullmatch(path)
        if match is None:
            raise HttpError(404, f"no route {path[:100]}; try GET /health, POST /predict or /v2")
        name, version, action = match.group("name", "version", "action")
        if name != predictor.model_id or version not in (None, str(predictor.version)):
            raise HttpError(
                404, f"this server serves model {predictor.model_id} version {predictor.version}"
            )
        if action is None:
            _allow(method, "GET")
            return metadata(predictor)
        if action == "ready":
            _allow(method, "GET")
            return {"name": name, "ready": True}
        _allow(method, "POST")
        body = await self._body(scope, receive, reserved)
        return await self._run(lambda run: self._v2_infer(body, run))

    def _v2_infer(self, body: bytes, run: ort.RunOptions) -> dict[str, Any]:
        request = parse_json(body, "request body")
        x, wanted = infer_request(request, self.predictor)
        return v2_response(self.predictor.predict(x, run), self.predictor, request, wanted)

    def _authorize(self, scope: Scope) -> None:
        if self._auth is None:
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not hmac.compare_digest(given, self._auth):
            # closed after the answer: without a token a client cannot hold a connection open
            challenge = [(b"www-authenticate", b"Bearer"), *CLOSE]
            raise HttpError(401, "missing or wrong bearer token", challenge)

    async def _body(self, scope: Scope, receive: Receive, reserved: list[int]) -> bytes:
        """The request body, refused (413, 503) before reading past the limits."""
        limits = self.limits
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        if not declared.isdigit():  # the HTTP parser refuses these already
            raise HttpError(400, "Content-Length must be a number", CLOSE)
        if int(declared) > limits.max_body:
            raise HttpError(
                413, f"body has {int(declared)} bytes; at most {limits.max_body}", CLOSE
            )
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "client disconnected")
            chunk, more = message.get("body", b""), message.get("more_body", False)
            if reserved[0] + len(chunk) > limits.max_body:
                raise HttpError(413, f"body has more than {limits.max_body} bytes", CLOSE)
            if self._held + len(chunk) > limits.body_budget:
                raise HttpError(503, "too many large requests at once; retry later", CLOSE)
            self._held += len(chunk)
            reserved[0] += len(chunk)
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            raise HttpError(400, "the request has no body; send JSON")
        return body

    async def _run(self, work: Callable[[ort.RunOptions], Any]) -> Any:
        """`work(run_options)` in the pool: InputError is 400, a full pool 503, a timeout 504."""
        pool = self.pool
        try:
            return await pool.run(work)
        except InputError as err:
            raise HttpError(400, str(err)) from None
        except PoolBusyError as err:
            raise HttpError(503, f"the server is busy: {err}; retry later", RETRY) from None
        except PoolTimeoutError:
            raise HttpError(
                504,
                f"the model did not answer within {pool.timeout:g} s (the inference time "
                "limit); the run was stopped",
            ) from None


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"use {allowed} here", [(b"allow", allowed.encode())])
