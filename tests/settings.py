"""Test settings: the real services (PostgreSQL, Redis) by default, fast password hashing."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
# Playwright's sync API runs an event loop in the test thread; Django's async-safety guard would
# then refuse every ORM call the test makes itself. The tests are single-threaded by design.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from arbiter.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # tests only: speed
DEBUG = False
# Close connections after each request/task, so worker threads and servers never hold the test
# database open when pytest drops it.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
