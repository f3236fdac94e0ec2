"""A small local HTTP JSON service over a Predictor: POST /predict, GET /health."""

from __future__ import annotations

import json
import logging
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fedge.client.runtime.inputs import from_json
from fedge.client.runtime.predictor import InputError, Predictor

log = logging.getLogger("fedge.runtime")
MAX_BODY = 16 * 1024 * 1024  # bytes; larger requests are refused


def make_server(
    predictor: Predictor, host: str = "127.0.0.1", port: int = 8765
) -> ThreadingHTTPServer:
    """An HTTP/1.1 server (keep-alive) bound to host:port; call serve_forever() to run it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm
            # and the client's delayed ACK add ~40 ms to every keep-alive response.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
            if self.path != "/health":
                self._reply(
                    HTTPStatus.NOT_FOUND,
                    {"error": f"no route {self.path}; try GET /health or POST /predict"},
                )
                return
            predictor.reload_if_newer()
            self._reply(
                HTTPStatus.OK,
                {
                    "status": "ok",
                    "model_id": predictor.model_id,
                    "version": predictor.version,
                    "input_shape": list(predictor.sample_shape),
                    "last_error": predictor.last_error,
                },
            )

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                self._reply(
                    HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}; try POST /predict"}
                )
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._reply(
                    HTTPStatus.BAD_REQUEST, {"error": f"body must be 1..{MAX_BODY} bytes of JSON"}
                )
                return
            body = self.rfile.read(length).decode(errors="replace")
            try:
                result = predictor.predict(from_json(body, "request body")).to_json()
            except InputError as err:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})
                return
            self._reply(HTTPStatus.OK, result)

        def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s " + format, self.address_string(), *args)

    return ThreadingHTTPServer((host, port), Handler)
