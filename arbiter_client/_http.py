"""One small HTTP/1.1 transport for the client: JSON (gzip where it pays) over a kept-alive connection.

What can go wrong is told apart, because the sender treats each differently:
- `Unreachable`: no answer at all (refused, reset, timeout). Nothing can be delivered until the
  server is back, so the sender pauses everything and retries with back-off.
- `ServerError`: an answer with a 5xx or 429 status. Maybe this one request, maybe the server:
  the request is retried a few times, then given up (the rest keeps flowing).
- `ArbiterError`: a 4xx. Retrying the same request cannot help: it is given up at once.
A kept-alive connection the server has closed (its idle timeout, a restart) is not an error: the
request is sent again once on a fresh connection, quietly, as urllib3 does for idempotent calls.
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

# uvicorn closes a connection idle for 5 s (its keep-alive default); reconnecting before that avoids
# sending a request into a socket the server is closing.
IDLE_RECONNECT_S = 4.0
BUSY_STATUSES = frozenset({429, 503})  # "come back later": retried longer, and Retry-After is honoured


class ArbiterError(Exception):
    """The server refused a request for a reason a retry will not fix (bad token, bad batch)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {_message(body)}")
        self.status = status
        self.body = body

    @property
    def field(self) -> str | None:
        """The request field the server named as the culprit (`gpus`, `config.learning_rate`), if any."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return None
        field = data.get("field") if isinstance(data, dict) else None
        return field if isinstance(field, str) else None


class TransientError(Exception):
    """A failure a later retry may not see: `Unreachable` or `ServerError`."""


class Unreachable(TransientError):
    """No answer from the server: connection refused, reset or timed out."""


class ServerError(TransientError):
    """The server answered 5xx or 429."""

    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {_message(body)}")
        self.status = status
        self.body = body
        self.retry_after = retry_after

    @property
    def busy(self) -> bool:
        return self.status in BUSY_STATUSES


def _message(body: str) -> str:
    """The server's `error` (and `field`) from a JSON error body; else the start of the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].strip() or "(empty answer)"
    if isinstance(data, dict) and "error" in data:
        field = f" [{data['field']}]" if data.get("field") else ""
        return f"{data['error']}{field}"[:500]
    return body[:300]


def base_url(url: str) -> str:
    """Accept "http://host:8000", "http://host:8000/" or "http://host:8000/api" alike."""
    url = url.rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    return url


def encode_body(payload: Any, *, compress: bool = True) -> bytes:
    """JSON, then gzip level 1 (text compresses ~5x; level 1 costs little CPU in the training process)."""
    raw = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return gzip.compress(raw, compresslevel=1) if compress else raw


class Response:
    """A finished HTTP exchange: status, headers, body bytes."""

    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.status, self.headers, self.data = status, headers, data

    def json(self) -> Any:
        return json.loads(self.data) if self.data else None


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
        self._used_at = 0.0  # monotonic time the connection last finished a request
        self._lock = threading.Lock()
        self.reconnects = 0  # stale kept-alive connections replaced (not errors)

    def clone(self) -> Connection:
        """Another connection to the same server with the same token (for requests in parallel)."""
        return Connection(self.base, self._token, timeout=self._timeout)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def request(self, method: str, path: str, payload: Any = None, *, body: bytes | None = None) -> Any:
        """Send one request; return the decoded JSON answer. Raises as the module docstring says."""
        return self.exchange(method, path, payload, body=body).json()

    def exchange(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        body: bytes | None = None,
        compressed: bool = True,
        accept: str = "application/json",
        content_type: str = "application/json",
    ) -> Response:
        """Like `request`, but returns the raw answer (for CSV or Parquet downloads)."""
        if body is None and payload is not None:
            body = encode_body(payload, compress=compressed)
        headers = {"Authorization": f"Bearer {self._token}", "Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
            if compressed:
                headers["Content-Encoding"] = "gzip"
        with self._lock:
            resp = self._send(method, self._prefix + path, body, headers)
        if resp.status in BUSY_STATUSES or resp.status >= 500:
            raise ServerError(resp.status, resp.text_for_error(), _retry_after(resp.headers.get("retry-after")))
        if resp.status >= 400:
            raise ArbiterError(resp.status, resp.text_for_error())
        return resp

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> _Answer:
        if self._conn is not None and time.monotonic() - self._used_at > IDLE_RECONNECT_S:
            self._drop()  # the server has probably closed it already: don't find out mid-request
        for attempt in (1, 2):
            reused = self._conn is not None
            if self._conn is None:
                cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.request(method, url, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, http.client.RemoteDisconnected):
                self._drop()
                if reused and attempt == 1:
                    # A kept-alive connection the server closed: say nothing, reconnect, send again
                    # (every write of this API is idempotent, so a request that did land is harmless).
                    self.reconnects += 1
                    continue
                raise Unreachable(f"connection to {self.base} was closed without an answer") from None
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self._drop()
                raise Unreachable(f"{self.base} unreachable ({type(exc).__name__}: {exc})") from None
            self._used_at = time.monotonic()
            if resp.will_close:
                self._drop()
            return _Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        raise AssertionError("unreachable")  # the loop returns or raises


class _Answer(Response):
    def text_for_error(self) -> str:
        return self.data.decode("utf-8", "replace")


def _retry_after(raw: str | None) -> float | None:
    try:
        return max(0.0, min(300.0, float(raw))) if raw else None
    except ValueError:
        return None
