"""A running server as the simulator reaches it: the Open Inference Protocol's JSON over HTTP, one
kept-alive connection, and the management API with the token from the environment."""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from typing import Any

import numpy as np

from serve_app.errors import ServeAppError
from serve_app.experiments.traffic import ROUTING_KEY_HEADER
from serve_app.protocol.management import ADMIN_TOKEN_ENV

DATATYPES = {"f": "FP32", "i": "INT64", "b": "BOOL", "O": "BYTES"}


class ServerError(ServeAppError):
    """The server refused a call or cannot be reached (the message says which and why)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Server:
    def __init__(self, url: str, timeout_s: float = 60.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ServerError(f"--url '{url}': give the server's HTTP address, e.g. http://127.0.0.1:8000")
        self.url, self.host, self.port, self.timeout_s = url, parsed.hostname, parsed.port or 80, timeout_s
        self.prefix = parsed.path.rstrip("/")
        self._connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple[int, Any]:
        """(status, the JSON answer); a connection the server closed is opened again once."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self._connection.request(method, self.prefix + path, payload, headers)
                answer = self._connection.getresponse()
                text = answer.read()
                return answer.status, json.loads(text) if text else None
            except (ConnectionError, http.client.HTTPException, OSError) as error:
                self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise ServerError(f"the server at {self.url} cannot be reached: {error}") from None
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None, headers: dict | None = None, missing: str = "") -> Any:
        """The JSON answer of a call that succeeded; missing: what to say on 404 instead of the server's answer."""
        status, answer = self.call(method, path, body, headers)
        if status == 404 and missing:
            raise ServerError(missing, status)
        if status >= 400:
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise ServerError(f"{method} {path}: HTTP {status}: {error}", status)
        return answer

    def manage(self, method: str, path: str, body: Any = None) -> Any:
        token = os.environ.get(ADMIN_TOKEN_ENV)
        if not token:
            raise ServerError(f"changing the server's traffic needs the management token: set {ADMIN_TOKEN_ENV}")
        return self.ok(method, path, body, {"Authorization": f"Bearer {token}"})

    def infer(self, model: str, inputs: dict[str, np.ndarray], request_id: str, routing_key: str) -> dict:
        tensors = [
            {
                "name": name,
                "datatype": DATATYPES[array.dtype.kind],
                "shape": list(array.shape),
                "data": [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()],
            }
            for name, array in inputs.items()
        ]
        body = {"id": request_id, "inputs": tensors}
        return self.ok("POST", f"/v2/models/{model}/infer", body, {ROUTING_KEY_HEADER: routing_key})

    def feedback(self, model: str, request_id: str, reward: float | None = None, label: Any = None) -> None:
        body = {"id": request_id, **({"reward": reward} if label is None else {"label": label})}
        self.ok("POST", f"/v2/models/{model}/feedback", body)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def output(answer: dict, name: str) -> list:
    return next(o["data"] for o in answer["outputs"] if o["name"] == name)
