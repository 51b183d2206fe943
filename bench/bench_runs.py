"""Benchmark the training-runs half over real HTTP and websockets on the production server; print a table.

The server is the production one: uvicorn as arbiter/server.py starts it (`--workers 2`, as
docker/Dockerfile's WEB_WORKERS; `--workers 1` is `runplatform`'s), with PostgreSQL and Redis.

(a) ingest: 1,000,000 points (1 run, 10 keys x 100,000 steps) posted through the HTTP API in the
    client's batches (arbiter_client's own encoder, `--batch` points each: its default max_batch, 50,000;
    2 batches in flight as its sender keeps them: each answer frees a slot for the next batch; before
    2026-12-02 the sender, and this replay, waited for both answers of a pair before sending more, which
    left the server idle between pairs). Pre-encoded bodies are built before the clock starts (that is
    the training process's CPU). Each way a script's batches reach the server is timed:
      in order      every batch appends after the last stored step (a training loop's usual case);
      out of order  the same batches in a shuffled order (retries, several senders): the merge path;
      re-sent       every batch of the in-order run again (a client that lost the answers): 0 written.
    All three with `synchronous_commit` off (METRICS_SYNCHRONOUS_COMMIT=0, the default) and on
    (=1: each commit waits for the WAL flush); the server is restarted with the setting. With the
    default also: the same 1,000,000 points through `run.log()` itself (the client's encoding then
    shares the 2 cores), and 4 runs at once (4 x 1,000,000 points). Each row is followed by where
    the CPU went (this process, the web server, PostgreSQL, Redis, and the rest of the machine,
    which on a shared box is other people's work).
(b) chart read: a 1,000-bucket read of a 100,000-point and of a 1,000,000-point series; server time
    (selector + JSON, in-process) and HTTP round trip, median and p95 of 20 reads; plus a zoomed read.
(c) live: 50 websocket clients on one run (the run page's socket, each its own session); a script in
    its own process calls `run.log({"t": time.time()}, step=i)` every 50 ms through arbiter_client; each client measures
    arrival - t: the whole path log call -> HTTP ingest -> commit -> channel layer (Redis) ->
    consumer -> websocket. p50 / p95 / p99 over all clients and points.
    Measured after VACUUM ANALYZE and a CHECKPOINT of the freshly loaded tables (steady state: no
    autovacuum pass or checkpoint write of the load competing for the disk).

Usage: python bench/bench_runs.py [--quick] [--workers 2] [--batch 50000] [--clients 50] [--parts abc]
`--quick`: 200,000 points per ingest row instead of 1,000,000, and 100 live points (make bench --quick).
It creates (and drops first) the database `--db` (arbiter_bench_runs) on the DATABASE_URL server; the
channel layer uses REDIS_URL as given.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import Row, Server, print_table, session_backend  # noqa: E402

DB_NAME = "arbiter_bench_runs"
LIVE_BUDGET_MS = 50.0
INGEST_BUDGET = 500_000  # points/s through the SDK on 2 cores (DESIGN.md)
SDK_MAX_BATCH = 50_000  # arbiter_client's default max_batch (ARBITER_MAX_BATCH): the batches its sender cuts
READ_BUDGET_MS = 20.0  # a 1,000,000-point series at screen resolution, server time


def configure_env(settings: str = "arbiter.settings", db: str = DB_NAME) -> dict[str, str]:
    """The servers' environment: DATABASE_URL pointed at `db`, production settings."""
    base = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter"))
    env = dict(os.environ)
    env["DATABASE_URL"] = base._replace(path=f"/{db}").geturl()
    env["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    env["DJANGO_SETTINGS_MODULE"] = settings
    env["DEBUG"] = "0"
    env["LOG_LEVEL"] = "WARNING"
    env.pop("METRICS_SYNCHRONOUS_COMMIT", None)  # the default, unless a row sets it
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "DEBUG")})
    return env


def recreate_database(env: dict[str, str]) -> None:
    import psycopg

    url = urlparse(env["DATABASE_URL"])
    admin, db = url._replace(path="/postgres").geturl(), url.path.lstrip("/")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)


