"""One Redis connection pool per process for Django's cache (sessions, cached users)."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import redis


class SharedConnectionPool(redis.ConnectionPool):
    """Django's RedisCache builds a client per ASGI request, and with it a new pool and TCP connection:
    about 8% of an annotator request's CPU. Sharing one pool per URL and process removes that.
    redis-py pools reset themselves after a fork (they check the pid), so prefork workers are safe."""

    _shared: ClassVar[dict[str, redis.ConnectionPool]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.ConnectionPool:  # type: ignore[override]
        with cls._lock:
            pool = cls._shared.get(url)
            if pool is None:
                pool = cls._shared[url] = redis.ConnectionPool.from_url(url, **kwargs)
            return pool
