"""Test settings: the real services (PostgreSQL, Redis) by default, fast password hashing."""

import os
from pathlib import Path

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
# DJANGO_ALLOW_ASYNC_UNSAFE is NOT set here: Django's guard against synchronous ORM calls from async
# code stays on for the suite and for the servers it starts. Only the browser fixtures lift it (see
# tests/conftest.py), for the test thread in which Playwright's sync API keeps an event loop running.

from arbiter.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # tests only: speed
DEBUG = False
# Close connections after each request/task, so worker threads and servers never hold the test
# database open when pytest drops it.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    # A file, not Django's shared in-memory test database: the live server (another process) must
    # open it, and only a file in WAL mode locks the way the embedded platform's database does.
    _name = Path(DATABASES["default"]["NAME"])  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(_name.with_name(f"test-{_name.name}"))}  # noqa: F405
