"""The worker's HTTP calls: the worker API (its credential) and the run-token ingest API (the engine's output)."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from typing import Any


class Refused(Exception):
    """A 4xx answer: retrying will not help."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('error', body)}")
        self.status, self.body = status, body


class Api:
    def __init__(self, base: str, token: str, *, attempts: int = 6, timeout: float = 30) -> None:
        self.base, self.token, self.attempts, self.timeout = base.rstrip("/"), token, attempts, timeout

    def post(self, path: str, body: dict[str, Any], *, token: str | None = None) -> dict[str, Any]:
        """POST JSON; retries connection errors and 5xx with jittered back-off; a 4xx raises Refused."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token or self.token}"}
        delay = 0.5
        for attempt in range(self.attempts):
            request = urllib.request.Request(self.base + path, data=data, headers=headers, method="POST")  # noqa: S310 - our API URL
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - our API URL
                    result: dict[str, Any] = json.loads(answer.read() or b"{}")
                    return result
            except urllib.error.HTTPError as error:
                payload = _json(error.read())
                if error.code < 500 and error.code != 429:
                    raise Refused(error.code, payload) from None
                last: Exception = error
            except (urllib.error.URLError, OSError) as error:
                last = error
            if attempt + 1 < self.attempts:
                time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, 10)
        raise ConnectionError(f"{path}: {last}")


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"error": raw[:200].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"error": str(value)}
