"""Arbiter's annotator loop beside Label Studio's at 32 annotators, same items, same PostgreSQL; print a table.

Label Studio LS_VERSION (1.23.2) runs from its own virtualenv, var/bench/labelstudio-venv, which this script
creates on first use (`pip install label-studio==1.23.2`) and reuses afterwards; never the project's .venv.
It runs on its PostgreSQL settings (DJANGO_DB=default, POSTGRE_NAME=<--db>_labelstudio, POSTGRE_USER/HOST/PORT
from DATABASE_URL) on a fresh database of the same PostgreSQL Arbiter uses, not its default SQLite: both sides
then write to the same engine, and SQLite's single writer would make 32 annotators a test of SQLite. Two ways
of serving it, each on a fresh database (--servers, both by default):
- "start": `label-studio start --no-browser --port P`, as its pip install docs say; Django's threaded
  development server in one process, so at most about one core;
- "uwsgi": as its Docker image serves it (deploy/start_label_studio.sh, deploy/uwsgi.ini): `label-studio init`
  for the schema and admin, then uWSGI (uwsgi==UWSGI_VERSION, built into its venv) with that file's settings:
  2 x cores processes of 1 thread, master, lazy-apps, thunder-lock, post-buffering 4096, harakiri 120, no
  request log; not its `cheaper` (all processes start at once) and no nginx in front (uWSGI's HTTP router,
  which answers one request a connection, so each annotator connects for every request, as nginx does to uWSGI);
Changed from its defaults only: the port, the data directory (LABEL_STUDIO_BASE_DATA_DIR under var/bench/,
fresh each run), SENTRY_DSN="" (by default it reports errors and 2% of requests' traces to sentry.io; this
machine has no route out, and bench_mlflow.py turns MLflow's telemetry off likewise), and
`--enable-legacy-api-token`, so each annotator authenticates with their own user token (`Authorization:
Token ...`) as its API docs show (1.23 turns legacy tokens off for a new organisation; its other option,
short-lived JWT access tokens, needs a refresh call every few minutes).

Setup (not timed): an admin user from its start (or init) command, 65 annotator users (one to warm up, 32 per level)
created with Label Studio's own Django models in its venv, each with their own token and in the
organisation; a project with its pairwise template (`<Pairwise name="pw" toName="text1,text2"/>` under a
Header showing the prompt) and overlap 2 (maximum_annotations=2, as bench_annotation.py's study); the same
10,000 items as bench/bench_annotation.py (its generator: a prompt and two ~300-word answers), imported
through POST /api/projects/<id>/import.

The loop, the calls Label Studio's annotator UI makes: GET /api/projects/<id>/next/ (the next task, with its
data), then POST /api/tasks/<task>/annotations/?project=<id> with the pairwise result; 32 annotators with no
think time for --seconds, then 32 more, each arriving after a uniform 0-3 s and pausing 1-3 s after each
submit, for twice as long (bench_annotation.py's loop for Arbiter; both run harness.annotator_load). Each
annotator is a thread of one client process with its own keep-alive connection. p50/p95/p99 of each request,
judgments/s, and the CPU of client, server and PostgreSQL; afterwards the tasks over their overlap and
(task, annotator) pairs judged twice are counted.

Arbiter's side is bench/bench_annotation.py itself, run once at the same sizes (`--levels 32`), its table
printed here; the ratio of judgments/s at 32 annotators with no think time, for each way of serving Label
Studio, is set against DESIGN.md's ">= 20x Label Studio at 32 annotators".

Usage: python bench/bench_labelstudio.py [--quick] [--items 10000] [--seconds 15] [--servers start,uwsgi]
       [--db arbiter_bench_labelstudio]
`--quick`: 2,000 items, 5 s per level. Never run in tests or CI; timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_annotation import _fresh_database, _items_jsonl, _pct  # noqa: E402
from harness import Judged, Refused, Row, annotator_load, parse_quick, print_table, stop_process, wait_for  # noqa: E402

LS_VERSION = "1.23.2"
UWSGI_VERSION = "2.0.31"  # its Docker image serves with uWSGI (deploy/uwsgi.ini); built from source here
VENV = ROOT / "var" / "bench" / "labelstudio-venv"
DATA_DIR = ROOT / "var" / "bench" / "labelstudio-data"
SERVER_LOG = ROOT / "var" / "bench" / "labelstudio-server.log"
RATIO_BUDGET = 20  # annotation >= 20x Label Studio at 32 annotators (DESIGN.md)
LEVEL = 32
ADMIN_TOKEN = "benchadmintoken0123456789abcdef01234567"
LABEL_CONFIG = """<View>
  <Header value="$prompt"/>
  <Pairwise name="pw" toName="text1,text2"/>
  <Text name="text1" value="$text1"/>
  <Text name="text2" value="$text2"/>
