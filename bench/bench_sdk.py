"""Benchmark the Python SDK and the run-history API on the production web server; print a table.

(a) SDK cost alone: a script calls `run.log({10 keys}, step=i)` 100,000 times (1,000,000 points),
    then `run.log_many` with the same points as arrays, against a null server (answers every
    request at once, in another process). Reported: the script process's CPU per point, which is
    what the SDK takes from a training process, and the wall rate.
(b) Ingest through the SDK into PostgreSQL: the same two scripts against the production server
    (uvicorn, arbiter/server.py) with its database, 1,000,000 points each, every point stored
    (checked). Wall points/s, then where the CPU went: the script, uvicorn, PostgreSQL, Redis,
    and the rest of the machine (other people's work on a shared box).
(c) History: every point of one 100,000-point series in one call, as JSON, CSV and Parquet. Server
    time = the selector plus the encoding, in this process (median and p95 of 20); HTTP = the whole
    round trip through uvicorn; and `Api().run(id).history([key])` into a pandas DataFrame.

Usage: python bench/bench_sdk.py [--quick] [--steps 100000] [--parts abc] [--db arbiter_bench_sdk] [--workers 2]
It creates (and drops first) the database --db on the DATABASE_URL server; REDIS_URL as given
(the live broadcast of each batch goes there). Timings on a shared 2-core machine are noisy:
CPU per point (a) is steadier than wall rates.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import Row, Server, print_table  # noqa: E402

KEYS = 10
INGEST_BUDGET = 500_000  # points/s through the SDK on 2 cores (DESIGN.md)
HISTORY_BUDGET_MS = 100.0  # every point of a 100,000-point series in one call

# The training script of (a) and (b): its own process, so its CPU is measured alone.
SCRIPT = """
import sys, time, resource
import arbiter_client
url, run_id, token, steps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
run = arbiter_client.Run(url=url, run_id=run_id, token=token, owns_status=False, system_interval=0)
names = [f"train/k{k}" for k in range(10)]
rows = [{n: ((s * 7919 + k) % 1000) / 1000 + s * 1e-7 for k, n in enumerate(names)} for s in range(1000)]
t0 = time.perf_counter()
if mode == "log":
    for step in range(steps):
        run.log(rows[step % 1000], step=step)
else:
    import array
    chunk = 10_000
    for start in range(0, steps, chunk):
        n = min(chunk, steps - start)
        cols = {name: array.array("d", [((s * 7919 + k) % 1000) / 1000 for s in range(start, start + n)])
                for k, name in enumerate(names)}
        run.log_many(cols, steps=range(start, start + n))
ok = run.finish(timeout=600)
wall = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(wall, usage.ru_utime + usage.ru_stime, run.report.delivered_points, int(ok))
"""


def null_server(port: int) -> None:
    """HTTP/1.1 keep-alive server that reads each request and answers 200 at once (the SDK measured alone)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(16)
    body = b'{"received":1,"written":1,"seq":1}'
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def serve(conn: socket.socket) -> None:
        f = conn.makefile("rb")
        while f.readline():  # the request line
            length = 0
            while (header := f.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            f.read(length)
            conn.sendall(answer)
        conn.close()

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on {port}")


class CpuShare:
    """CPU seconds spent during a measurement by the script, uvicorn, PostgreSQL, Redis and everything else."""

    def __init__(self, server_pids: set[int]) -> None:
        import psutil

        self.psutil, self.server_pids = psutil, server_pids

    def _sample(self) -> tuple[float, dict[tuple[str, int], float], float, float]:
        ps = self.psutil
        per: dict[tuple[str, int], float] = {}
        for p in ps.process_iter(["name"]):
            name = (p.info["name"] or "").split()[0] if p.info["name"] else ""
            group = "uvicorn" if p.pid in self.server_pids else name
            if group in ("uvicorn", "postgres", "redis-server"):
                try:
                    t = p.cpu_times()
                except ps.Error:
                    continue
                per[(group, p.pid)] = t.user + t.system
        total = ps.cpu_times()
        busy = total.user + total.system + total.nice + getattr(total, "softirq", 0) + getattr(total, "irq", 0)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.perf_counter(), per, busy, children.ru_utime + children.ru_stime

    def __enter__(self) -> CpuShare:
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = self._sample()

    def summary(self) -> str:
        wall = self.end[0] - self.start[0]
        groups = {"uvicorn": 0.0, "postgres": 0.0, "redis-server": 0.0}
        for (group, pid), used in self.end[1].items():
            groups[group] += used - self.start[1].get((group, pid), 0.0)
        script = self.end[3] - self.start[3]
        other = max(0.0, self.end[2] - self.start[2] - script - sum(groups.values()))
        return (
            f"CPU s of {os.cpu_count()} x {wall:.1f} s: script {script:.1f}, uvicorn {groups['uvicorn']:.1f}, "
            f"postgres {groups['postgres']:.1f}, redis {groups['redis-server']:.1f}, rest of machine {other:.1f}"
        )


def run_script(url: str, run_id: int, token: str, steps: int, mode: str) -> tuple[float, float, int, bool]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, url, str(run_id), token, str(steps), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    wall, cpu, delivered, ok = out.stdout.split()
    return float(wall), float(cpu), int(delivered), ok == "1"


def configure(db: str) -> dict[str, str]:
    base = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter"))
    env = dict(os.environ)
    env["DATABASE_URL"] = base._replace(path=f"/{db}").geturl()
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/2")
    env["DJANGO_SETTINGS_MODULE"] = "arbiter.settings"
    env["DEBUG"] = "0"
    env["PYTHONPATH"] = str(ROOT)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "DEBUG")})
    import psycopg

    admin = urlparse(env["DATABASE_URL"])._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    return env


