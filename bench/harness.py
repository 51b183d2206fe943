"""What the benches share: the production web server as arbiter/server.py starts it, and the closing table
(each measure beside its budget, whether it is met, and the command that printed it)."""

from __future__ import annotations

import http.client
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_LOG = Path(tempfile.gettempdir()) / "arbiter_bench_server.log"


class Server:
    """The production web server: arbiter/server.py's command line with `workers` uvicorn processes
    (docker/Dockerfile runs WEB_WORKERS=2; runplatform runs 1). Its output goes to SERVER_LOG."""

    def __init__(self, workers: int, env: dict[str, str]) -> None:
        import psutil

        from arbiter.server import web_server_command

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        with SERVER_LOG.open("ab") as log:
            self.proc = subprocess.Popen(
                web_server_command(host="127.0.0.1", port=self.port, workers=workers),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 90
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"the web server did not start; see {SERVER_LOG}") from None
                time.sleep(0.3)
        time.sleep(1.0 if workers > 1 else 0.0)  # every worker up, not only the first to answer
        top = psutil.Process(self.proc.pid)
        self.processes = [top, *top.children(recursive=True)]
        self.pids = {p.pid for p in self.processes}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass(frozen=True)
class Row:
    measure: str
    result: str
    budget: str = ""  # empty: reported, no budget
    met: bool | None = None  # None: nothing to judge (no budget, or a detail row)


def session_backend() -> str:
    """The backend a real login records in the session: the first configured one that can load users
    (django-axes' backend, listed first, only guards authenticate())."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    return next(p for p in settings.AUTHENTICATION_BACKENDS if hasattr(import_string(p), "get_user"))


def command_line() -> str:
    """How this table was produced, to quote beside any figure taken from it (README)."""
    env = " ".join(f"{k}=..." for k in ("DATABASE_URL", "REDIS_URL") if k in os.environ)
    return " ".join(filter(None, [env, ".venv/bin/python", shlex.join(sys.argv)]))


def print_table(title: str, rows: list[Row], *, notes: tuple[str, ...] | list[str] = ()) -> None:
    cols = ("measure", "result", "budget", "met")
    cells = [(r.measure, r.result, r.budget, {True: "yes", False: "NO", None: ""}[r.met]) for r in rows]
    widths = [max(len(c[i]) for c in [cols, *cells]) for i in range(4)]
    print(f"\n{title}")
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
    for note in notes:
        print(note)
    print(f"{os.cpu_count()} cores; command: {command_line()}")
    sys.stdout.flush()