class CpuShare:
    """CPU seconds spent during a measurement by: this bench process and its finished children (the
    "client"), the web server, PostgreSQL and Redis (all their processes: other users of the
    same servers included), and everything else on the machine (other users of the 2 cores)."""

    def __init__(self, server: Server) -> None:
        import psutil

        self.psutil = psutil
        self.servers = server.pids

    def _sample(self) -> tuple[float, float, dict[tuple[str, int], float], float]:
        import resource

        ps = self.psutil
        per_process: dict[tuple[str, int], float] = {}
        for p in ps.process_iter(["name"]):
            name = p.info["name"] or ""
            group = "web" if p.pid in self.servers else name.split()[0] if name else ""
            if group in ("web", "postgres", "redis-server"):
                try:
                    t = p.cpu_times()
                except ps.Error:
                    continue
                per_process[(group, p.pid)] = t.user + t.system
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = ps.cpu_times()
        busy = total.user + total.system + total.nice + getattr(total, "softirq", 0) + getattr(total, "irq", 0)
        bench = time.process_time() + children.ru_utime + children.ru_stime
        return time.perf_counter(), bench, per_process, busy

    def __enter__(self) -> CpuShare:
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = self._sample()

    def groups(self) -> dict[str, float]:
        """CPU seconds of the web server, PostgreSQL and Redis during the measurement."""
        groups = {"web": 0.0, "postgres": 0.0, "redis-server": 0.0}
        # Per process, so one that started during the measurement counts whole and one that
        # ended (a PostgreSQL backend of another client) does not subtract its past.
        for (group, pid), used in self.end[2].items():
            groups[group] += used - self.start[2].get((group, pid), 0.0)
        return groups

    def summary(self) -> str:
        wall, bench = self.end[0] - self.start[0], self.end[1] - self.start[1]
        groups = self.groups()
        other = max(0.0, self.end[3] - self.start[3] - bench - sum(groups.values()))
        cores = os.cpu_count() or 1
        return (
            f"CPU s of {cores} x {wall:.1f} s: bench {bench:.1f}, web {groups['web']:.1f}, "
            f"postgres {groups['postgres']:.1f}, redis {groups['redis-server']:.1f}, rest of machine {other:.1f}"
        )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- (a) ingest ------------------------------------------------------------------------------
def encode_batches(*, keys: int, steps: int, batch: int, t0: float) -> list[bytes]:
    """The bodies arbiter_client's sender would post for these points (its own encoder: binary blocks)."""
    from arbiter_client._columns import MetricBuffer, blocks_body
    from arbiter_client._http import encode_body

    bodies, buffer = [], MetricBuffer()
    names = tuple(f"train/k{k}" for k in range(keys))
    for step in range(steps):
        buffer.add_row(names, step, t0 + step * 0.01, tuple(((step * 7919 + k) % 1000) / 1000 for k in range(keys)))
        if buffer.points >= batch:
            bodies.append(encode_body(blocks_body(buffer.take()), compress=False))
    if buffer.points:
        bodies.append(encode_body(blocks_body(buffer.take()), compress=False))
    return bodies


def send_all(url: str, run_id: int, token: str, bodies: list[bytes], parallel: int = 2, *, resent: bool = False) -> int:
    """Post the bodies as the client's sender does: `parallel` batches in flight, each slot taking the next
    batch as soon as its answer is in. Returns the points the server wrote (a re-send must write none)."""
    from arbiter_client._http import Connection

    pending = list(reversed(bodies))
    lock = threading.Lock()
    written = [0]
    errors: list[BaseException] = []

    def slot() -> None:
        conn = Connection(url, token, timeout=120)
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    body = pending.pop()
                answer = conn.exchange("POST", f"/api/runs/{run_id}/metrics/", body=body, compressed=False).json()
                assert (answer["written"] == 0) if resent else (answer["written"] > 0), answer
                with lock:
                    written[0] += int(answer["written"])
        except BaseException as exc:  # an assertion in a slot fails the row, as it did in the caller
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=slot) for _ in range(parallel)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return written[0]


def log_through_client(url: str, run_id: int, token: str, *, keys: int, steps: int) -> None:
    """The whole path: run.log() per step in this thread, the client's sender encodes and posts."""
    import arbiter_client

    run = arbiter_client.Run(url=url, run_id=run_id, token=token, owns_status=False, system_interval=0)
    for step in range(steps):
        run.log({f"train/k{k}": ((step * 7919 + k) % 1000) / 1000 for k in range(keys)}, step=step)
    assert run.finish(timeout=600)
    assert run.stats["delivered_points"] == keys * steps, run.stats