</View>"""
RESULT = [{"from_name": "pw", "to_name": "pw", "type": "pairwise", "value": {"selected": "left"}}]

# Run by Label Studio's venv with its settings: annotators with their tokens, in the organisation.
MAKE_USERS = r"""
import json, os, sys
import label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")
import django
django.setup()
from organizations.models import Organization
from users.models import User
org = Organization.objects.first()
tokens = []
for i in range(int(sys.argv[1])):
    user = User.objects.create_user(email=f"annotator{i}@bench.local", password="bench-annotator-password")
    org.add_user(user)
    user.active_organization = org
    user.save(update_fields=["active_organization"])
    tokens.append(user.auth_token.key)
print(json.dumps(tokens))
"""


def ls_python(uwsgi: bool) -> Path:
    """Label Studio's venv interpreter (and uWSGI when asked), installed on first use, reused when versions match."""
    python = VENV / "bin" / "python"
    want = [f"label-studio=={LS_VERSION}", *([f"uwsgi=={UWSGI_VERSION}"] if uwsgi else [])]
    code = "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))"
    names = [w.split("==")[0] for w in want]
    found = (
        subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True) if python.exists() else None
    )
    if found and found.stdout.split() == want:
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"installing {' '.join(want)} into {VENV} ...", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *want], check=True)
    return python


