"""Suite-wide fixtures: users per role, logged-in clients, a real Celery worker, a real ASGI server, Chromium.

Everything here talks to the real services: PostgreSQL (DATABASE_URL), Redis (REDIS_URL) — see tests/settings.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client

from arbiter.accounts.models import Role, User
from arbiter.server import web_server_command
from tests.factories import TEST_PASSWORD, UserFactory

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _worktree_status() -> list[str] | None:
    """`git status --porcelain` of the checkout (untracked files one by one); None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted(out.stdout.splitlines())


# CI (and anyone who sets ARBITER_CHECK_CLEAN_TREE=1) fails a test run that leaves files in the checkout:
# state belongs under ARBITER_VAR_DIR or a temporary directory. Off by default on a developer's machine,
# where files edited while the suite runs would be blamed on it.
_CHECK_CLEAN_TREE = (
    os.environ.get("CI", "").lower() in {"1", "true"} or os.environ.get("ARBITER_CHECK_CLEAN_TREE") == "1"
)
_status_at_start: list[str] | None = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _CHECK_CLEAN_TREE or _status_at_start is None:
        return
    after = _worktree_status()
    if after is None:
        return
    left = sorted(set(after) - set(_status_at_start))
    if left:
        session.config.get_terminal_writer().line(
            "\nThe test run changed the checkout (git status --porcelain):\n  " + "\n  ".join(left), red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail fast, with the fix, when a service the suite needs is not running."""
    global _status_at_start
    if _CHECK_CLEAN_TREE:
        _status_at_start = _worktree_status()
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("postgresql") and not _reachable(f"pg://{db['HOST']}:{db['PORT'] or 5432}", 5432):
        pytest.exit("PostgreSQL is not reachable at DATABASE_URL; run `make services` (or `make test`).", 2)
    if settings.REDIS_URL and not _reachable(settings.REDIS_URL, 6379):
        pytest.exit("Redis is not reachable at REDIS_URL; run `make services` (or `make test`).", 2)
    if settings.REDIS_URL:
        import redis

        # Each test session owns its Redis database number: start from an empty broker and channel layer.
        redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(scope="session", autouse=True)
def _release_test_database(django_db_setup: None) -> Iterator[None]:
    """Let pytest drop the test database: close this process's connections and pools, then end the sessions
    that executor threads (asgiref's sync_to_async, the in-process Celery worker) still hold open."""
    yield
    settings_dict = connections["default"].settings_dict
    for connection in connections.all(initialized_only=True):
        connection.close()
        if hasattr(connection, "close_pool"):
            connection.close_pool()
    if settings_dict["ENGINE"].endswith("postgresql"):
        import psycopg

        admin = current_database_url().rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [settings_dict["NAME"]],
            )


# ---------- users and clients ----------


@pytest.fixture
def researcher(db: None) -> User:
    return UserFactory(username="rita", role=Role.RESEARCHER)


@pytest.fixture
def other_researcher(db: None) -> User:
    return UserFactory(username="oscar", role=Role.RESEARCHER)


@pytest.fixture
def annotator(db: None) -> User:
    return UserFactory(username="anna", role=Role.ANNOTATOR)


@pytest.fixture
def admin_user(db: None) -> User:
    return UserFactory(username="ada", role=Role.ADMIN, is_superuser=True)


@pytest.fixture
def client_for() -> Callable[[User | None], Client]:
    """`client_for(user)` → a Client logged in as that user (`None` → anonymous)."""

    def make(user: User | None) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client

    return make


# ---------- processes that talk to the test database ----------


def current_database_url() -> str:
    """DATABASE_URL of the database the tests run against (test_<name> on PostgreSQL)."""
    db = connections["default"].settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"  # NAME is absolute, so this reads sqlite:////abs/path
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def platform_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess of the platform (web server, worker) pointed at the test database."""
    # Never DJANGO_ALLOW_ASYNC_UNSAFE (set in this process while a browser is open): a server must keep
    # Django's guard, so a synchronous ORM call in async code fails the test that reaches it.
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", ASYNC_UNSAFE}}
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=current_database_url(),
        REDIS_URL=settings.REDIS_URL,
        ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        # libpq's application_name: lets a test find (and kill) the server's own database sessions.
        PGAPPNAME="arbiter-test-server",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout} s")


class ASGIServer:
    """A real uvicorn process (the production server) serving arbiter.asgi on a free port, against the test database."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, mail_dir: Path | None = None) -> None:
        self.proc = proc
        self.port = port
        self.mail_dir = mail_dir  # e-mails it sends, one file each (Django's file-based backend)
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def asgi_server(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ASGIServer]:
    """Session-wide web server. Tests that use it need committed data: mark them `transactional_db`."""
    port = free_port()
    folder = tmp_path_factory.mktemp("asgi")
    log = (folder / "server.log").open("wb")
    env = platform_env(
        ARBITER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(folder / "mail"),
        # uvicorn's default, spelled out: X-Forwarded-For is believed from the local peer only, so a browser
        # context that sends one stands for a client behind a trusted proxy (tests/browser/test_login.py).
        FORWARDED_ALLOW_IPS="127.0.0.1",
    )
    proc = subprocess.Popen(
        web_server_command(host="127.0.0.1", port=port),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc)
        yield ASGIServer(proc, port, mail_dir=folder / "mail")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def celery_worker_app(transactional_db: None) -> Iterator[Any]:
    """A real Celery worker (threads pool, in this process) consuming the Redis broker: no eager mode."""
    from celery.contrib.testing.worker import start_worker

    from arbiter.celery import Queue, app

    app.loader.import_default_modules()
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        queues=[Queue.DEFAULT.value, Queue.GPU.value],
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as worker:
        yield worker


# ---------- browser ----------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make test` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop marked running in the test thread, so Django's
    # async-safety guard would refuse every ORM call the browser test itself makes (fixtures,
    # assertions on the database). Lift the guard only while a browser is open, only in this process:
    # servers started by the suite never see it (platform_env drops it), and browser tests run last.
    previous = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop(ASYNC_UNSAFE, None)
        else:
            os.environ[ASYNC_UNSAFE] = previous


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def login_page() -> Callable[[Any, str, User], Any]:
    """`login_page(page, base_url, user)`: log in through the real form, return the page."""

    def login(page: Any, base_url: str, user: User) -> Any:
        page.goto(f"{base_url}/accounts/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", TEST_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state("domcontentloaded")
        return page

    return login


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run browser tests last: Playwright's sync API leaves an event loop marked running in the main thread,
    which breaks asyncio-based tests (websocket communicators) that would run after it."""
    items.sort(key=lambda item: "browser" in getattr(item, "fixturenames", ()))