def new_run(name: str) -> tuple[int, str]:
    from arbiter.accounts.models import User
    from training.services import runs

    run, token = runs.create_external_run(owner=User.objects.get(username="bench"), name=name, config={})
    return run.id, token


def _rate(points: int, wall: float) -> str:
    return f"{points / wall:,.0f} points/s ({wall:.1f} s)"


def bench_ingest(
    server: Server, bodies: list[bytes], *, points: int, batch: int, sync: bool, full: bool
) -> tuple[list[Row], int]:
    """The ingest rows for one synchronous_commit setting; `full` adds the SDK and 4-run rows."""
    from training.selectors import stored_points

    mode = "synchronous_commit on" if sync else "synchronous_commit off (default)"
    budget = f">= {INGEST_BUDGET:,} points/s"
    rows: list[Row] = []
    url = server.url
    steps = points // 10
    warm_id, warm_token = new_run(f"warm-up-{mode}")  # a fresh server's first requests import and prepare
    send_all(url, warm_id, warm_token, bodies[:6])
    run_id, token = new_run(f"ingest-in-order-{mode}")
    t = time.perf_counter()
    with CpuShare(server) as cpu:
        written = send_all(url, run_id, token, bodies)
    wall = time.perf_counter() - t
    assert written == points, written
    label = f"(a) ingest in order, {mode}: 1 run, 10 keys x {steps:,} steps, {len(bodies)} batches of {batch}"
    rows.append(Row(label, _rate(points, wall), budget, points / wall >= INGEST_BUDGET))
    rows.append(Row("    where the CPU went", cpu.summary()))

    shuffled = list(bodies)
    random.Random(0).shuffle(shuffled)
    ooo_id, ooo_token = new_run(f"ingest-out-of-order-{mode}")
    t = time.perf_counter()
    with CpuShare(server) as cpu:
        written = send_all(url, ooo_id, ooo_token, shuffled)
    wall = time.perf_counter() - t
    assert written == points and stored_points(run_id=ooo_id) == points, written
    rows.append(
        Row(
            f"    out of order (the same batches shuffled), {mode}",
            _rate(points, wall),
            budget,
            points / wall >= INGEST_BUDGET,
        )
    )
    rows.append(Row("    where the CPU went", cpu.summary()))

    t = time.perf_counter()
    with CpuShare(server) as cpu:
        send_all(url, run_id, token, bodies, resent=True)
    wall = time.perf_counter() - t
    rows.append(
        Row(
            f"    re-sent (every batch again, 0 written), {mode}",
            _rate(points, wall),
            budget,
            points / wall >= INGEST_BUDGET,
        )
    )
    rows.append(Row("    where the CPU went", cpu.summary()))
    stored = [stored_points(run_id=run_id), stored_points(run_id=ooo_id)]
    if not full:
        rows.append(Row(f"    points stored (expect {2 * points:,})", f"{sum(stored):,}"))
        return rows, run_id

    e2e_id, e2e_token = new_run("ingest-client")
    t = time.perf_counter()
    with CpuShare(server) as cpu:
        log_through_client(url, e2e_id, e2e_token, keys=10, steps=steps)
    wall = time.perf_counter() - t
    rows.append(
        Row(
            f"    through arbiter_client run.log() (its encoding on the same cores), {mode}",
            _rate(points, wall),
            budget,
            points / wall >= INGEST_BUDGET,
        )
    )
    rows.append(Row("    where the CPU went", cpu.summary()))
    targets = [new_run(f"ingest-4-{i}") for i in range(4)]
    threads = [threading.Thread(target=send_all, args=(url, rid, tok, bodies)) for rid, tok in targets]
    t = time.perf_counter()
    with CpuShare(server) as cpu:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    wall = time.perf_counter() - t
    rows.append(
        Row(
            f"(a) ingest 4 runs at once, 4 x {points:,} points, {mode}",
            _rate(4 * points, wall),
            budget,
            4 * points / wall >= INGEST_BUDGET,
        )
    )
    rows.append(Row("    where the CPU went", cpu.summary()))
    stored += [stored_points(run_id=rid) for rid in [e2e_id, *(r for r, _ in targets)]]
    rows.append(Row(f"    points stored (expect {7 * points:,})", f"{sum(stored):,}"))
    return rows, run_id