class LabelStudio:
    """Label Studio on PostgreSQL, output to SERVER_LOG: `label-studio start` (server "start"), or its Docker
    image's uWSGI (server "uwsgi": `label-studio init` for the schema and admin, then uWSGI as deploy/uwsgi.ini)."""

    def __init__(self, python: Path, env: dict[str, str], server: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        bin_dir = python.parent
        self.workers = 2 * (os.cpu_count() or 1)
        self.keepalive = server == "start"
        admin = ["--username", "admin@bench.local", "--password", "bench-admin-password", "--user-token", ADMIN_TOKEN]
        admin.append("--enable-legacy-api-token")
        if server == "start":
            cmd = [str(bin_dir / "label-studio"), "start", "--no-browser", "--port", str(self.port), *admin]
        else:
            subprocess.run(
                [str(bin_dir / "label-studio"), "init", *admin], cwd=DATA_DIR, env=env, check=True, capture_output=True
            )
            package = subprocess.run(
                [str(python), "-c", "import label_studio, os; print(os.path.dirname(label_studio.__file__))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            env = dict(env, DJANGO_SETTINGS_MODULE="core.settings.label_studio", APP_WEBSERVER="uwsgi")
            cmd = [str(bin_dir / "uwsgi"), "--http", f"127.0.0.1:{self.port}", "--chdir", package]
            cmd += ["--module", "core.wsgi:application", "--master", "--single-interpreter", "--need-app"]
            cmd += ["--processes", str(self.workers), "--threads", "1", "--enable-threads"]
            cmd += ["--thunder-lock", "--lazy-apps", "--buffer-size", "65535", "--post-buffering", "4096"]
            cmd += ["--http-timeout", "300", "--harakiri", "120", "--disable-logging", "--die-on-term"]
        with SERVER_LOG.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=DATA_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = wait_for(  # the first start migrates a fresh database
            self.proc,
            lambda: self.call("GET", "/api/projects/", token=ADMIN_TOKEN)[0] == 200,
            seconds=600,
            interval=1.0,
            failure=f"label-studio did not start; see {SERVER_LOG}",
        )
        while server == "uwsgi" and SERVER_LOG.read_text(errors="replace").count(" ready in ") < self.workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"not every uWSGI worker loaded Label Studio; see {SERVER_LOG}")
            time.sleep(1.0)  # lazy-apps: each worker loads the app after the first one answers
        top = psutil.Process(self.proc.pid)
        self.processes = [top, *top.children(recursive=True)]

    def call(self, method: str, path: str, body: Any = None, *, token: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw
        finally:
            conn.close()

    def stop(self) -> None:
        stop_process(self.proc)


def run_level(
    ls: LabelStudio, project: int, tokens: list[str], seconds: float, think: tuple[float, float] | None = None
) -> dict[str, Any]:
    """bench_annotation.run_level's loop (harness.annotator_load) against Label Studio's API: next task, submit."""
    body = json.dumps({"result": RESULT, "lead_time": 0.9, "project": project}).encode()

    def start(token: str) -> Callable[[], Judged]:
        conn = http.client.HTTPConnection("127.0.0.1", ls.port, timeout=120)
        get_headers = {"Authorization": f"Token {token}"}
        post_headers = {**get_headers, "Content-Type": "application/json"}
        perf = time.perf_counter

        def judge() -> Judged:
            t0 = perf()
            conn.request("GET", f"/api/projects/{project}/next/", headers=get_headers)
            response = conn.getresponse()
            page = response.read()
            if not ls.keepalive:
                conn.close()  # uWSGI's HTTP router answers one request a connection; the next one reconnects
            t1 = perf()
            if response.status == 404:
                return t1 - t0, None, None  # nothing left for this annotator
            if response.status != 200:
                raise Refused(f"next answered {response.status}", t1 - t0)
            task = json.loads(page)["id"]
            t2 = perf()
            conn.request("POST", f"/api/tasks/{task}/annotations/?project={project}", body, post_headers)
            response = conn.getresponse()
            response.read()
            if not ls.keepalive:
                conn.close()
            t3 = perf()
            if response.status != 201:
                raise Refused(f"submit answered {response.status}", t1 - t0, t3 - t2)
            return t1 - t0, t3 - t2, int(task)

        return judge

    return annotator_load(tokens, start, seconds, ls.processes, think)


def level_rows(result: dict[str, Any], think: tuple[float, float] | None, label: str) -> list[Row]:
    n, elapsed = len(result["accepted"]), result["elapsed"]
    cells = ", ".join(
        f"{name} p50 {_pct(result[req], 50) * 1e3:.1f} / p95 {_pct(result[req], 95) * 1e3:.1f} / "
        f"p99 {_pct(result[req], 99) * 1e3:.1f} ms"
        for req, name in (("fetch", "next"), ("submit", "submit"))
    )
    pace = f"think {think[0]:g}-{think[1]:g} s" if think else "no think time"
    errors = f"{len(result['errors'])} errors" + (f" ({result['errors'][0]})" if result["errors"] else "")
    cpu = result["cpu"]
    share = ", ".join(f"{name} {100 * sec / elapsed:.0f}%" for name, sec in cpu.items())
    return [
        Row(f"{label}, {LEVEL} annotators, {pace}: {n} judgments, {n / elapsed:.1f}/s, {errors}", cells),
        Row(
            "    whole loop (next + submit)",
            f"p50 {_pct(result['loop'], 50) * 1e3:.1f} / p95 {_pct(result['loop'], 95) * 1e3:.1f} ms",
        ),
        Row(
            "    CPU (share of one core)",
            f"{share}; {sum(cpu.values()) / max(1, n) * 1e3:.1f} ms of CPU per judgment; whole machine "
            f"{100 * result['machine_cpu'] / elapsed:.0f}% ({result['machine_cpu'] / max(1, n) * 1e3:.1f} ms)",
        ),
    ]


def ours(args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    """bench_annotation.py at 32 annotators (no think time, then 1-3 s), its table and its figures."""
    cmd = [sys.executable, str(ROOT / "bench" / "bench_annotation.py"), "--levels", str(LEVEL), "--paced", str(LEVEL)]
    cmd += ["--items", str(args.items), "--seconds", str(args.seconds), "--db", args.db]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise SystemExit(f"bench_annotation.py failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    figures = {}
    for key, pace in (("none", "no think time"), ("think", r"think [\d.]+-[\d.]+ s")):
        found = re.search(
            rf"{LEVEL} annotators, {pace}: (\d+) judgments, ([\d.]+)/s.*?\| fetch p50 [\d.]+ / p95 "
            r"([\d.]+) / p99 [\d.]+ ms, submit p50 [\d.]+ / p95 ([\d.]+).*?([\d.]+) ms of CPU per judgment; "
            r"whole machine \d+% \(([\d.]+) ms\)",
            out.stdout,
            re.S,
        )
        if not found:
            raise SystemExit(f"no {pace} row in bench_annotation.py's table:\n{out.stdout[-3000:]}")
        figures[f"{key}_rate"] = float(found.group(2))
        figures[f"{key}_fetch95"], figures[f"{key}_submit95"] = float(found.group(3)), float(found.group(4))
        figures[f"{key}_cpu_ms"] = float(found.group(5))
        figures[f"{key}_machine_ms"] = float(found.group(6))
    return out.stdout, figures


def theirs(args: argparse.Namespace, server: str, label: str) -> tuple[list[Row], dict[str, float]]:
    import psycopg

    python = ls_python(server == "uwsgi")
    base = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter"))
    name = f"{args.db}_labelstudio"
    _fresh_database(base._replace(path="/postgres").geturl(), name)
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    DATA_DIR.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        DJANGO_DB="default",
        POSTGRE_NAME=name,
        POSTGRE_USER=base.username or "postgres",
        POSTGRE_PASSWORD=base.password or "",
        POSTGRE_HOST=base.hostname or "127.0.0.1",
        POSTGRE_PORT=str(base.port or 5432),
        LABEL_STUDIO_BASE_DATA_DIR=str(DATA_DIR),
        SENTRY_DSN="",  # its default reports errors and 2% of requests' traces to sentry.io; no route out here
    )
    ls = LabelStudio(python, env, server)
    try:
        made = subprocess.run(
            [str(python), "-c", MAKE_USERS, str(1 + 2 * LEVEL)], cwd=DATA_DIR, env=env, capture_output=True, text=True
        )
        if made.returncode:
            raise SystemExit(f"creating Label Studio users failed:\n{made.stderr[-3000:]}")
        tokens = json.loads(made.stdout.strip().splitlines()[-1])
        status, project = ls.call(
            "POST",
            "/api/projects/",
            {"title": "bench", "label_config": LABEL_CONFIG, "maximum_annotations": 2},
            token=ADMIN_TOKEN,
        )
        assert status == 201, (status, project)
        pid = project["id"]
        items = [json.loads(line) for line in _items_jsonl(args.items).splitlines()]
        tasks = [{"data": {"prompt": i["prompt"], "text1": i["response_a"], "text2": i["response_b"]}} for i in items]
        t0 = time.perf_counter()
        for start in range(0, len(tasks), 2000):
            status, answer = ls.call(
                "POST", f"/api/projects/{pid}/import", tasks[start : start + 2000], token=ADMIN_TOKEN
            )
            assert status == 201, (status, answer)
        import_s = time.perf_counter() - t0
        warm = run_level(ls, pid, tokens[:1], 2.0)  # warm caches, connections (as bench_annotation.py does)
        none = run_level(ls, pid, tokens[1 : 1 + LEVEL], args.seconds)
        think = (1.0, 3.0)
        paced = run_level(ls, pid, tokens[1 + LEVEL :], 2 * args.seconds, think)
    finally:
        ls.stop()
    with psycopg.connect(base._replace(path=f"/{name}").geturl()) as conn:
        over = conn.execute(
            "SELECT count(*) FROM (SELECT task_id FROM task_completion WHERE NOT was_cancelled GROUP BY task_id "
            "HAVING count(*) > 2) t"
        ).fetchone()
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM task_completion GROUP BY task_id, completed_by_id "
            "HAVING count(*) > 1) t"
        ).fetchone()
        stored = conn.execute("SELECT count(*) FROM task_completion").fetchone()
    accepted = sum(len(r["accepted"]) for r in (warm, none, paced))
    rows = [
        Row(f"{label}: import of {len(tasks):,} items (POSTs of up to 2,000)", f"{import_s:.1f} s"),
        *level_rows(none, None, label),
        *level_rows(paced, think, label),
        Row(
            f"{label}: afterwards",
            f"{over[0] if over else '?'} tasks over overlap 2, {twice[0] if twice else '?'} (task, annotator) twice, "
            f"{stored[0] if stored else '?'} annotations stored of {accepted} accepted (warm-up included)",
        ),
    ]
    figures = {
        "none_rate": len(none["accepted"]) / none["elapsed"],
        "none_cpu_ms": sum(none["cpu"].values()) / max(1, len(none["accepted"])) * 1e3,
        "none_machine_ms": none["machine_cpu"] / max(1, len(none["accepted"])) * 1e3,
        "think_fetch95": _pct(paced["fetch"], 95) * 1e3,
        "think_submit95": _pct(paced["submit"], 95) * 1e3,
    }
    return rows, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds, no think time (twice: think)")
    parser.add_argument("--db", default="arbiter_bench_labelstudio", help="Arbiter's database; <db>_labelstudio theirs")
    parser.add_argument("--servers", default="start,uwsgi", help="label-studio start and/or its Docker image's uWSGI")
    args = parse_quick(parser)
    servers = args.servers.split(",")
    assert set(servers) <= {"start", "uwsgi"}, "--servers: start, uwsgi"
    ls_python("uwsgi" in servers)  # install before anything is timed
    our_table, our = ours(args)
    print(our_table.rstrip())
    rows: list[Row] = []
    for server in servers:
        procs = 2 * (os.cpu_count() or 1)
        label = "Label Studio start" if server == "start" else f"Label Studio uWSGI x{procs}"
        their_rows, their = theirs(args, server, label)
        ratio = our["none_rate"] / their["none_rate"]
        rows += [
            *their_rows,
            Row(
                f"ratio at {LEVEL} annotators, no think time: Arbiter / {label} judgments/s",
                f"{ratio:.1f}x ({our['none_rate']:.1f} / {their['none_rate']:.1f})",
                f">= {RATIO_BUDGET}x",
                ratio >= RATIO_BUDGET,
            ),
            Row(
                f"    CPU per judgment (client + server + PostgreSQL), no think time: {label} / Arbiter",
                f"{their['none_cpu_ms'] / our['none_cpu_ms']:.1f}x ({their['none_cpu_ms']:.1f} / "
                f"{our['none_cpu_ms']:.1f} ms; steadier than judgments/s on a shared machine)",
            ),
            Row(
                f"    whole machine's CPU per judgment, no think time: {label} / Arbiter",
                f"{their['none_machine_ms'] / our['none_machine_ms']:.1f}x ({their['none_machine_ms']:.1f} / "
                f"{our['none_machine_ms']:.1f} ms; counts the PostgreSQL backends a server opens and closes per "
                "request, which no process sample sees; read on a quiet machine)",
            ),
            Row(
                f"    p95 at {LEVEL} annotators, think 1-3 s: {label} next / submit vs Arbiter fetch / submit",
                f"{their['think_fetch95']:.1f} / {their['think_submit95']:.1f} ms vs "
                f"{our['think_fetch95']:.1f} / {our['think_submit95']:.1f} ms",
            ),
        ]
    print_table(
        f"Label Studio {LS_VERSION} on PostgreSQL beside Arbiter (bench_annotation.py above), "
        f"{args.items:,} pairwise items, overlap 2",
        rows,
    )


if __name__ == "__main__":
    main()
