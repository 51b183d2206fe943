"""Arbiter beside MLflow on the same machine and the same PostgreSQL: metric ingest and full history; print a table.

MLflow runs from its own virtualenv, var/bench/mlflow-venv, which this script creates on first use and reuses
afterwards (`pip install mlflow==MLFLOW_VERSION psycopg[binary]==...`: the SQLAlchemy 2.1 MLflow installs reads
postgresql:// URIs with psycopg 3); never the project's .venv, whose torch/numpy/pandas pins MLflow must not
move. MLFLOW_VERSION is 3.17.2: MLflow 3.18.0's own wheel is on the index this machine reaches, but the
mlflow-skinny==3.18.0 and mlflow-tracing==3.18.0 it requires are not, so 3.18.0 cannot be installed here;
3.17.2 is the newest complete release there (--mlflow-version to change).
Its tracking server is started as its docs describe for a team server with a database backend store:
`mlflow server --backend-store-uri postgresql://... --host 127.0.0.1 --port P`, on a fresh database of its
own (<--db>_mlflow, dropped and created first) of the same PostgreSQL that Arbiter uses. Default server
settings otherwise (uvicorn, its default 4 workers, artifacts served from ./mlartifacts under var/bench/);
changed only: host and port (needed to run), and MLFLOW_DISABLE_TELEMETRY=true for server and client (this
machine has no route out; Arbiter sends no telemetry either). Arbiter runs as arbiter/server.py starts it
(bench/harness.py Server, 2 uvicorn workers as in docker), default commit mode, on <--db>.

(a) Ingest: N points (1,000,000; --quick 200,000) of 10 keys over N/10 steps, each side through its own
    Python client as a user calls it in a loop, in its own process:
    - Arbiter: `run.log({10 keys}, step=i)` per step (bench/bench_sdk.py's script, reused), `run.finish()`;
    - MLflow: `MlflowClient().log_batch(run_id, metrics=[...])` with 1,000 metrics per call (100 steps x 10
      keys: MLflow's documented maximum per batch request, MAX_METRICS_PER_BATCH);
    - MLflow: `mlflow.log_metrics({10 keys}, step=i)` per step in `mlflow.start_run()`, on fewer steps
      (--fluent-steps, 2,000: one request per step, about 15 a second here, makes 1,000,000 points take
      hours); reported separately.
    Points stored are counted afterwards on both sides (Arbiter: its points table; MLflow: its `metrics`
    table) and must equal N. Wall points/s and where the CPU went (the client script, the server's
    processes, PostgreSQL, Redis, the rest of the machine): the client and its server share the 2 cores.
(b) Full history of one key (N/10 points: 100,000 at the default size), median of --repeats calls from a
    client process: MLflow `MlflowClient().get_metric_history(run_id, key)` (its client pages the REST call
    itself, 25,000 points a request) vs Arbiter `Api(url, key).run(id).history([key])` (one call, a pandas
    DataFrame). Wall time and CPU of each server (web processes + PostgreSQL) per call.
The sides run one after the other (each server stopped before the other starts).

Usage: python bench/bench_mlflow.py [--quick] [--points 1000000] [--fluent-steps 2000] [--repeats 5]
       [--db arbiter_bench_mlflow] [--workers 2] [--mlflow-version 3.17.2]
Never run in tests or CI; timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_sdk import KEYS, CpuShare, configure, free_port, run_script  # noqa: E402
from harness import Row, Server, print_table, stop_process, wait_for  # noqa: E402

MLFLOW_VERSION = "3.17.2"
PSYCOPG_VERSION = "3.3.9"  # SQLAlchemy 2.1 (MLflow's) reads postgresql:// URIs with psycopg 3
VENV = ROOT / "var" / "bench" / "mlflow-venv"
WORKDIR = ROOT / "var" / "bench" / "mlflow-server"
SERVER_LOG = WORKDIR / "server.log"
RATIO_BUDGET = 50  # ingest through the SDK >= 50x MLflow on the same machine (DESIGN.md)

# MLflow's side of (a) and (b), run by the MLflow venv's Python: the same keys and values as bench_sdk's script.
MLFLOW_SCRIPT = r"""
import json, resource, sys, time
mode, url, arg, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.store.tracking import GET_METRIC_HISTORY_MAX_RESULTS
from mlflow.utils.validation import MAX_METRICS_PER_BATCH
mlflow.set_tracking_uri(url)
client = MlflowClient(url)
names = [f"train/k{k}" for k in range(10)]
rows = [{n: ((s * 7919 + k) % 1000) / 1000 + s * 1e-7 for k, n in enumerate(names)} for s in range(1000)]
out = {}
if mode == "batch":
    run_id = client.create_run(arg).info.run_id
    per = MAX_METRICS_PER_BATCH // len(names)
    t0 = time.perf_counter()
    for start in range(0, steps, per):
        ts = int(time.time() * 1000)
        batch = [Metric(n, v, ts, s) for s in range(start, min(start + per, steps)) for n, v in rows[s % 1000].items()]
        client.log_batch(run_id, metrics=batch)
    out = {"run_id": run_id, "wall": time.perf_counter() - t0, "per_request": per * len(names)}