# --- (b) chart reads ---------------------------------------------------------------------------
def bench_reads(url: str, api_key: str, run_100k: int, steps_100k: int) -> list[Row]:
    from django.http import JsonResponse

    from arbiter_client._http import Connection
    from training import selectors

    run_1m, token = new_run("one-million")
    bodies = encode_batches(keys=1, steps=1_000_000, batch=10_000, t0=time.time())
    send_all(url, run_1m, token, bodies)
    rows = []
    conn = Connection(url, api_key)
    for label, run_id, key, budget in (
        (f"{steps_100k:,}", run_100k, "train/k0", ""),
        ("1,000,000", run_1m, "train/k0", f"server < {READ_BUDGET_MS:.0f} ms"),
    ):
        server, http = [], []
        for _ in range(20):
            t = time.perf_counter()
            JsonResponse(selectors.metric_series(run_id=run_id, key=key, buckets=1000))
            server.append(time.perf_counter() - t)
            t = time.perf_counter()
            answer = conn.request("GET", f"/api/runs/{run_id}/metrics/?key={key}&buckets=1000")
            http.append(time.perf_counter() - t)
        assert answer["total"] in (steps_100k, 1_000_000), answer["total"]
        rows.append(
            Row(
                f"(b) chart read, {label}-point series -> {len(answer['points'])} points",
                f"server {statistics.median(server) * 1e3:.1f} ms (p95 {pct(server, 0.95) * 1e3:.1f}); "
                f"HTTP {statistics.median(http) * 1e3:.1f} ms (p95 {pct(http, 0.95) * 1e3:.1f})",
                budget,
                statistics.median(server) * 1e3 < READ_BUDGET_MS if budget else None,
            )
        )
        # Zoomed in: full resolution on a 1,000-step window.
        t = time.perf_counter()
        zoom = conn.request("GET", f"/api/runs/{run_id}/metrics/?key={key}&start=5000&end=5999&buckets=1000")
        rows.append(
            Row(
                f"    zoom to 1,000 steps of it (raw points: {len(zoom['points'])})",
                f"HTTP {(time.perf_counter() - t) * 1e3:.1f} ms",
            )
        )
    conn.close()
    return rows


