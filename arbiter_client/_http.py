"""One small HTTP/1.1 transport for the client: gzip-compressed JSON over a kept-alive connection."""

from __future__ import annotations

import gzip
import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

# Transient: the server may answer differently later (restart, overload, proxy hiccup).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class ArbiterError(Exception):
    """The server refused a request for a reason a retry will not fix (bad token, bad batch)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class TransientError(Exception):
    """The server could not be reached or answered with a retryable status."""


def base_url(url: str) -> str:
    """Accept "http://host:8000", "http://host:8000/" or "http://host:8000/api" alike."""
    url = url.rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    return url


def encode_body(payload: Any) -> bytes:
    """JSON then gzip level 1: metrics compress ~5x and level 1 costs little CPU in the training process."""
    raw = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return gzip.compress(raw, compresslevel=1)


class Connection:
    """A kept-alive connection to one Arbiter server; thread-safe by a lock (one request at a time)."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base = base_url(url)
        parts = urlsplit(self.base)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path
        self._token = token
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def clone(self) -> Connection:
        """Another connection to the same server with the same token (for requests in parallel)."""
        return Connection(self.base, self._token, timeout=self._timeout)

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def request(self, method: str, path: str, payload: Any = None, *, body: bytes | None = None) -> Any:
        """Send one request; return the decoded JSON answer.

        Raises TransientError when a retry may succeed, ArbiterError when it will not.
        """
        if body is None and payload is not None:
            body = encode_body(payload)
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers["Content-Encoding"] = "gzip"
        with self._lock:
            try:
                conn = self._connect()
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                # A dropped keep-alive connection looks like this too: reconnect on the next try.
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        text = data.decode("utf-8", "replace")
        if resp.status in RETRY_STATUSES:
            raise TransientError(f"HTTP {resp.status}: {text[:200]}")
        if resp.status >= 400:
            raise ArbiterError(resp.status, text)
        return json.loads(text) if text else None