elif mode == "fluent":
    with mlflow.start_run(experiment_id=arg) as run:
        t0 = time.perf_counter()
        for step in range(steps):
            mlflow.log_metrics(rows[step % 1000], step=step)
        wall = time.perf_counter() - t0
    out = {"run_id": run.info.run_id, "wall": wall}
elif mode == "history":
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        history = client.get_metric_history(arg, names[0])
        times.append(time.perf_counter() - t)
    out = {"times": times, "points": len(history), "page": GET_METRIC_HISTORY_MAX_RESULTS}
usage = resource.getrusage(resource.RUSAGE_SELF)
out["cpu"] = usage.ru_utime + usage.ru_stime
print(json.dumps(out))
"""

# Arbiter's side of (b): the SDK call a user makes, from its own process.
OUR_HISTORY = r"""
import json, resource, sys, time
import arbiter_client
url, api_key, run_id, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
api = arbiter_client.Api(url, api_key)
times = []
for _ in range(repeats):
    t = time.perf_counter()
    frame = api.run(run_id).history(["train/k0"])
    times.append(time.perf_counter() - t)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"times": times, "points": len(frame), "cpu": usage.ru_utime + usage.ru_stime}))
"""


def mlflow_python(version: str) -> Path:
    """The MLflow venv's interpreter, created and installed on first use (reused when the version matches)."""
    python = VENV / "bin" / "python"
    want = f"{version} {PSYCOPG_VERSION}"
    code = "import importlib.metadata as m; print(m.version('mlflow'), m.version('psycopg'))"
    if python.exists():
        found = subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()
        if found == want:
            return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"installing mlflow=={version} into {VENV} ...", flush=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"mlflow=={version}", f"psycopg[binary]=={PSYCOPG_VERSION}"],
        check=True,
    )
    return python


