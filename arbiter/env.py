"""Typed environment readers for settings: every knob comes from the environment and fails loudly when malformed."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [part.strip() for part in raw.split(",") if part.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


def database_from_url(url: str, *, base_dir: Path, pool_max_size: int = 0) -> dict[str, object]:
    """Parse `postgres://user:pass@host:port/name?sslmode=...` or `sqlite:///relative/or/abs.sqlite3`.

    Written here rather than pulling dj-database-url for two schemes; unknown schemes are refused by name.
    """
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///var/db.sqlite3 is relative to the project; sqlite:////abs/db.sqlite3 is absolute.
        raw_path = unquote(parsed.path)
        path = Path(raw_path[1:]) if raw_path.startswith("//") else base_dir / raw_path.lstrip("/")
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(path),
            # WAL + a busy timeout: the embedded web process and worker write concurrently. Every
            # transaction takes the write lock at BEGIN (IMMEDIATE): a deferred one that reads, then
            # writes, fails at once with "database is locked" when another writer committed in
            # between (no busy wait applies to that upgrade); taken at BEGIN, writers queue instead.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if parsed.scheme in {"postgres", "postgresql", "pgsql"}:
        options: dict[str, object] = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if pool_max_size > 0:
            # Under ASGI every request may run in a fresh thread: persistent per-thread connections pile up
            # ("too many clients" at 32 annotators). A bounded psycopg pool per process reuses them instead.
            options["pool"] = {"min_size": 1, "max_size": pool_max_size, "timeout": 30}
        return {
            # Django's backend; its pool checks connections with arbiter.pool's check (arbiter/postgresql/).
            "ENGINE": "arbiter.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")) or "arbiter",
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            # No persistent connections in either case. With the pool, a request hands its connection back at its
            # end. Without it (PgBouncer in front, say) a persistent connection would belong to the thread that
            # opened it, and each of the server's reused request threads would hold one open while idle; Django
            # advises against them under ASGI, so each request opens and closes its own.
            "CONN_MAX_AGE": 0,
            # With the pool, each connection is tested as it is handed out (arbiter/pool.py: a round trip only
            # when its socket shows the server said something): after a database restart no request is
            # served a dead pooled connection.
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
            "TEST": {"NAME": "test_" + (unquote(parsed.path.lstrip("/")) or "arbiter")},
        }
    raise ImproperlyConfigured(
        f"DATABASE_URL scheme {parsed.scheme!r} is not supported (use postgres:// or sqlite:///)"
    )
