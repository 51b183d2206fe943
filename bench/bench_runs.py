"""Benchmark the training-runs half over real HTTP and websockets (daphne + PostgreSQL + Redis); print a table.

(a) ingest: 1,000,000 points (1 run, 10 keys x 100,000 steps) posted through the HTTP API in the
    client's batches (arbiter_client's own encoder: columnar `series` JSON, gzip, `max_batch` points
    each, 2 batches in flight as its sender sends them); then the same through `run.log()` itself
    (the client's encoding then shares the 2 cores); then 4 runs at once (4 x 1,000,000 points).
    Pre-encoded bodies are built before the clock starts (that is the training process's CPU).
    Each row is followed by where the CPU went (this process, daphne, PostgreSQL, Redis, and the
    rest of the machine, which on a shared box is other people's work).
(b) chart read: a 1,000-bucket read of a 100,000-point and of a 1,000,000-point series; server time
    (selector + JSON, in-process) and HTTP round trip, median and p95 of 20 reads; plus a zoomed read.
(c) live: 50 websocket clients on one run; a script (its own process, unless --producer-in-bench)
    calls `run.log({"t": time.time()}, step=i)` every 50 ms through arbiter_client; each client
    measures arrival - t. p50 / p99 over all.
    Measured after VACUUM ANALYZE and a CHECKPOINT of the freshly loaded tables (steady state: no
    autovacuum pass or checkpoint write of the load competing for the disk).

Usage: python bench/bench_runs.py [--workers 2] [--batch 10000] [--clients 50] [--parts abc]
                                 [--settings arbiter.settings] [--producer-in-bench]
It creates (and drops first) the database `arbiter_bench_runs` on the DATABASE_URL server, and uses
Redis database 3 of REDIS_URL's server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_NAME = "arbiter_bench_runs"


def configure_env(settings: str = "arbiter.settings") -> dict[str, str]:
    base = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter"))
    redis = urlparse(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    env = dict(os.environ)
    env["DATABASE_URL"] = base._replace(path=f"/{DB_NAME}").geturl()
    env["REDIS_URL"] = redis._replace(path="/3").geturl()
    env["DJANGO_SETTINGS_MODULE"] = settings
    env["DEBUG"] = "0"
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "DEBUG")})
    return env


def recreate_database(env: dict[str, str]) -> None:
    import psycopg

    url = urlparse(env["DATABASE_URL"])
    admin = url._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)


def start_servers(workers: int, env: dict[str, str]) -> tuple[list[subprocess.Popen[bytes]], int, socket.socket]:
    """`workers` daphne processes accepting on one shared listening socket (pre-fork style)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "daphne", "--fd", str(fd), "-v", "0", "arbiter.asgi:application"],
            cwd=ROOT,
            env=env,
            pass_fds=(fd,),
        )
        for _ in range(workers)
    ]
    port = sock.getsockname()[1]
    time.sleep(3)
    return procs, port, sock