def bench_client(steps: int) -> list[Row]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--null-server", str(port)])
    rows = []
    try:
        wait_port(port)
        for mode, label in (("log", "run.log({10 keys}) per step"), ("many", "run.log_many(10 arrays of 10,000)")):
            wall, cpu, delivered, _ = run_script(f"http://127.0.0.1:{port}", 1, "arb_r_bench", steps, mode)
            assert delivered == steps * KEYS, delivered
            rows.append(
                Row(
                    f"(a) SDK alone, {label}, {steps * KEYS:,} points (null server)",
                    f"{cpu / (steps * KEYS) * 1e6:.2f} µs CPU per point in the script "
                    f"({steps * KEYS / cpu:,.0f} points per CPU-s); wall {steps * KEYS / wall:,.0f} points/s",
                )
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return rows


def bench_ingest(url: str, server_pids: set[int], steps: int) -> tuple[list[Row], int]:
    from arbiter.accounts.models import User
    from training.selectors import stored_points
    from training.services import runs

    owner = User.objects.get(username="bench")
    rows = []
    first_run = 0
    for mode, label in (("log", "run.log({10 keys}) per step"), ("many", "run.log_many(10 arrays of 10,000)")):
        run, token = runs.create_external_run(owner=owner, name=f"sdk-{mode}", config={})
        first_run = first_run or run.id
        with CpuShare(server_pids) as cpu:
            wall, script_cpu, delivered, ok = run_script(url, run.id, token, steps, mode)
        stored = stored_points(run_id=run.id)
        assert ok and delivered == stored == steps * KEYS, (ok, delivered, stored)
        rows.append(
            Row(
                f"(b) ingest through the SDK, {label}, {stored:,} points stored",
                f"{stored / wall:,.0f} points/s ({wall:.1f} s); script {script_cpu / stored * 1e6:.2f} µs CPU/point",
                f">= {INGEST_BUDGET:,} points/s",
                stored / wall >= INGEST_BUDGET,
            )
        )
        rows.append(Row("    where the CPU went", cpu.summary()))
    return rows, first_run


def bench_history(url: str, api_key: str, run_id: int) -> list[Row]:
    import arbiter_client
    from training import history, selectors

    key = "train/k0"
    total = len(selectors.run_history(run_id=run_id, keys=[key])[0].steps)
    encode = {"json": None, "csv": history.as_csv, "parquet": history.as_parquet}
    api = arbiter_client.Api(url, api_key)
    rows = []
    for fmt, fn in encode.items():
        server, http = [], []
        for _ in range(20):
            t = time.perf_counter()
            series = selectors.run_history(run_id=run_id, keys=[key])
            body = history.as_json(run_id=run_id, series=series, start=None, end=None) if fn is None else fn(series)
            server.append(time.perf_counter() - t)
            t = time.perf_counter()
            with tempfile.NamedTemporaryFile() as out:
                api.download(f"/api/runs/{run_id}/history/", out.name, keys=key, format=fmt)
            http.append(time.perf_counter() - t)
        budget = f"server < {HISTORY_BUDGET_MS:.0f} ms" if total >= 100_000 else ""
        rows.append(
            Row(
                f"(c) history of a {total:,}-point series in one call, {fmt} ({len(body) / 1e6:.1f} MB)",
                f"server {statistics.median(server) * 1e3:.1f} ms (p95 {pct(server, 0.95) * 1e3:.1f}); "
                f"HTTP {statistics.median(http) * 1e3:.1f} ms (p95 {pct(http, 0.95) * 1e3:.1f})",
                budget,
                statistics.median(server) * 1e3 < HISTORY_BUDGET_MS if budget else None,
            )
        )
    frames = []
    for _ in range(5):
        t = time.perf_counter()
        frame = api.run(run_id).history([key])
        frames.append(time.perf_counter() - t)
    assert len(frame) == total
    rows.append(
        Row(
            "    Api().run(id).history([key]) -> pandas DataFrame",
            f"{statistics.median(frames) * 1e3:.0f} ms for {len(frame):,} rows (HTTP + JSON parse + frame)",
        )
    )
    return rows


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000, help="steps per script (10 keys each)")
    parser.add_argument("--parts", default="abc")
    parser.add_argument("--db", default="arbiter_bench_sdk")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (docker: WEB_WORKERS=2)")
    parser.add_argument("--quick", action="store_true", help="20,000 steps per script (200,000 points)")
    parser.add_argument("--null-server", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.null_server:
        null_server(args.null_server)
        return
    if args.quick:
        args.steps = min(args.steps, 20_000)
    rows: list[Row] = []
    if "a" in args.parts:
        rows += bench_client(args.steps)
    if "b" in args.parts or "c" in args.parts:
        env = configure(args.db)
        import django

        django.setup()
        from arbiter.accounts.models import Role, User
        from training.services import runs

        user = User.objects.create_user(username="bench", password=None, role=Role.RESEARCHER)
        _, api_key = runs.issue_api_token(user=user, name="bench")
        server = Server(args.workers, env)
        try:
            ingest_rows, run_id = bench_ingest(server.url, server.pids, args.steps)
            if "b" in args.parts:
                rows += ingest_rows
            if "c" in args.parts:
                rows += bench_history(server.url, api_key, run_id)
        finally:
            server.stop()
    print_table(f"SDK and history: uvicorn x{args.workers} (arbiter/server.py), PostgreSQL", rows)


if __name__ == "__main__":
    main()
