"""Benchmark large item uploads (issue 12 item 6) end to end and print a table: time, rows/s, peak memory.

The path users take: a multipart POST of a JSON Lines file to the upload page of the web server
(uvicorn, arbiter/server.py), which streams the body to disk and queues the import; a Celery worker
(a real one, its own process) reads the stored file as a stream into staged rows and publishes them.
Peak resident memory of the web and worker processes (children included) is sampled every 50 ms.
Also the import service alone in a fresh process (the worker's code without Celery), to separate
parsing/storing from HTTP and queueing.

Usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/2 \
       python bench/bench_import.py [--quick] [--sizes 100000,1000000]
It creates (and drops first) the database `arbiter_bench_import` on that server. A million rows of
~94 bytes is the 94 MB file of the issue.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import command_line, session_backend  # noqa: E402

DB_NAME = "arbiter_bench_import"


def _database_urls() -> tuple[str, str]:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter")
    parsed = urllib.parse.urlparse(base)
    if not parsed.scheme.startswith("postgres"):
        sys.exit("bench_import needs PostgreSQL: set DATABASE_URL=postgres://...")
    return parsed._replace(path="/postgres").geturl(), parsed._replace(path=f"/{DB_NAME}").geturl()


def _fresh_database(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


def write_rows(path: Path, rows: int) -> int:
    """A pairwise JSON Lines file of ~94-byte rows; its size in bytes."""
    with path.open("wb") as out:
        for i in range(rows):
            row = {"prompt": f"Question {i:07d}: which is right?", "chosen": f"Answer {i}: yes.", "rejected": "No."}
            out.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    return path.stat().st_size


class PeakRss:
    """Samples the resident memory of processes (and their children) until stopped; peak in MiB."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> float:
        total = 0
        for proc in self.procs:
            try:
                family = [proc, *proc.children(recursive=True)]
                total += sum(p.memory_info().rss for p in family)
            except psutil.Error:
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self.start = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _multipart(path: Path, csrf: str) -> tuple[Path, str]:
    """The upload form's body on disk (so the client streams it too): fields, then the file."""
    boundary = uuid.uuid4().hex
    body = path.with_suffix(".multipart")
    with body.open("wb") as out, path.open("rb") as src:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n{csrf}\r\n'.encode()
        )
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/x-ndjson\r\n\r\n".encode()
        )
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the web server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listened on port {port}")


def child_import(study_id: int, path: str) -> None:
    """The import service alone (what the Celery task runs), in a fresh process: print seconds and peak RSS."""
    import django

    django.setup()
    from evaluation import services
    from evaluation.models import Study

    study = Study.objects.get(pk=study_id)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    report = services.import_items(study=study, data=Path(path))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "created": report.created, "start_mib": start_rss, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="row counts to upload, in order")
    parser.add_argument("--quick", action="store_true", help="only the 100,000-row upload")
    parser.add_argument("--child", nargs=2, metavar=("STUDY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_import(int(args.child[0]), args.child[1])
        return
    if args.quick:
        args.sizes = "100000"

    admin_url, bench_url = _database_urls()
    _fresh_database(admin_url)
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/2"),
        "DJANGO_SETTINGS_MODULE": "arbiter.settings",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-import-"))
    env["ARTIFACT_ROOT"] = str(workdir / "artifacts")
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.middleware.csrf import _get_new_csrf_string  # type: ignore[attr-defined]

    from arbiter.accounts.models import Role, User
    from arbiter.server import web_server_command
    from evaluation import services
    from evaluation.models import ImportJob, Item

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    researcher = User.objects.create_user("bench-researcher", password="x", role=Role.RESEARCHER)
    from importlib import import_module

    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = str(researcher.pk)
    store[BACKEND_SESSION_KEY] = session_backend()
    store[HASH_SESSION_KEY] = researcher.get_session_auth_hash()
    store.create()
    csrf = _get_new_csrf_string()

    port = 18000 + os.getpid() % 1000
    web = subprocess.Popen(web_server_command(host="127.0.0.1", port=port), cwd=ROOT, env=env)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "arbiter", "worker", "-Q", "default", "--pool", "solo", "-l", "WARNING"],
        cwd=ROOT,
        env=env,
    )
    results: list[dict[str, Any]] = []
    try:
        _wait_for_port(port, web)
        for rows in [int(s) for s in args.sizes.split(",")]:
            path = workdir / f"items-{rows}.jsonl"
            size = write_rows(path, rows)
            body, content_type = _multipart(path, csrf)
            study = services.create_study(owner=researcher, name=f"bench {rows}", kind="pairwise")
            with PeakRss([web.pid]) as web_rss, PeakRss([worker.pid]) as worker_rss:
                t0 = time.perf_counter()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
                with body.open("rb") as fh:
                    conn.request(
                        "POST",
                        f"/studies/{study.pk}/items/upload/",
                        body=fh,
                        headers={
                            "Content-Type": content_type,
                            "Content-Length": str(body.stat().st_size),
                            "Cookie": f"sessionid={store.session_key}; csrftoken={csrf}",
                            "Referer": f"http://127.0.0.1:{port}/",
                            "Host": "127.0.0.1",
                        },
                    )
                    response = conn.getresponse()
                    response.read()
                answered = time.perf_counter() - t0
                if response.status not in (200, 302):  # 200: read inline (under the background threshold)
                    raise SystemExit(f"upload answered {response.status}")
                job = ImportJob.objects.filter(study=study).latest("id")
                while not (job := ImportJob.objects.get(pk=job.pk)).finished:
                    time.sleep(0.2)
                total = time.perf_counter() - t0
            assert job.status == "done" and Item.objects.filter(study=study).count() == rows, job.message
            results.append(
                {
                    "path": "HTTP upload → Celery worker" if response.status == 302 else "HTTP upload, read inline",
                    "rows": rows,
                    "mb": size / 1e6,
                    "answered": answered,
                    "seconds": total,
                    "web": (web_rss.start, web_rss.peak),
                    "worker": (worker_rss.start, worker_rss.peak),
                }
            )
            alone = services.create_study(owner=researcher, name=f"alone {rows}", kind="pairwise")
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(alone.pk), str(path)],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            child = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(
                {
                    "path": "import service alone",
                    "rows": rows,
                    "mb": size / 1e6,
                    "answered": None,
                    "seconds": child["seconds"],
                    "web": None,
                    "worker": (child["start_mib"], child["peak_mib"]),
                }
            )
            body.unlink()
            path.unlink()
    finally:
        for proc in (web, worker):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    print()
    print(f"{'path':<30} {'rows':>9} {'MB':>6} {'answer s':>9} {'total s':>8} {'rows/s':>8} "
          f"{'web RSS MiB (start→peak)':>25} {'import RSS MiB (start→peak)':>28}")  # fmt: skip
    for r in results:
        web = f"{r['web'][0]:.0f} → {r['web'][1]:.0f}" if r["web"] else "—"
        worker = f"{r['worker'][0]:.0f} → {r['worker'][1]:.0f}"
        answered = f"{r['answered']:.2f}" if r["answered"] is not None else "—"
        print(
            f"{r['path']:<30} {r['rows']:>9} {r['mb']:>6.1f} {answered:>9} {r['seconds']:>8.1f} "
            f"{r['rows'] / r['seconds']:>8.0f} {web:>25} {worker:>28}"
        )
    print(f"{os.cpu_count()} cores; command: {command_line()}")


if __name__ == "__main__":
    main()