def fresh_database(url: str) -> None:
    import psycopg

    name = urlparse(url).path.lstrip("/")
    admin = urlparse(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")


class MlflowServer:
    """`mlflow server` with a PostgreSQL backend store, as its docs start a team server; output to SERVER_LOG."""

    def __init__(self, python: Path, store_uri: str, env: dict[str, str]) -> None:
        import psutil

        self.port = free_port()
        WORKDIR.mkdir(parents=True, exist_ok=True)
        mlflow = str(python.parent / "mlflow")
        cmd = [mlflow, "server", "--backend-store-uri", store_uri, "--host", "127.0.0.1", "--port", str(self.port)]
        with SERVER_LOG.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=WORKDIR, env=env, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
                return b" 200 " in s.recv(200)

        # the first start creates its schema (alembic migrations)
        wait_for(
            self.proc, healthy, seconds=300, interval=0.5, failure=f"mlflow server did not start; see {SERVER_LOG}"
        )
        time.sleep(2.0)  # every worker up
        self.top = psutil.Process(self.proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> set[int]:
        return {self.top.pid, *(p.pid for p in self.top.children(recursive=True))}

    def stop(self) -> None:
        children = self.top.children(recursive=True)
        stop_process(self.proc)
        for child in children:  # uvicorn workers left behind by a terminated CLI
            if child.is_running():
                child.kill()


def run_mlflow(python: Path, env: dict[str, str], *args: object) -> dict[str, Any]:
    out = subprocess.run(
        [str(python), "-c", MLFLOW_SCRIPT, *map(str, args)],
        cwd=WORKDIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode:
        raise SystemExit(f"MLflow client failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def server_cpu(cpu: CpuShare) -> tuple[float, float]:
    """CPU seconds of the web server's processes, and of PostgreSQL (all of it), during a CpuShare window."""
    used = {"uvicorn": 0.0, "postgres": 0.0}
    for (group, pid), end in cpu.end[1].items():
        if group in used:
            used[group] += end - cpu.start[1].get((group, pid), 0.0)
    return used["uvicorn"], used["postgres"]


def ingest_row(label: str, stored: int, wall: float, script_cpu: float) -> Row:
    return Row(
        label,
        f"{stored / wall:,.0f} points/s ({wall:.1f} s); script {script_cpu / stored * 1e6:.2f} µs CPU/point",
    )


def history_row(
    label: str, result: dict[str, Any], cpu: CpuShare, repeats: int, extra: str = ""
) -> tuple[Row, float, float]:
    wall = statistics.median(result["times"])
    web, database = (used / repeats for used in server_cpu(cpu))
    row = Row(
        label,
        f"{wall * 1e3:,.0f} ms wall (median of {repeats}; max {max(result['times']) * 1e3:,.0f}) for "
        f"{result['points']:,} points{extra}; server CPU per call: web {web * 1e3:,.0f} ms, "
        f"PostgreSQL {database * 1e3:,.0f} ms",
    )
    return row, wall, web + database


def ours(args: argparse.Namespace, steps: int) -> tuple[list[Row], float, float, float]:
    env = configure(args.db)
    import django

    django.setup()
    from arbiter.accounts.models import Role, User
    from training.selectors import stored_points
    from training.services import runs

    user = User.objects.create_user(username="bench", password=None, role=Role.RESEARCHER)
    _, api_key = runs.issue_api_token(user=user, name="bench")
    run, token = runs.create_external_run(owner=user, name="mlflow-side-by-side", config={})
    server = Server(args.workers, env)
    try:
        with CpuShare(server.pids) as cpu:
            wall, script_cpu, delivered, ok = run_script(server.url, run.id, token, steps, "log")
        stored = stored_points(run_id=run.id)
        assert ok and delivered == stored == steps * KEYS, (ok, delivered, stored)
        rows = [
            ingest_row(
                f"(a) Arbiter run.log({{{KEYS} keys}}) per step, {stored:,} points stored", stored, wall, script_cpu
            ),
            Row("    where the CPU went", cpu.summary()),
        ]
        with CpuShare(server.pids) as hcpu:
            out = subprocess.run(
                [sys.executable, "-c", OUR_HISTORY, server.url, api_key, str(run.id), str(args.repeats)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
        result = json.loads(out.stdout)
        assert result["points"] == steps, result["points"]
        row, hist_wall, hist_cpu = history_row(
            "(b) Arbiter Api().run(id).history([key]), one call -> DataFrame", result, hcpu, args.repeats
        )
    finally:
        server.stop()
    return [*rows, row], stored / wall, hist_wall, hist_cpu


def theirs(args: argparse.Namespace, steps: int) -> tuple[list[Row], float, float, float, float]:
    import psycopg

    python = mlflow_python(args.mlflow_version)
    base = urlparse(os.environ["DATABASE_URL"])
    store = base._replace(scheme="postgresql", path=f"/{args.db}_mlflow").geturl()
    fresh_database(store)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    for key in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(key, None)
    server = MlflowServer(python, store, env)
    rows: list[Row] = []

    def count(run_id: str) -> int:
        with psycopg.connect(base._replace(path=f"/{args.db}_mlflow").geturl()) as conn:
            found = conn.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s", (run_id,)).fetchone()
        return int(found[0]) if found else 0

    try:
        env_client = dict(env, MLFLOW_TRACKING_URI=server.url)
        experiment = _experiment(python, env_client, server.url)
        with CpuShare(server.pids()) as cpu:
            batch = run_mlflow(python, env_client, "batch", server.url, experiment, steps)
        stored = count(batch["run_id"])
        assert stored == steps * KEYS, stored
        batch_rate = stored / batch["wall"]
        rows += [
            ingest_row(
                f"(a) MLflow MlflowClient().log_batch, {batch['per_request']:,} metrics a call, {stored:,} stored",
                stored,
                batch["wall"],
                batch["cpu"],
            ),
            Row("    where the CPU went", cpu.summary()),
        ]
        with CpuShare(server.pids()) as cpu:
            fluent = run_mlflow(python, env_client, "fluent", server.url, experiment, args.fluent_steps)
        fstored = count(fluent["run_id"])
        assert fstored == args.fluent_steps * KEYS, fstored
        fluent_rate = fstored / fluent["wall"]
        rows += [
            ingest_row(
                f"(a) MLflow mlflow.log_metrics({{{KEYS} keys}}) per step, {fstored:,} stored",
                fstored,
                fluent["wall"],
                fluent["cpu"],
            ),
            Row("    where the CPU went", cpu.summary()),
        ]
        with CpuShare(server.pids()) as hcpu:
            result = run_mlflow(python, env_client, "history", server.url, batch["run_id"], args.repeats)
        assert result["points"] == steps, result["points"]
        pages = math.ceil(steps / result["page"])
        row, hist_wall, hist_cpu = history_row(
            "(b) MLflow MlflowClient().get_metric_history(run_id, key)",
            result,
            hcpu,
            args.repeats,
            f" in {pages} requests of <= {result['page']:,}",
        )
        rows.append(row)
    finally:
        server.stop()
    return rows, batch_rate, fluent_rate, hist_wall, hist_cpu


def _experiment(python: Path, env: dict[str, str], url: str) -> str:
    code = "import sys; from mlflow import MlflowClient; print(MlflowClient(sys.argv[1]).create_experiment('bench'))"
    out = subprocess.run([str(python), "-c", code, url], cwd=WORKDIR, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"MLflow create_experiment failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000, help="points ingested per side (10 keys)")
    parser.add_argument("--fluent-steps", type=int, default=2_000, help="steps of mlflow.log_metrics (10 keys)")
    parser.add_argument("--repeats", type=int, default=5, help="history calls per side")
    parser.add_argument("--db", default="arbiter_bench_mlflow", help="Arbiter's database; MLflow's is <db>_mlflow")
    parser.add_argument("--workers", type=int, default=2, help="Arbiter's uvicorn workers (docker: WEB_WORKERS=2)")
    parser.add_argument("--mlflow-version", default=MLFLOW_VERSION)
    parser.add_argument("--quick", action="store_true", help="200,000 points, 300 log_metrics steps, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.points, args.fluent_steps, args.repeats = min(args.points, 200_000), min(args.fluent_steps, 300), 3
    os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter")
    steps = args.points // KEYS
    python = mlflow_python(args.mlflow_version)  # install before anything is timed
    version = subprocess.run(
        [str(python), "-c", "import mlflow; print(mlflow.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    our_rows, our_rate, our_hist, our_hist_cpu = ours(args, steps)
    their_rows, batch_rate, fluent_rate, their_hist, their_hist_cpu = theirs(args, steps)
    rows = [*our_rows[:2], *their_rows[:4]]
    rows += [
        Row(
            "(a) ratio: Arbiter run.log / MLflow log_batch (points/s)",
            f"{our_rate / batch_rate:.1f}x",
            f">= {RATIO_BUDGET}x",
            our_rate / batch_rate >= RATIO_BUDGET,
        ),
        Row("    Arbiter run.log / MLflow mlflow.log_metrics per step", f"{our_rate / fluent_rate:.1f}x"),
        our_rows[2],
        their_rows[4],
        Row(
            f"(b) ratio: MLflow / Arbiter, full history of {steps:,} points",
            f"{their_hist / our_hist:.1f}x wall, {their_hist_cpu / our_hist_cpu:.1f}x server CPU",
        ),
    ]
    print_table(
        f"Arbiter (uvicorn x{args.workers}, arbiter/server.py) beside MLflow {version} (mlflow server, PostgreSQL "
        "backend store), same PostgreSQL, same 2 cores",
        rows,
        notes=[
            "script CPU: the whole client process (imports included) per point stored; PostgreSQL CPU: every",
            "postgres process on the machine (other users of the server included); server CPU ratio: web + PostgreSQL",
        ],
    )


if __name__ == "__main__":
    main()