class CpuShare:
    """CPU seconds spent during a measurement by: this bench process and its finished children (the
    "client"), the daphne servers, PostgreSQL and Redis (all their processes: other users of the
    same servers included), and everything else on the machine (other users of the 2 cores)."""

    def __init__(self, servers: list[subprocess.Popen[bytes]]) -> None:
        import psutil

        self.psutil = psutil
        self.servers = {p.pid for p in servers}

    def _sample(self) -> tuple[float, float, dict[tuple[str, int], float], float]:
        import resource

        ps = self.psutil
        per_process: dict[tuple[str, int], float] = {}
        for p in ps.process_iter(["name"]):
            name = p.info["name"] or ""
            group = "daphne" if p.pid in self.servers else name.split()[0] if name else ""
            if group in ("daphne", "postgres", "redis-server"):
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

    def summary(self) -> str:
        wall, bench = self.end[0] - self.start[0], self.end[1] - self.start[1]
        groups = {"daphne": 0.0, "postgres": 0.0, "redis-server": 0.0}
        # Per process, so one that started during the measurement counts whole and one that
        # ended (a PostgreSQL backend of another client) does not subtract its past.
        for (group, pid), used in self.end[2].items():
            groups[group] += used - self.start[2].get((group, pid), 0.0)
        other = max(0.0, self.end[3] - self.start[3] - bench - sum(groups.values()))
        cores = os.cpu_count() or 1
        return (
            f"CPU s of {cores} x {wall:.1f} s: bench {bench:.1f}, daphne {groups['daphne']:.1f}, "
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


def send_all(url: str, run_id: int, token: str, bodies: list[bytes], parallel: int = 2) -> None:
    """Post the bodies as the client's sender does: up to `parallel` batches in flight, then the next group."""
    from concurrent.futures import ThreadPoolExecutor

    from arbiter_client._http import Connection

    conns = [Connection(url, token, timeout=120) for _ in range(parallel)]

    def post(body: bytes, conn: Connection) -> None:
        answer = conn.exchange("POST", f"/api/runs/{run_id}/metrics/", body=body, compressed=False).json()
        assert answer["written"] > 0, answer

    with ThreadPoolExecutor(parallel) as pool:
        for start in range(0, len(bodies), parallel):
            group = bodies[start : start + parallel]
            list(pool.map(post, group, conns[: len(group)]))
    for conn in conns:
        conn.close()


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


def bench_ingest(url: str, batch: int, servers: list[subprocess.Popen[bytes]]) -> tuple[list[tuple[str, str]], int]:
    rows = []
    t = time.perf_counter()
    bodies = encode_batches(keys=10, steps=100_000, batch=batch, t0=time.time())
    encode_s = time.perf_counter() - t
    rows.append(
        ("client-side encode of 1,000,000 points (json + gzip, 1 core)", f"{1_000_000 / encode_s:,.0f} points/s")
    )
    run_id, token = new_run("ingest-1")
    t = time.perf_counter()
    with CpuShare(servers) as cpu:
        send_all(url, run_id, token, bodies)
    wall = time.perf_counter() - t
    rows.append(
        (
            f"(a) ingest 1 run, 10 keys x 100,000 steps, {len(bodies)} batches of {batch}, 2 in flight",
            f"{1_000_000 / wall:,.0f} points/s ({wall:.1f} s)",
        )
    )
    rows.append(("    where the CPU went", cpu.summary()))
    e2e_id, e2e_token = new_run("ingest-client")
    t = time.perf_counter()
    with CpuShare(servers) as cpu:
        log_through_client(url, e2e_id, e2e_token, keys=10, steps=100_000)
    wall = time.perf_counter() - t
    rows.append(
        (
            "    the same through arbiter_client run.log() (client encoding on the same 2 cores)",
            f"{1_000_000 / wall:,.0f} points/s ({wall:.1f} s)",
        )
    )
    rows.append(("    where the CPU went", cpu.summary()))
    targets = [new_run(f"ingest-4-{i}") for i in range(4)]
    threads = [threading.Thread(target=send_all, args=(url, rid, tok, bodies)) for rid, tok in targets]
    t = time.perf_counter()
    with CpuShare(servers) as cpu:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    wall = time.perf_counter() - t
    rows.append(("(a) ingest 4 runs at once, 4 x 1,000,000 points", f"{4_000_000 / wall:,.0f} points/s ({wall:.1f} s)"))
    rows.append(("    where the CPU went", cpu.summary()))
    from training.selectors import stored_points

    stored = sum(stored_points(run_id=rid) for rid, _ in [(run_id, token), (e2e_id, 0), *targets])
    rows.append(("    points stored (expect 6,000,000)", f"{stored:,}"))
    return rows, run_id


# --- (b) chart reads ---------------------------------------------------------------------------
def bench_reads(url: str, api_key: str, run_100k: int) -> list[tuple[str, str]]:
    from django.http import JsonResponse

    from arbiter_client._http import Connection
    from training import selectors

    run_1m, token = new_run("one-million")
    bodies = encode_batches(keys=1, steps=1_000_000, batch=10_000, t0=time.time())
    send_all(url, run_1m, token, bodies)
    rows = []
    conn = Connection(url, api_key)
    for label, run_id, key in (("100,000", run_100k, "train/k0"), ("1,000,000", run_1m, "train/k0")):
        server, http = [], []
        for _ in range(20):
            t = time.perf_counter()
            JsonResponse(selectors.metric_series(run_id=run_id, key=key, buckets=1000))
            server.append(time.perf_counter() - t)
            t = time.perf_counter()
            answer = conn.request("GET", f"/api/runs/{run_id}/metrics/?key={key}&buckets=1000")
            http.append(time.perf_counter() - t)
        assert answer["total"] in (100_000, 1_000_000) and answer["downsampled"]
        rows.append(
            (
                f"(b) chart read, {label}-point series -> {len(answer['points'])} points",
                f"server {statistics.median(server) * 1e3:.1f} ms (p95 {pct(server, 0.95) * 1e3:.1f}); "
                f"HTTP {statistics.median(http) * 1e3:.1f} ms (p95 {pct(http, 0.95) * 1e3:.1f})",
            )
        )
        # Zoomed in: full resolution on a 20,000-step window.
        t = time.perf_counter()
        zoom = conn.request("GET", f"/api/runs/{run_id}/metrics/?key={key}&start=50000&end=50999&buckets=1000")
        rows.append(
            (
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
    port: int, run_id: int, token: str, cookie: str, clients: int, n: int, *, same_process: bool
) -> list[float]:
    latencies: list[float] = []
    ready, done = asyncio.Event(), asyncio.Event()
    counter = [0]
    tasks = [
        asyncio.create_task(ws_client(port, f"/ws/runs/{run_id}/", cookie, latencies, ready, counter, clients, done))
        for _ in range(clients)
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
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


def bench_live(port: int, args: argparse.Namespace, servers: list[subprocess.Popen[bytes]]) -> list[tuple[str, str]]:
    run_id, token = new_run("live")
    same = args.producer_in_bench
    cookie = session_cookie()
    with CpuShare(servers) as cpu:
        lat = asyncio.run(live(port, run_id, token, cookie, args.clients, args.live_points, same_process=same))
    expected = args.clients * args.live_points
    where = "in the bench process" if same else "in its own process"
    return [
        (
            f"(c) run.log ({where}) -> websocket, {args.clients} clients, {len(lat):,}/{expected:,} points received",
            f"p50 {statistics.median(lat) * 1e3:.1f} ms, p99 {pct(lat, 0.99) * 1e3:.1f} ms, "
            f"max {max(lat) * 1e3:.1f} ms",
        ),
        ("    where the CPU went", cpu.summary()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="daphne processes sharing the listening socket")
    parser.add_argument("--batch", type=int, default=10000, help="points per request (the client's max_batch)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--producer-in-bench", action="store_true", help="(c): call run.log from a thread of this process"
    )
    parser.add_argument("--settings", default="arbiter.settings", help="DJANGO_SETTINGS_MODULE of the servers")
    parser.add_argument("--live-points", type=int, default=200)
    parser.add_argument("--parts", default="abc", help="which of (a) ingest, (b) reads, (c) live to run")
    args, _ = parser.parse_known_args()

    env = configure_env(args.settings)
    recreate_database(env)
    import django

    django.setup()
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    from arbiter.accounts.models import Role, User
    from training.services import runs

    user = User.objects.create_user(username="bench", password="bench-password", role=Role.RESEARCHER)
    _, api_key = runs.issue_api_token(user=user, name="bench")
    procs, port, sock = start_servers(args.workers, env)
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, str]] = []
    try:
        if "a" in args.parts or "b" in args.parts:
            ingest_rows, run_100k = bench_ingest(url, args.batch, procs)
            rows += ingest_rows
        if "b" in args.parts:
            rows += bench_reads(url, api_key, run_100k)
        if "c" in args.parts:
            # Let the 6,000,000 rows just loaded settle (autovacuum would otherwise scan them during
            # the latency measurement): live latency is measured in steady state.
            import psycopg

            with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE training_metricchunk, training_metricrollup, training_run")
                conn.execute("CHECKPOINT")  # and write the load's dirty pages out now, not during (c)
            rows += bench_live(port, args, procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        sock.close()
    width = max(len(r[0]) for r in rows)
    print(f"\nTraining runs: daphne x{args.workers} (shared socket), PostgreSQL, Redis; {os.cpu_count()} cores")
    print(f"{'measure'.ljust(width)} | result")
    print(f"{'-' * width}-|-{'-' * 40}")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")
    print("budgets: ingest >= 200,000 points/s; chart read < 100 ms; live p99 < 100 ms")


if __name__ == "__main__":
    main()
