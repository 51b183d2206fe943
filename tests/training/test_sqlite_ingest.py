"""Concurrent writers never get a 500 (issue 12 item 9): on SQLite they wait for the write lock or are told to retry.

The embedded platform runs on SQLite, whose one write lock is shared by the web server's threads
and the worker. Before, a transaction that read and then wrote failed at once with "database is
locked" when another writer had committed in between, and the API answered 500. Marked `sqlite`:
`make test` runs it on SQLite too (a file in WAL mode, like the embedded database).
"""

from __future__ import annotations

import gzip
import http.client
import json
import threading
from collections import Counter
from typing import Any

import pytest

import arbiter_client
from arbiter.accounts.models import User
from training.models import LogLine, Run
from training.selectors import stored_points
from training.services import runs

pytestmark = [pytest.mark.sqlite, pytest.mark.django_db(transaction=True)]

THREADS_PER_RUN = 4
BATCHES = 15


def _post(port: int, path: str, token: str, body: Any) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
    conn.request("POST", path, body=gzip.compress(json.dumps(body).encode()), headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def test_concurrent_reports_of_two_runs_all_land_without_a_server_error(asgi_server: Any, researcher: User) -> None:
    made = [runs.create_external_run(owner=researcher, name=f"r{i}", config={}) for i in range(2)]
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def report(run: Run, token: str, worker: int) -> None:
        for b in range(BATCHES):
            first = (worker * BATCHES + b) * 50
            metrics = {"points": [{"key": f"k{worker}", "step": first + i, "value": float(i)} for i in range(50)]}
            lines = {"lines": [{"seq": first + i, "text": f"line {first + i}"} for i in range(5)]}
            for path, body in ((f"/api/runs/{run.id}/metrics/", metrics), (f"/api/runs/{run.id}/logs/", lines)):
                code = _post(asgi_server.port, path, token, body)
                with lock:
                    statuses[code] += 1
            code = _post(asgi_server.port, f"/api/runs/{run.id}/heartbeat/", token, {})
            with lock:
                statuses[code] += 1

    threads = [
        threading.Thread(target=report, args=(run, token, w)) for run, token in made for w in range(THREADS_PER_RUN)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert set(statuses) == {200}, statuses
    for run, _ in made:
        assert stored_points(run_id=run.id) == THREADS_PER_RUN * BATCHES * 50
        assert LogLine.objects.filter(run=run).count() == THREADS_PER_RUN * BATCHES * 5


def test_two_sdk_runs_at_once_deliver_everything_without_warnings(
    asgi_server: Any, researcher: User, capfd: Any
) -> None:
    _, key = runs.issue_api_token(user=researcher, name="k")
    handles = [
        arbiter_client.init(name=f"sdk{i}", url=asgi_server.url, api_key=key, system_interval=0, max_batch=500)
        for i in range(2)
    ]

    def train(run: arbiter_client.Run) -> None:
        for step in range(3000):
            run.log({"loss": 1.0 / (step + 1), "acc": step / 3000}, step=step)
            if step % 100 == 0:
                run.log_text(f"step {step}")

    threads = [threading.Thread(target=train, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(h.finish(timeout=120) for h in handles), [h.summary() for h in handles]
    for h in handles:
        assert stored_points(run_id=h.id) == 6000
        assert Run.objects.get(id=h.id).status == "succeeded"
        assert h.report.attempts_failed == 0, h.summary()
    assert "arbiter_client" not in capfd.readouterr().err


def test_a_write_that_cannot_get_the_lock_in_time_is_503_and_writes_nothing(
    external_run: tuple[Run, str], monkeypatch: Any
) -> None:
    import sqlite3

    from django.db import connection, connections
    from django.test import Client

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock (embedded mode)")
    run, token = external_run
    # The server's writers wait this long for the lock (20 s in production), then give up.
    monkeypatch.setitem(connections.settings["default"]["OPTIONS"], "timeout", 0.3)
    body = gzip.compress(json.dumps({"points": [{"key": "loss", "step": 1, "value": 1.0}]}).encode())
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}", "HTTP_CONTENT_ENCODING": "gzip"}
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process (the embedded worker) holds the write lock
    try:
        answer = Client(raise_request_exception=False).post(
            f"/api/runs/{run.id}/metrics/", data=body, content_type="application/json", **headers
        )
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert answer.status_code == 503, answer.content
    assert answer["Retry-After"] == "2" and "retry" in answer.json()["error"]
    assert stored_points(run_id=run.id) == 0
    again = Client().post(f"/api/runs/{run.id}/metrics/", data=body, content_type="application/json", **headers)
    assert again.status_code == 200 and stored_points(run_id=run.id) == 1
