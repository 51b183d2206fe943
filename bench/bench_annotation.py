"""Benchmark the annotator loop over real HTTP (daphne + PostgreSQL) and print a table.

The loop: fetch the next item (GET /annotate/<study>/, the full form page) and submit a
judgment (POST .../submit/), with no think time, at 1, 8 and 32 concurrent annotators on a
pairwise study of 10,000 items (a prompt and two ~300-word answers), overlap 2. Also: the
import time of the 10,000 items and the export time of all judgments (topped up to the full
20,000 = 10,000 × overlap). Afterwards the database is checked: no item over its overlap, no
(item, annotator) twice, and every submit the server accepted stored.

Usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/2 \
       python bench/bench_annotation.py [--seconds 15] [--workers 2]
It creates (and drops first) the database `arbiter_bench_annotation` on that server.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
SERVER_LOG = Path(tempfile.gettempdir()) / "bench_annotation_server.log"
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


def _database_urls() -> tuple[str, str]:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/arbiter")
    parsed = urllib.parse.urlparse(base)
    if not parsed.scheme.startswith("postgres"):
        sys.exit("bench_annotation needs PostgreSQL: set DATABASE_URL=postgres://...")
    admin = parsed._replace(path="/postgres").geturl()
    bench = parsed._replace(path="/arbiter_bench_annotation").geturl()
    return admin, bench


def _fresh_database(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS arbiter_bench_annotation WITH (FORCE)")
        conn.execute("CREATE DATABASE arbiter_bench_annotation")


class Client:
    """One annotator's keep-alive HTTP connection with its session and CSRF cookies."""

    def __init__(self, port: int, session_key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies = {"sessionid": session_key}

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), "Host": "127.0.0.1"}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, data


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_level(port: int, study_id: int, sessions: list[str], seconds: float) -> dict[str, object]:
    fetch: list[float] = []
    submit: list[float] = []
    accepted: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    barrier = threading.Barrier(len(sessions))

    def annotator(session_key: str) -> None:
        client = Client(port, session_key)
        my_fetch, my_submit, my_ok = [], [], []
        barrier.wait()
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status, page = client.request("GET", f"/annotate/{study_id}/")
                t1 = time.perf_counter()
                my_fetch.append(t1 - t0)
                match = ASSIGNMENT_RE.search(page)
                if status != 200 or not match:
                    break  # nothing left for this annotator
                token = CSRF_RE.search(page).group(1).decode()  # type: ignore[union-attr]
                form = urllib.parse.urlencode(
                    {
                        "csrfmiddlewaretoken": token,
                        "assignment": match.group(1).decode(),
                        "choice": "left",
                        "time_ms": 900,
                    }
                ).encode()
                t2 = time.perf_counter()
                status, _ = client.request("POST", f"/annotate/{study_id}/submit/", form)
                my_submit.append(time.perf_counter() - t2)
                if status != 302:
                    errors.append(f"submit answered {status}")
                    break
                my_ok.append(int(match.group(1)))
        except Exception as exc:  # reported in the table
            errors.append(repr(exc))
        with lock:
            fetch.extend(my_fetch)
            submit.extend(my_submit)
            accepted.extend(my_ok)

    threads = [threading.Thread(target=annotator, args=(s,)) for s in sessions]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"fetch": fetch, "submit": submit, "accepted": accepted, "errors": errors, "elapsed": elapsed}


