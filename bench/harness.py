"""What the benches share: the production web server as arbiter/server.py starts it, starting and stopping a
server process, the annotator load driver (bench_annotation.py, bench_labelstudio.py) with its CPU sampling, and
the closing table (each measure beside its budget, whether it is met, and the command that printed it)."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_LOG = Path(tempfile.gettempdir()) / "arbiter_bench_server.log"


class Server:
    """The production web server: arbiter/server.py's command line with `workers` uvicorn processes
    (docker/Dockerfile runs WEB_WORKERS=2; runplatform runs 1). Its output goes to SERVER_LOG."""

    def __init__(self, workers: int, env: dict[str, str], app: str = "") -> None:
        """`app`: another ASGI application under the same command line (bench/annotation_floor.py's)."""
        import psutil

        from arbiter.server import web_server_command

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        with SERVER_LOG.open("ab") as log:
            self.proc = subprocess.Popen(
                web_server_command(host="127.0.0.1", port=self.port, workers=workers, app=app or None),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            if app:  # any answer: the floor has no health route
                conn.connect()
                return True
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200

        wait_for(
            self.proc, healthy, seconds=90, interval=0.3, failure=f"the web server did not start; see {SERVER_LOG}"
        )
        time.sleep(1.0 if workers > 1 else 0.0)  # every worker up, not only the first to answer
        top = psutil.Process(self.proc.pid)
        self.processes = [top, *top.children(recursive=True)]
        self.pids = {p.pid for p in self.processes}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


def wait_for(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], *, seconds: float, interval: float, failure: str
) -> float:
    """Poll `ready` (an OSError counts as not yet) every `interval` s until it answers True; SystemExit(failure)
    when `proc` has exited or `seconds` have passed. Returns the deadline, for any further waiting."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ready():
                return deadline
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(failure)
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 20 s to exit, then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(procs: list[Any]) -> dict[int, float]:
    """User + system CPU seconds so far of each psutil process still alive, by pid."""
    import psutil

    seconds = {}
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a backend that closed took its time with it
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
    return seconds


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two samples by the processes alive at both."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def postgres_processes() -> list[Any]:
    import psutil

    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def postgres_cpu_since(before: dict[int, float], started: float) -> float:
    """CPU seconds of every PostgreSQL process since `before` was sampled (wall time `started`), counting the
    backends opened since then (a pool growing under load, a server that connects per request) from zero.
    A backend that opened and closed in between is not seen: `machine_busy` counts it."""
    import psutil

    total = 0.0
    for proc in postgres_processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            if proc.pid in before:
                total += times.user + times.system - before[proc.pid]
            elif proc.create_time() >= started - 0.5:
                total += times.user + times.system
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy so far (all processes and the kernel; not idle or iowait)."""
    import psutil

    times = psutil.cpu_times()
    # guest time is already inside user/nice; steal is the hypervisor's, not this machine's work
    left_out = sum(getattr(times, f, 0.0) for f in ("idle", "iowait", "guest", "guest_nice", "steal"))
    busy: float = sum(times) - left_out
    return busy


class Refused(Exception):
    """A request the server answered with an unexpected status: the load driver records the timings taken
    (fetch_s, and submit_s when the submit was made) and the message, and stops that annotator."""

    def __init__(self, message: str, fetch_s: float | None, submit_s: float | None = None) -> None:
        super().__init__(message)
        self.fetch_s, self.submit_s = fetch_s, submit_s


# One judgment: (fetch seconds, submit seconds, accepted id); (fetch seconds, None, None) when the fetch found
# nothing left for the annotator. Fetch None: no separate fetch, the previous submit's answer was the page.
Judged = tuple[float | None, float | None, int | None]


def annotator_load(
    annotators: Sequence[str],
    start: Callable[[str], Callable[[], Judged]],
    seconds: float,
    servers: list[Any],
    think: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Each of `annotators` is a thread that calls `start(annotator)` (its connection, before the start line),
    then, from a common start, the judge it returned over and over for `seconds`. With `think` = (lo, hi) each
    first arrives after a uniform 0..hi s and pauses a uniform lo..hi s after every accepted judgment (seeded
    per annotator), as a person reading the next item would. A judge raises Refused for an unexpected answer;
    any other exception is reported too; either stops that annotator. Returns the fetch, submit and whole-loop
    seconds, the accepted ids, the errors, the elapsed seconds and the CPU seconds of this client process, of
    `servers` (psutil processes) and of every PostgreSQL process."""
    fetch: list[float] = []
    submit: list[float] = []
    loop: list[float] = []
    accepted: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(annotators) + 1)
    stop_at = [0.0]

    def annotator(key: str) -> None:
        judge = start(key)
        pause = random.Random(key)
        my_fetch: list[float] = []
        my_submit: list[float] = []
        my_loop: list[float] = []
        my_ok: list[int] = []
        perf = time.perf_counter
        barrier.wait()
        if think is not None:
            # Arrive as people already at work do, not all 32 in the same millisecond: a barrier start
            # made every level begin with one burst that dominated the p95 of a short level.
            time.sleep(pause.uniform(0, think[1]))
        try:
            while perf() < stop_at[0]:
                try:
                    fetch_s, submit_s, ok = judge()
                except Refused as refused:
                    if refused.fetch_s is not None:
                        my_fetch.append(refused.fetch_s)
                    if refused.submit_s is not None:
                        my_submit.append(refused.submit_s)
                        my_loop.append(refused.submit_s + (refused.fetch_s or 0.0))
                    errors.append(str(refused))
                    break
                if fetch_s is not None:
                    my_fetch.append(fetch_s)
                if submit_s is None or ok is None:
                    break  # nothing left for this annotator
                my_submit.append(submit_s)
                my_loop.append(submit_s + (fetch_s or 0.0))
                my_ok.append(ok)
                if think is not None:
                    time.sleep(pause.uniform(*think))
        except Exception as exc:  # reported in the table
            errors.append(repr(exc))
        with lock:
            fetch.extend(my_fetch)
            submit.extend(my_submit)
            loop.extend(my_loop)
            accepted.extend(my_ok)

    threads = [threading.Thread(target=annotator, args=(a,)) for a in annotators]
    for t in threads:
        t.start()
    postgres = postgres_processes()
    client0, servers0, postgres0 = time.process_time(), cpu_seconds(servers), cpu_seconds(postgres)
    machine0, wall0 = machine_busy(), time.time()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client0
    server_cpu = cpu_used(servers0, cpu_seconds(servers))
    db_cpu = postgres_cpu_since(postgres0, wall0)
    machine_cpu = machine_busy() - machine0
    return {
        "fetch": fetch,
        "submit": submit,
        "loop": loop,
        "accepted": accepted,
        "errors": errors,
        "elapsed": elapsed,
        "cpu": {"client": client_cpu, "server": server_cpu, "postgres": db_cpu},
        "machine_cpu": machine_cpu,  # everything busy on the machine: the above, Redis, the kernel, other load
    }


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


def parse_quick(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Adds --quick to an annotator bench's `parser` (which has --items and --seconds), parses the command line,
    and applies it: at most 2,000 items and 5 s per level."""
    parser.add_argument("--quick", action="store_true", help="2,000 items, 5 s per level")
    args = parser.parse_args()
    if args.quick:
        args.items, args.seconds = min(args.items, 2000), min(args.seconds, 5.0)
    return args


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
