"""Benchmark the annotator loop over real HTTP on the production server (uvicorn + PostgreSQL) and print a table.

The loop, as the browser makes it: the first page (GET /annotate/<study>/, the full form page), then
a judgment (POST .../submit/) whose answer is the next item's full page, and the next judgment on
that page (one request a judgment; a redirect only at the queue's end, then a GET), with no think
time, at 1, 8 and 32 concurrent annotators on a pairwise study of 10,000 items (a prompt and two
~300-word answers), overlap 2. Budgets (DESIGN.md): p95 < 20 ms at 1 annotator and < 50 ms at 32,
over every request an annotator waits for (fetches and submits together; each also printed).
With no think time 32 annotators are 32 requests always in flight: their p95 is queueing, about
32 / (requests per second) on top of one request's time, so this is the machine's throughput as
much as one request's latency. Then 32 annotators again, each pausing 1-3 s (uniform) after every
submit, for twice as long: a very fast person (two 300-word answers take most people 20-60 s), so
their p95 is what an annotator waits for a page while 31 others work; each starts after a uniform
0-3 s pause, as people already at work arrive, rather than all 32 in the same millisecond (that
burst, on a worker whose first requests were still compiling templates and opening connections, was
most of this level's p95 in a short run). Both are printed against the budget. Before measuring, 8
annotators warm the server for 2 s, so that every worker has served requests (a keep-alive
connection stays on the worker that accepted it). Also: the import time of the 10,000 items and the export time of
all judgments (topped up to the full 20,000 = 10,000 x overlap). Afterwards the database is
checked: no item over its overlap, no (item, annotator) twice, and every submit the server
accepted stored.

The server is started as arbiter/server.py starts it, with `--workers` processes (2, as
docker/Dockerfile's WEB_WORKERS). The client is one process of threads, each an annotator with its
own keep-alive connection; the CPU it and the servers used per level is printed, so a client that
starves the servers on a small machine shows.

Usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/2 \
       python bench/bench_annotation.py [--quick] [--seconds 15] [--workers 2] [--levels 1,8,32]
`--quick`: 2,000 items and 5 s per level. It creates (and drops first) the database `--db`
(arbiter_bench_annotation) on that server.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import SERVER_LOG, Judged, Refused, Row, Server, annotator_load, parse_quick, print_table, session_backend  # noqa: E402

BUDGET_MS = {1: 20.0, 32: 50.0}  # p95 of each request (DESIGN.md)
WARM_ANNOTATORS = 8  # connections opened before measuring, so that every server worker has served some

WORDS = [
    *[
        "the",
        "model",
        "answer",
        "reasons",
        "about",
        "data",
        "because",
        "each",
        "step",
        "follows",
        "from",
        "evidence",
        "so",
        "we",
        "compute",
        "a",
    ],
    *[
        "result",
        "with",
        "care",
        "then",
        "check",
        "it",
        "against",
        "the",
        "question",
        "and",
        "note",
        "where",
        "it",
        "may",
        "fail",
        "or",
        "need",
        "more",
        "context",
    ],
]
ASSIGNMENT_RE = re.compile(rb'name="assignment" value="(\d+)"')
CSRF_RE = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


def _answer(rng: random.Random, words: int = 300) -> str:
    body = [rng.choice(WORDS) for _ in range(words)]
    paragraphs = [" ".join(body[i : i + 60]) + "." for i in range(0, words, 60)]
    return "\n\n".join(paragraphs[:-1]) + "\n\n```python\nprint('result')\n```\n\n" + paragraphs[-1]


def _items_jsonl(n: int) -> bytes:
    import orjson

    rng = random.Random(0)
    lines = []
    for i in range(n):
        row = {
            "id": f"q{i}",
            "prompt": f"Question {i}: " + " ".join(rng.choice(WORDS) for _ in range(25)) + "?",
            "response_a": _answer(rng),
            "response_b": _answer(rng),
            "model_a": "model-x",
            "model_b": "model-y",
        }
        lines.append(orjson.dumps(row))
    return b"\n".join(lines)


def _database_urls(db: str) -> tuple[str, str]:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter")
    parsed = urllib.parse.urlparse(base)
    if not parsed.scheme.startswith("postgres"):
        sys.exit("bench_annotation needs PostgreSQL: set DATABASE_URL=postgres://...")
    admin = parsed._replace(path="/postgres").geturl()
    bench = parsed._replace(path=f"/{db}").geturl()
    return admin, bench


def _fresh_database(admin_url: str, db: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db}")


class Client:
    """One annotator's keep-alive HTTP connection with its session and CSRF cookies."""

    def __init__(self, port: int, session_key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies = {"sessionid": session_key}
        self._headers = self._make_headers()

    def _make_headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), "Host": "127.0.0.1"}

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = self._headers
        if body is not None:
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        cookies = response.headers.get_all("Set-Cookie")
        if cookies:
            for header in cookies:
                name, _, rest = header.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            self._headers = self._make_headers()
        return response.status, data


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_level(
    port: int,
    study_id: int,
    sessions: list[str],
    seconds: float,
    servers: list[Any],
    think: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """`sessions` annotators loop for `seconds` (harness.annotator_load): fetch the form page, submit a
    judgment; with `think` = (lo, hi) each pauses a uniform lo..hi seconds after every submit."""
    next_path, submit_path = f"/annotate/{study_id}/", f"/annotate/{study_id}/submit/"

    def start(session_key: str) -> Callable[[], Judged]:
        client = Client(port, session_key)
        perf = time.perf_counter
        shown: list[bytes | None] = [None]  # the page on screen: the last submit's answer, as in the browser

        def judge() -> Judged:
            page, fetch_s = shown[0], None
            if page is None:  # the first page, or after the end of the queue (a redirect)
                t0 = perf()
                status, page = client.request("GET", next_path)
                fetch_s = perf() - t0
                if status != 200:
                    raise Refused(f"fetch answered {status}", fetch_s)
            match = ASSIGNMENT_RE.search(page)
            if not match:
                return fetch_s or 0.0, None, None  # nothing left for this annotator
            token = CSRF_RE.search(page).group(1)  # type: ignore[union-attr]
            form = b"csrfmiddlewaretoken=%s&assignment=%s&choice=left&time_ms=900" % (token, match.group(1))
            t2 = perf()
            status, answer = client.request("POST", submit_path, form)
            t3 = perf()
            if status not in (200, 302):
                raise Refused(f"submit answered {status}", fetch_s, t3 - t2)
            shown[0] = answer if status == 200 else None  # 200: the next item's page; 302: the queue's end
            return fetch_s, t3 - t2, int(match.group(1))

        return judge

    return annotator_load(sessions, start, seconds, servers, think)


def level_rows(results: list[Any]) -> list[Row]:
    rows = []
    for level, r, think in results:
        n = len(r["accepted"])
        p95 = {req: _pct(r[req], 95) * 1000 for req in ("fetch", "submit", "loop")}
        every = _pct(r["fetch"] + r["submit"], 95) * 1000  # each request an annotator waited for
        budget = BUDGET_MS.get(level)
        cells = ", ".join(
            f"{req} p50 {_pct(r[req], 50) * 1000:.1f} / p95 {p95[req]:.1f} / p99 {_pct(r[req], 99) * 1000:.1f} ms"
            for req in ("fetch", "submit")
        )
        cells += f"; every request p95 {every:.1f} ms ({len(r['fetch'])} fetches, {len(r['submit'])} submits)"
        rows.append(
            Row(
                f"{level} annotator{'s' if level > 1 else ''}"
                f"{f', think {think[0]:g}-{think[1]:g} s' if think else ', no think time'}: "
                f"{n} judgments, {n / r['elapsed']:.1f}/s, "
                f"{len(r['errors'])} errors",
                cells,
                f"p95 < {budget:.0f} ms" if budget else "",
                (every < budget and not r["errors"]) if budget else None,
            )
        )
        rows.append(
            Row("    whole loop (a judgment)", f"p50 {_pct(r['loop'], 50) * 1000:.1f} / p95 {p95['loop']:.1f} ms")
        )
        cpu, elapsed = r["cpu"], r["elapsed"]
        parts = [f"{name} {100 * sec / elapsed:.0f}%" for name, sec in cpu.items()]
        per = sum(cpu.values()) / max(1, n) * 1000
        busy = r["machine_cpu"]
        machine = f"; whole machine {100 * busy / elapsed:.0f}% ({busy / max(1, n) * 1000:.1f} ms)"
        rows.append(
            Row("    CPU (share of one core)", ", ".join(parts) + f"; {per:.1f} ms of CPU per judgment" + machine)
        )
    return rows


def run_floor(
    args: argparse.Namespace,
    env: dict[str, str],
    researcher: Any,
    annotators: list[Any],
    pool: list[Any],
    session_for: Callable[[Any], str],
    data: bytes,
    page_bytes: int,
    levels: list[int],
) -> list[Any]:
    """The no-think levels on bench/annotation_floor.py (a bare ASGI app under the same uvicorn command line),
    each with a study of its own (the same items: the floor is fast enough to empty one in a level), so the
    integrity row stays Arbiter's alone."""
    from evaluation import services

    def fresh_study() -> int:
        study = services.create_study(owner=researcher, name="floor", kind="pairwise", overlap=2, annotators=annotators)
        services.import_items(study=study, data=data)
        return int(study.pk)

    floor_env = {
        **env,
        "FLOOR_DATABASE_URL": env["DATABASE_URL"],
        "FLOOR_PAGE_BYTES": str(page_bytes),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), env["PYTHONPATH"]]),
    }
    server = Server(args.workers, floor_env, app="annotation_floor:app")
    results = []
    try:
        warm = [session_for(pool.pop()) for _ in range(WARM_ANNOTATORS)]
        run_level(server.port, fresh_study(), warm, 2.0, server.processes)
        for level in levels:
            study_id = fresh_study()
            sessions = [session_for(pool.pop()) for _ in range(level)]
            results.append((level, run_level(server.port, study_id, sessions, args.seconds, server.processes), None))
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--levels", default="1,8,32", help="annotators at once, no think time (saturation)")
    parser.add_argument("--paced", type=int, default=32, help="then this many annotators with think time (0: none)")
    parser.add_argument("--think", default="1,3", help="think time after each submit: uniform LO,HI seconds")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concurrency level")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (docker: WEB_WORKERS=2)")
    parser.add_argument("--settings", default="arbiter.settings", help="DJANGO_SETTINGS_MODULE for the servers")
    parser.add_argument("--db", default="arbiter_bench_annotation", help="database to create (dropped first)")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="then the no-think levels again on bench/annotation_floor.py (no framework: the machine's limit)",
    )
    args = parse_quick(parser)
    levels = [int(x) for x in args.levels.split(",")]

    admin_url, bench_url = _database_urls(args.db)
    _fresh_database(admin_url, args.db)
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/2"),
        "DJANGO_SETTINGS_MODULE": args.settings,
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    }
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)

    import django

    django.setup()
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.db.models import Count, F
    from django.utils import timezone

    from arbiter.accounts.models import Role, User
    from evaluation import export, services
    from evaluation.models import Assignment, ExportJob, Item, Judgment

    session_store = import_module(settings.SESSION_ENGINE).SessionStore
    researcher = User.objects.create_user("bench-researcher", password=None, role=Role.RESEARCHER)
    think = tuple(float(x) for x in args.think.split(","))
    assert len(think) == 2, "--think LO,HI"
    per_server = sum(levels) + args.paced + WARM_ANNOTATORS + 1  # + 1: the page whose size is printed
    if args.floor:
        per_server += sum(levels) + WARM_ANNOTATORS
    annotators = [
        User.objects.create_user(f"bench-a{i}", password=None, role=Role.ANNOTATOR) for i in range(per_server + 2)
    ]

    def session_for(user: User) -> str:
        store = session_store()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = session_backend()
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        return str(store.session_key)

    study = services.create_study(owner=researcher, name="bench", kind="pairwise", overlap=2, annotators=annotators)
    data = _items_jsonl(args.items)
    t0 = time.perf_counter()
    report = services.import_items(study=study, data=data)
    import_s = time.perf_counter() - t0
    assert report.created == args.items

    SERVER_LOG.write_bytes(b"")
    pool = list(annotators)
    results: list[Any] = []
    server = Server(args.workers, env)
    try:
        # Warm every worker (a keep-alive connection stays on the worker that accepted it, so one annotator
        # warms one): its first requests compile templates and open pooled connections.
        warm = [session_for(pool.pop()) for _ in range(WARM_ANNOTATORS)]
        run_level(server.port, study.pk, warm, 2.0, server.processes)
        for level in levels:
            sessions = [session_for(pool.pop()) for _ in range(level)]
            results.append((level, run_level(server.port, study.pk, sessions, args.seconds, server.processes), None))
        if args.paced:
            sessions = [session_for(pool.pop()) for _ in range(args.paced)]
            paced = run_level(server.port, study.pk, sessions, 2 * args.seconds, server.processes, think=think)
            results.append((args.paced, paced, think))
        # One more annotator's first page: its size is the floor's (below), and its bytes go in the table.
        status, first_page = Client(server.port, session_for(pool.pop())).request("GET", f"/annotate/{study.pk}/")
        assert status == 200 and ASSIGNMENT_RE.search(first_page), f"{status}: not an item's page"
    finally:
        server.stop()
    floor_results = []
    if args.floor:
        floor_results = run_floor(args, env, researcher, annotators, pool, session_for, data, len(first_page), levels)

    # Integrity after the storm.
    over = Item.objects.filter(study=study, judgment_count__gt=F("overlap")).count()
    dup = (
        Judgment.objects.filter(study=study)
        .values("item_id", "annotator_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    accepted = {a for _, r, _ in results for a in r["accepted"]}
    stored = set(
        Judgment.objects.filter(study=study, assignment_id__in=accepted).values_list("assignment_id", flat=True)
    )
    lost = len(accepted - stored)
    measured_judgments = Judgment.objects.filter(study=study).count()

    # Top up to a fully judged study (items × overlap) so the export covers all 20,000.
    filler = [pool.pop(), pool.pop()]
    now = timezone.now()
    have: dict[int, set[int]] = {}
    for item_id, annotator_id in Judgment.objects.filter(study=study).values_list("item_id", "annotator_id"):
        have.setdefault(item_id, set()).add(annotator_id)
    new_assignments = []
    for item_id in Item.objects.filter(study=study).values_list("id", flat=True):
        need = 2 - len(have.get(item_id, ()))
        for person in filler[:need]:
            new_assignments.append(
                Assignment(
                    study=study,
                    item_id=item_id,
                    annotator=person,
                    leased_at=now,
                    lease_expires_at=now,
                    completed_at=now,
                )
            )
    Assignment.objects.filter(study=study, completed_at=None).update(released_at=now)
    created = Assignment.objects.bulk_create(new_assignments, batch_size=2000)
    Judgment.objects.bulk_create(
        [
            Judgment(
                assignment=a,
                study=study,
                item_id=a.item_id,
                annotator=a.annotator,
                payload={"choice": "a", "shown": "left", "strength": None, "rationale": ""},
            )
            for a in created
        ],
        batch_size=2000,
    )
    total_judgments = Judgment.objects.filter(study=study).count()
    exports = {}
    for fmt in ("judgments_jsonl", "judgments_csv", "reward"):
        job = ExportJob.objects.create(study=study, requested_by=researcher, format=fmt)
        t0 = time.perf_counter()
        export.run_export(export_id=job.pk)
        exports[fmt] = time.perf_counter() - t0

    options: Any = settings.DATABASES["default"]["OPTIONS"]
    db_pool = options.get("pool", {}).get("max_size", "no")
    rows = level_rows(results)
    rows.append(Row("    the page (a pairwise item, 2 answers of ~300 words)", f"{len(first_page):,} bytes"))
    if floor_results:
        rows.append(
            Row(
                "the floor (bench/annotation_floor.py): no framework; the same SQL, Redis reads and page size",
                "the machine's limit for this loop, not a server to run: no CSRF, session or form checks, no template",
            )
        )
        rows += [
            Row(f"  floor: {r.measure}", r.result) for r in level_rows(floor_results) if "whole loop" not in r.measure
        ]
    rows.append(
        Row(
            "integrity: judgments / over-assigned items / duplicated (item, annotator) / accepted submits not stored",
            f"{measured_judgments} / {over} / {dup} / {lost}",
            "0 / 0 / 0",
            over == dup == lost == 0,
        )
    )
    rate = args.items / import_s
    rows.append(
        Row(
            f"import of {args.items:,} items (parse + validate + render + insert)",
            f"{import_s:.2f} s ({rate:,.0f} items/s)",
        )
    )
    for fmt, seconds in exports.items():
        rows.append(Row(f"export {fmt} of {total_judgments:,} judgments", f"{seconds:.2f} s"))
    errors = [e for _, r, _ in results for e in r["errors"]]
    notes = [f"error: {e}" for e in errors[:3]] + ([f"server log: {SERVER_LOG}"] if errors else [])
    print_table(
        f"Annotator loop over HTTP: uvicorn x{args.workers} (arbiter/server.py), PostgreSQL (pool {db_pool}/process);\n"
        f"{args.items:,} pairwise items (2 x ~300-word answers), overlap 2, {args.seconds:.0f} s a level (paced 2x)",
        rows,
        notes=[
            *notes,
            "CPU: client = this bench's annotator threads; postgres = every backend on the server, those opened "
            "during the level included; whole machine = all CPU time not idle (Redis, the kernel's networking "
            "and any other load too; of 100% x cores), the figure to read on a quiet machine.",
        ],
    )


if __name__ == "__main__":
    main()