def start_servers(workers: int, env: dict[str, str]) -> tuple[list[subprocess.Popen[bytes]], int, socket.socket]:
    """`workers` daphne processes accepting on one shared listening socket (pre-fork style)."""
    log = SERVER_LOG.open("wb")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "daphne", "--fd", str(fd), "-v", "0", "arbiter.asgi:application"],
            cwd=ROOT,
            env=env,
            pass_fds=(fd,),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(workers)
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.3)
    return procs, port, sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concurrency level")
    parser.add_argument("--workers", type=int, default=2, help="daphne processes sharing the listening socket")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    admin_url, bench_url = _database_urls()
    _fresh_database(admin_url)
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/2"),
        "DJANGO_SETTINGS_MODULE": "arbiter.settings",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)
    sys.path.insert(0, str(Path(env["PYTHONPATH"].split(os.pathsep)[-1])))
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.db.models import Count, F
    from django.utils import timezone

    from arbiter.accounts.models import Role, User
    from evaluation import export, services
    from evaluation.models import Assignment, ExportJob, Item, Judgment

    researcher = User.objects.create_user("bench-researcher", password="x", role=Role.RESEARCHER)
    annotators = [
        User.objects.create_user(f"bench-a{i}", password="x", role=Role.ANNOTATOR) for i in range(sum(levels) + 3)
    ]

    def session_for(user: User) -> str:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        return str(store.session_key)

    study = services.create_study(owner=researcher, name="bench", kind="pairwise", overlap=2, annotators=annotators)
    data = _items_jsonl(args.items)
    t0 = time.perf_counter()
    report = services.import_items(study=study, data=data)
    import_s = time.perf_counter() - t0
    assert report.created == args.items

    procs, port, sock = start_servers(args.workers, env)
    results = []
    try:
        pool = list(annotators)
        warm = run_level(port, study.pk, [session_for(pool.pop())], 2.0)  # warm caches and connections
        del warm
        for level in levels:
            people = [pool.pop() for _ in range(level)]
            results.append((level, run_level(port, study.pk, [session_for(p) for p in people], args.seconds)))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
        sock.close()

    # Integrity after the storm.
    over = Item.objects.filter(study=study, judgment_count__gt=F("overlap")).count()
    dup = (
        Judgment.objects.filter(study=study)
        .values("item_id", "annotator_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    accepted = {a for _, r in results for a in r["accepted"]}  # type: ignore[attr-defined]
    stored = set(
        Judgment.objects.filter(study=study, assignment_id__in=accepted).values_list("assignment_id", flat=True)
    )
    lost = len(accepted - stored)
    measured_judgments = Judgment.objects.filter(study=study).count()

    # Top up to a fully judged study (items × overlap) so the export covers all 20,000.
    filler = [pool.pop(), pool.pop()]
    now = timezone.now()
    have = {}
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

    pool = settings.DATABASES["default"]["OPTIONS"].get("pool", {}).get("max_size", "no")
    print(f"\nAnnotator loop over HTTP: daphne x{args.workers} (shared socket), PostgreSQL (pool of {pool}/process),")
    print(f"{args.items:,} pairwise items (2 x ~300-word answers), overlap 2, no think time,")
    print(f"{args.seconds:.0f} s per level, {os.cpu_count()} CPUs\n")
    cols = ["annotators", "judgments", "judg/s", "fetch p50", "p95", "p99", "submit p50", "p95", "p99", "errors"]
    print(" | ".join(f"{c:>10}" for c in cols))
    print("-" * 13 * len(cols))
    for level, r in results:
        n = len(r["accepted"])  # type: ignore[arg-type]
        cells = [str(level), str(n), f"{n / r['elapsed']:.1f}"]  # type: ignore[operator]
        for kind in ("fetch", "submit"):
            cells += [f"{_pct(r[kind], q) * 1000:.1f} ms" for q in (50, 95, 99)]  # type: ignore[arg-type]
        cells.append(str(len(r["errors"])))  # type: ignore[arg-type]
        print(" | ".join(f"{c:>10}" for c in cells))
    print(f"\nintegrity after the runs: {measured_judgments} judgments; over-assigned items {over};")
    print(f"duplicated (item, annotator) {dup}; accepted submits not stored {lost}")
    rate = args.items / import_s
    print(f"import of {args.items:,} items (parse + validate + insert): {import_s:.2f} s ({rate:,.0f} items/s)")
    for fmt, seconds in exports.items():
        print(f"export {fmt} of {total_judgments:,} judgments: {seconds:.2f} s")
    errors = [e for _, r in results for e in r["errors"]]  # type: ignore[attr-defined]
    for e in errors[:3]:
        print("error:", e)
    if errors:
        print(f"server log: {SERVER_LOG}")


if __name__ == "__main__":
    main()