# --- (c) live latency ---------------------------------------------------------------------------
async def ws_client(
    port: int,
    path: str,
    cookie: str,
    latencies: list[float],
    ready: asyncio.Event,
    counter: list[int],
    total: int,
    done: asyncio.Event,
) -> None:
    """A minimal RFC 6455 client (server frames are unmasked): enough to read text frames."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n"
            f"Cookie: {cookie}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0], head
    counter[0] += 1
    if counter[0] == total:
        ready.set()
    while not done.is_set():
        b1, b2 = await reader.readexactly(2)
        length = b2 & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length)
        now = time.time()
        if b1 & 0x0F != 1:
            continue
        msg = json.loads(payload)
        for _, value, _ in msg.get("metrics", {}).get("t", []):
            latencies.append(now - value)
    writer.close()


def produce(url: str, run_id: int | str, token: str, n: int | str) -> None:
    """The training script of (c): one `run.log` every 50 ms through arbiter_client."""
    import arbiter_client

    run = arbiter_client.Run(url=url, run_id=int(run_id), token=token, owns_status=False, system_interval=0)
    for i in range(int(n)):
        run.log({"t": time.time()}, step=i)
        time.sleep(0.05)
    run.finish()


async def live(
    port: int, run_id: int, token: str, cookies: list[str], clients: int, n: int, *, same_process: bool
) -> list[float]:
    latencies: list[float] = []
    ready, done = asyncio.Event(), asyncio.Event()
    counter = [0]
    tasks = [
        asyncio.create_task(ws_client(port, f"/ws/runs/{run_id}/", cookie, latencies, ready, counter, clients, done))
        for cookie in cookies
    ]
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.5)

    url = f"http://127.0.0.1:{port}"
    if same_process:
        await asyncio.to_thread(produce, url, run_id, token, n)
    else:
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_runs as b; b.produce(*sys.argv[1:])"
        )
        producer = await asyncio.create_subprocess_exec(sys.executable, "-c", code, url, str(run_id), token, str(n))
        await producer.wait()
    await asyncio.sleep(1.0)
    done.set()
    for t in tasks:
        t.cancel()
    return latencies


def session_cookie() -> str:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from arbiter.accounts.models import User

    user = User.objects.get(username="bench")
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = session_backend()
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


def bench_live(server: Server, args: argparse.Namespace) -> list[Row]:
    run_id, token = new_run("live")
    same = args.producer_in_bench
    cookies = [session_cookie() for _ in range(args.clients)]  # one browser session per dashboard
    with CpuShare(server) as cpu:
        lat = asyncio.run(live(server.port, run_id, token, cookies, args.clients, args.live_points, same_process=same))
    expected = args.clients * args.live_points
    where = "in the bench process" if same else "in its own process"
    p99 = pct(lat, 0.99) * 1e3
    return [
        Row(
            f"(c) run.log ({where}) -> websocket, {args.clients} clients, {len(lat):,}/{expected:,} points received",
            f"p50 {statistics.median(lat) * 1e3:.1f} ms, p95 {pct(lat, 0.95) * 1e3:.1f} ms, p99 {p99:.1f} ms, "
            f"max {max(lat) * 1e3:.1f} ms",
            f"p99 < {LIVE_BUDGET_MS:.0f} ms",
            p99 < LIVE_BUDGET_MS and len(lat) == expected,
        ),
        Row("    where the CPU went", cpu.summary()),
        Row(
            f"    web server CPU per logged point (1 ingest + {args.clients} deliveries)",
            f"{cpu.groups()['web'] / max(1, args.live_points) * 1e3:.1f} ms (steadier than latency under load)",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (docker: WEB_WORKERS=2)")
    parser.add_argument(
        "--batch", type=int, default=SDK_MAX_BATCH, help="points per request (the client's max_batch, its default)"
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--producer-in-bench", action="store_true", help="(c): call run.log from a thread of this process"
    )
    parser.add_argument("--settings", default="arbiter.settings", help="DJANGO_SETTINGS_MODULE of the servers")
    parser.add_argument("--live-points", type=int, default=200)
    parser.add_argument("--parts", default="abc", help="which of (a) ingest, (b) reads, (c) live to run")
    parser.add_argument("--db", default=DB_NAME, help="database to create (dropped first)")
    parser.add_argument("--quick", action="store_true", help="200,000 points per ingest row, 100 live points")
    args = parser.parse_args()
    steps = 20_000 if args.quick else 100_000
    if args.quick:
        args.live_points = min(args.live_points, 100)

    env = configure_env(args.settings, args.db)
    recreate_database(env)
    import django

    django.setup()
    from arbiter.accounts.models import Role, User
    from training.services import runs

    user = User.objects.create_user(username="bench", password="bench-password", role=Role.RESEARCHER)
    _, api_key = runs.issue_api_token(user=user, name="bench")
    rows: list[Row] = []
    bodies: list[bytes] = []
    if "a" in args.parts or "b" in args.parts:
        t = time.perf_counter()
        bodies = encode_batches(keys=10, steps=steps, batch=args.batch, t0=time.time())
        rate = 10 * steps / (time.perf_counter() - t)
        rows.append(Row(f"client-side encode of {10 * steps:,} points (1 core)", f"{rate:,.0f} points/s"))
    if "a" in args.parts:
        # synchronous_commit on first, on its own server (the setting is read at start-up).
        server = Server(args.workers, {**env, "METRICS_SYNCHRONOUS_COMMIT": "1"})
        try:
            rows += bench_ingest(server, bodies, points=10 * steps, batch=args.batch, sync=True, full=False)[0]
        finally:
            server.stop()
    server = Server(args.workers, env)
    try:
        if "a" in args.parts or "b" in args.parts:
            ingest_rows, run_100k = bench_ingest(
                server, bodies, points=10 * steps, batch=args.batch, sync=False, full="a" in args.parts
            )
            if "a" in args.parts:
                rows[1:1] = ingest_rows  # the default first
        if "b" in args.parts:
            rows += bench_reads(server.url, api_key, run_100k, steps)
        if "c" in args.parts:
            # Let the rows just loaded settle (autovacuum would otherwise scan them during
            # the latency measurement): live latency is measured in steady state.
            import psycopg

            with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE training_metricchunk, training_metricrollup, training_run")
                conn.execute("CHECKPOINT")  # and write the load's dirty pages out now, not during (c)
            rows += bench_live(server, args)
    finally:
        server.stop()
    print_table(
        f"Training runs: uvicorn x{args.workers} (arbiter/server.py), PostgreSQL, Redis channel layer",
        rows,
        notes=[
            "ingest budget: >= 500,000 points/s through the SDK on 2 cores (DESIGN.md); the HTTP rows carry it too.",
            "Timings on a shared machine move with other load: compare rows of one run, not across runs.",
        ],
    )


if __name__ == "__main__":
    main()
