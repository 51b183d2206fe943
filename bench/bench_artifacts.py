"""Artifact store throughput and the added latency of a run on a remote-style (Django-free) worker.

Part a: a checkpoint-shaped folder (one large weights file, a config, a tokenizer) put into and got back from
the store: the local filesystem store (ARTIFACT_ROOT) and an S3-compatible server on this machine (moto's
server mode, a separate process; MinIO would be faster: moto keeps objects in Python memory). MB/s = MiB of
data per second of wall time; bytes checked equal after each round trip.

Part b: launch latency. The same tiny demo run (1 step) launched N times onto (1) the in-process Celery
supervisor (`celery -A arbiter worker`, Django and the database in the worker) and (2) `python -m arbiter_worker`
(no Django: claims, beats and finishes through the worker API), both on this machine with the web server of
arbiter/server.py. Reported: queued → claimed, and queued → finished (the engine's start-up included).

Usage: python bench/bench_artifacts.py [--quick] [--mib 256] [--runs 5] [--parts ab] [--db arbiter_bench_artifacts]
It creates (and drops first) the database --db on the DATABASE_URL server; REDIS_URL as given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, Row, Server, print_table

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the S3 server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the S3 server did not start")


def start_s3() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port, proc)
    os.environ.update(S3_ENV)
    return proc, f"http://127.0.0.1:{port}"


def make_checkpoint(folder: Path, mib: int) -> int:
    (folder / "tokenizer").mkdir(parents=True)
    block = os.urandom(1 << 20)
    with (folder / "model.safetensors").open("wb") as fh:
        for _ in range(mib):
            fh.write(block)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer" / "tokenizer.json").write_bytes(os.urandom(200_000))
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def same(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files
    )


def bench_store(mib: int) -> list[Row]:
    import boto3

    from artifacts import uris
    from artifacts.store import LocalStore, S3Store

    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="arbiter-bench-artifacts-"))
    s3_proc, endpoint = start_s3()
    try:
        source = work / "checkpoint-100"
        size = make_checkpoint(source, mib)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        stores = {
            "local filesystem": (LocalStore(uris.parse(str(work / "store"))), uris.parse(str(work / "store" / "c"))),
            "S3-compatible (moto server)": (
                S3Store(uris.parse(f"s3://{bucket}"), client=client),
                uris.parse(f"s3://{bucket}/runs/1/checkpoint-100"),
            ),
        }
        for label, (store, uri) in stores.items():
            t0 = time.perf_counter()
            store.put_tree(source, uri)
            up = time.perf_counter() - t0
            back = work / f"back-{len(rows)}"
            t0 = time.perf_counter()
            store.get_tree(uri, back)
            down = time.perf_counter() - t0
            assert same(source, back), f"{label}: bytes differ after the round trip"
            mb = size / (1 << 20)
            rows.append(Row(f"{label}: upload {mb:.0f} MiB checkpoint", f"{mb / up:,.0f} MB/s ({up:.2f} s)"))
            rows.append(Row(f"{label}: download {mb:.0f} MiB checkpoint", f"{mb / down:,.0f} MB/s ({down:.2f} s)"))
    finally:
        s3_proc.terminate()
        s3_proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def configure(db: str) -> dict[str, str]:
    from urllib.parse import urlparse

    import psycopg

    base = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter"))
    env = dict(os.environ)
    env["DATABASE_URL"] = base._replace(path=f"/{db}").geturl()
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
    env.update(DJANGO_SETTINGS_MODULE="arbiter.settings", DEBUG="0", PYTHONPATH=str(ROOT))
    env["ARBITER_RUN_QUEUES"] = "bench-django,bench-remote"
    env["ARTIFACT_ROOT"] = tempfile.mkdtemp(prefix="arbiter-bench-web-")
    env["ARBITER_VAR_DIR"] = tempfile.mkdtemp(prefix="arbiter-bench-var-")
    os.environ.update(
        {
            k: env[k]
            for k in (
                "DATABASE_URL",
                "REDIS_URL",
                "DJANGO_SETTINGS_MODULE",
                "DEBUG",
                "ARBITER_RUN_QUEUES",
                "ARTIFACT_ROOT",
                "ARBITER_VAR_DIR",
            )
        }
    )
    admin = urlparse(env["DATABASE_URL"])._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    return env


def bench_launch(db: str, n: int) -> list[Row]:
    env = configure(db)
    import django

    django.setup()
    from django.conf import settings

    from arbiter.accounts.models import Role, User
    from training.models import Run
    from training.services import runs
    from workers.services import issue_worker_credential

    user = User.objects.create_user(username="bench", password=None, role=Role.RESEARCHER)
    _, token = issue_worker_credential(name="bench-remote")
    server = Server(1, {**env, "ARBITER_PUBLIC_URL": "http://127.0.0.1:0"})
    env["ARBITER_PUBLIC_URL"] = server.url
    home = Path(tempfile.mkdtemp(prefix="arbiter-bench-worker-"))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "arbiter",
                "worker",
                "-Q",
                "bench-django",
                "--pool",
                "threads",
                "-c",
                "1",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "arbiter_worker"],
            cwd=home,
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(home),
                "PYTHONPATH": str(ROOT),
                "ARBITER_BROKER_URL": settings.CELERY_BROKER_URL,
                "ARBITER_API_URL": server.url,
                "ARBITER_WORKER_TOKEN": token,
                "ARBITER_WORKER_SLOTS": "cpu0",
                "ARBITER_WORKER_QUEUES": "bench-remote",
                "ARTIFACT_ROOT": str(home / "scratch"),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    rows: list[Row] = []
    try:
        time.sleep(8)  # both workers connected to the broker
        config = {"max_steps": 1, "step_delay_s": 0.0, "save_steps": 1, "num_threads": 1}
        results: dict[str, tuple[list[float], list[float]]] = {}
        for queue in ("bench-django", "bench-remote"):
            claimed, finished = [], []
            for _ in range(n):
                run = runs.launch_run(owner=user, recipe="demo", config=config, queue=queue)
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    run = Run.objects.get(id=run.id)
                    if run.finished_at:
                        break
                    time.sleep(0.05)
                assert run.status == "succeeded", (queue, run.status)
                assert run.started_at is not None and run.finished_at is not None
                claimed.append((run.started_at - run.created_at).total_seconds())
                finished.append((run.finished_at - run.created_at).total_seconds())
            results[queue] = (claimed, finished)
        for label, queue in (
            ("in-process Celery supervisor", "bench-django"),
            ("arbiter_worker (no Django)", "bench-remote"),
        ):
            claimed, finished = results[queue]
            rows.append(
                Row(f"{label}: queued -> claimed, median of {n}", f"{statistics.median(claimed) * 1000:,.0f} ms")
            )
            rows.append(
                Row(f"{label}: queued -> finished (1-step demo), median", f"{statistics.median(finished):.2f} s")
            )
        added = statistics.median(results["bench-remote"][1]) - statistics.median(results["bench-django"][1])
        rows.append(Row("added latency of the remote-style worker (finished, median)", f"{added * 1000:+,.0f} ms"))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="size of the checkpoint's weights file")
    parser.add_argument("--runs", type=int, default=5, help="launches per worker kind")
    parser.add_argument("--parts", default="ab")
    parser.add_argument("--db", default="arbiter_bench_artifacts")
    parser.add_argument("--quick", action="store_true", help="32 MiB, 2 launches each")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.runs = min(args.mib, 32), min(args.runs, 2)
    rows: list[Row] = []
    if "a" in args.parts:
        rows += bench_store(args.mib)
    if "b" in args.parts:
        rows += bench_launch(args.db, args.runs)
    print_table("Artifact store throughput and remote-worker launch latency (this machine)", rows)


if __name__ == "__main__":
    main()
