"""The Python client against the real web server: delivery, retry while the server is away, import hygiene."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from django.conf import settings

import arbiter_client
from arbiter.accounts.models import User
from tests.conftest import ROOT, free_port
from tests.training.conftest import wait_for
from training.models import LogLine, MetricSummary, Run
from training.selectors import stored_points
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)


class TcpProxy:
    """Forwards a local port to the web server once started: "the server comes back"."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.sock: socket.socket | None = None

    def start(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.sock is not None:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def test_init_log_finish_through_the_real_server(asgi_server: Any, researcher: User) -> None:
    _, key = runs.issue_api_token(user=researcher, name="script")
    run = arbiter_client.init(
        name="sdk", config={"lr": 3e-4}, tags=["sdk"], url=asgi_server.url, api_key=key, system_interval=0
    )
    for step in range(50):
        run.log({"loss": 1 / (step + 1), "reward": step * 0.1}, step=step)
    run.log_text("hello from the script")
    run.log_checkpoint(step=49, path=f"{settings.ARTIFACT_ROOT}/runs/{run.id}/ckpt-49")  # inside its location
    assert run.finish(exit_code=0)
    record = Run.objects.get(id=run.id)
    assert record.status == "succeeded" and record.exit_code == 0
    assert stored_points(run_id=record.id) == 100
    assert LogLine.objects.filter(run=record, text="hello from the script").exists()
    assert list(record.checkpoints.values_list("step", flat=True)) == [49]
    assert list(record.tags.values_list("name", flat=True)) == ["sdk"]


def test_finish_delivers_every_point_before_the_run_ends(
    asgi_server: Any, researcher: User, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run's token stops working when the run ends (issue 12 item 3): the SDK must deliver every
    batch, sent in parallel, and every system sample before it reports the end, and nothing after it."""
    _, key = runs.issue_api_token(user=researcher, name="script")
    run = arbiter_client.init(name="flush", url=asgi_server.url, api_key=key, system_interval=0.02, max_batch=500)
    for step in range(4000):
        run.log({"loss": 1 / (step + 1), "reward": float(step)}, step=step)
    assert run.finish(exit_code=0)
    record = Run.objects.get(id=run.id)
    assert record.status == "succeeded"
    counts = dict(MetricSummary.objects.filter(run=record).values_list("key__name", "n"))
    assert (counts["loss"], counts["reward"]) == (4000, 4000)
    assert "refused" not in capsys.readouterr().err


def test_client_retries_while_the_server_is_down_then_delivers(asgi_server: Any, researcher: User) -> None:
    run_record, token = runs.create_external_run(owner=researcher, name="outage", config={})
    proxy = TcpProxy(free_port(), asgi_server.port)
    run = arbiter_client.Run(
        url=f"http://127.0.0.1:{proxy.port}",
        run_id=run_record.id,
        token=token,
        owns_status=True,
        flush_interval=0.1,
        system_interval=0,
    )
    for step in range(200):
        run.log({"loss": float(step)}, step=step)
    wait_for(lambda: run.stats["failed_attempts"] >= 2, timeout=20, what="failed attempts while the server is down")
    assert stored_points(run_id=run_record.id) == 0
    proxy.start()
    try:
        assert run.finish(exit_code=0, timeout=60)
    finally:
        proxy.stop()
    assert stored_points(run_id=run_record.id) == 200
    assert Run.objects.get(id=run_record.id).status == "succeeded"


def test_refused_token_disables_reporting_instead_of_retrying_forever(asgi_server: Any, researcher: User) -> None:
    run_record, _ = runs.create_external_run(owner=researcher, name="bad", config={})
    run = arbiter_client.Run(
        url=asgi_server.url,
        run_id=run_record.id,
        token="arb_r_wrong",
        owns_status=True,
        flush_interval=0.1,
        system_interval=0,
    )
    run.log({"loss": 1.0}, step=0)
    started = time.monotonic()
    run.finish(exit_code=0, timeout=30)
    assert time.monotonic() - started < 20
    assert stored_points(run_id=run_record.id) == 0


def test_importing_the_client_imports_neither_django_nor_the_engine() -> None:
    code = (
        "import sys, arbiter_client; bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'django', 'torch', 'training', 'arbiter'}]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unfinished_run_is_flushed_at_interpreter_exit(asgi_server: Any, researcher: User) -> None:
    run_record, token = runs.create_external_run(owner=researcher, name="atexit", config={})
    code = (
        f"import arbiter_client\nrun = arbiter_client.Run(url={asgi_server.url!r}, run_id={run_record.id}, "
        f"token={token!r}, owns_status=True, flush_interval=30, system_interval=0)\n"
        "for s in range(300): run.log({'x': s}, step=s)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    assert stored_points(run_id=run_record.id) == 300
    assert Run.objects.get(id=run_record.id).status == "succeeded"


def test_batches_sent_in_parallel_all_arrive_once(asgi_server: Any, researcher: User) -> None:
    run_record, token = runs.create_external_run(owner=researcher, name="many", config={})
    run = arbiter_client.Run(
        url=asgi_server.url, run_id=run_record.id, token=token, owns_status=False, max_batch=2000, system_interval=0
    )
    for step in range(5000):
        run.log({"a": step, "b": -step, "c": 0.5}, step=step)
    assert run.finish(timeout=120)
    assert run.stats["delivered_points"] == 15_000
    assert stored_points(run_id=run_record.id) == 15_000


# --- what happens to each call: delivered, given up alone, or waiting (issue 12 item 8) -----------------


@pytest.fixture
def fault_proxy(asgi_server: Any) -> Any:
    from tests.http_faults import FaultProxy

    proxy = FaultProxy(asgi_server.port)
    yield proxy
    proxy.close()


def _external(researcher: User, url: str, **options: Any) -> tuple[Run, arbiter_client.Run]:
    record, token = runs.create_external_run(owner=researcher, name="faults", config={})
    options.setdefault("flush_interval", 0.01)
    options.setdefault("system_interval", 0)
    return record, arbiter_client.Run(url=url, run_id=record.id, token=token, owns_status=True, **options)


def test_a_refused_call_is_given_up_alone_and_the_rest_arrives(asgi_server: Any, researcher: User, capfd: Any) -> None:
    record, run = _external(researcher, asgi_server.url)
    run.log_checkpoint(step=5, path="relative/not-allowed")  # 400 from the server: path must be absolute
    for step in range(100):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        run.log_text(f"line {step}")
    assert run.finish(timeout=60) is False  # not everything arrived: say so
    assert stored_points(run_id=record.id) == 100
    assert LogLine.objects.filter(run=record).count() == 100
    assert Run.objects.get(id=record.id).status == "succeeded"
    report = run.report
    assert (report.delivered_points, report.failed_points, report.failed_calls) == (100, 0, 1)
    assert "checkpoint at step 5" in report.failures[0] and "HTTP 400" in report.failures[0]
    summary = run.summary()
    assert "100 of 100 points and 100 of 100 log lines delivered" in summary
    assert "given up: 0 points, 0 lines, 1 calls" in summary
    assert "path" in capfd.readouterr().err


def test_repeated_server_errors_give_up_that_call_and_keep_delivering(
    fault_proxy: Any, researcher: User, capfd: Any
) -> None:
    fault_proxy.fail(r"/checkpoints/$", 500, "boom")
    record, run = _external(researcher, fault_proxy.url)
    run.log_checkpoint(step=1, path="/data/ckpt-1")  # queued first: it must not hold the points back
    for step in range(100):
        run.log({"loss": float(step)}, step=step)
    wait_for(lambda: stored_points(run_id=record.id) == 100, timeout=10, what="points behind the failing call")
    assert run.finish(timeout=60) is False
    assert fault_proxy.faults[f"/api/runs/{record.id}/checkpoints/"] == run._sender.max_server_errors
    assert run.report.failed_calls == 1 and run.report.delivered_points == 100
    assert "HTTP 500: boom (after 4 attempts)" in run.report.failures[0]
    assert Run.objects.get(id=record.id).status == "succeeded"  # the final status still went, last
    err = capfd.readouterr().err
    assert "server error on checkpoint at step 1" in err and "unreachable" not in err


def test_busy_answers_are_retried_until_the_server_recovers(fault_proxy: Any, researcher: User) -> None:
    fault_proxy.fail(r"/metrics/$", 503, "database busy")
    record, run = _external(researcher, fault_proxy.url)
    for step in range(50):
        run.log({"loss": float(step)}, step=step)
    wait_for(lambda: fault_proxy.faults[f"/api/runs/{record.id}/metrics/"] >= 2, timeout=10, what="busy answers")
    fault_proxy.heal()
    assert run.finish(timeout=60)
    assert stored_points(run_id=record.id) == 50 and run.report.failed_points == 0


def test_finish_says_what_was_still_waiting_when_the_server_never_came(researcher: User, capfd: Any) -> None:
    _, run = _external(researcher, f"http://127.0.0.1:{free_port()}")
    for step in range(200):
        run.log({"loss": float(step)}, step=step)
    run.log_text("hello")
    assert run.finish(timeout=2) is False
    assert run.stats["pending"] > 0
    summary = run.summary()
    assert "0 of 200 points and 0 of 1 log lines delivered" in summary
    assert "still waiting when time ran out: 200 points, 1 lines, 1 calls" in summary  # the final status
    err = capfd.readouterr().err
    assert "unreachable" in err and "0 reports could not be delivered" not in err


def test_bad_metric_names_are_skipped_without_losing_the_batch(asgi_server: Any, researcher: User, capfd: Any) -> None:
    record, run = _external(researcher, asgi_server.url)
    for step in range(20):
        run.log({"loss": 1.0, "acc (top-1)": 0.5, "nan_metric": float("nan")}, step=step)
    assert run.finish(timeout=60)
    assert stored_points(run_id=record.id) == 20
    err = capfd.readouterr().err
    assert err.count("'acc (top-1)' skipped") == 1  # once per name, not per call
    assert LogLine.objects.filter(run=record, text__startswith="metric nan_metric is nan").count() == 20


def test_a_kept_alive_connection_the_server_closed_is_replaced_quietly(
    asgi_server: Any, researcher: User, capfd: Any, monkeypatch: Any
) -> None:
    import arbiter_client._http as transport

    monkeypatch.setattr(transport, "IDLE_RECONNECT_S", 3600.0)  # let the server close it first (uvicorn: 5 s)
    record, run = _external(researcher, asgi_server.url)
    run.log({"loss": 1.0}, step=0)
    assert run.flush(timeout=30)
    time.sleep(6)
    run.log({"loss": 2.0}, step=1)
    assert run.finish(timeout=30)
    assert stored_points(run_id=record.id) == 2
    assert run._sender.conn.reconnects >= 1 and run.report.attempts_failed == 0
    err = capfd.readouterr().err
    assert "Broken pipe" not in err and "unreachable" not in err and "arbiter_client" not in err


# --- heartbeat of runs created by scripts --------------------------------------------------------------


def test_script_runs_keep_a_heartbeat_while_quiet(asgi_server: Any, researcher: User) -> None:
    record, run = _external(researcher, asgi_server.url, heartbeat_interval=0.3)
    first = Run.objects.get(id=record.id).heartbeat_at
    time.sleep(2.0)  # the script logs nothing: only the heartbeat speaks
    assert Run.objects.get(id=record.id).heartbeat_at > first
    assert runs.mark_lost_runs(timeout_s=1) == []
    run.finish(timeout=30)


def test_a_script_that_dies_without_finishing_becomes_lost_and_revives_if_it_speaks(
    asgi_server: Any, researcher: User
) -> None:
    record, token = runs.create_external_run(owner=researcher, name="killed", config={})
    code = (
        "import os, arbiter_client\n"
        f"run = arbiter_client.Run(url={asgi_server.url!r}, run_id={record.id}, token={token!r}, owns_status=True,"
        " system_interval=0, heartbeat_interval=0.2)\n"
        "run.log({'loss': 1.0}, step=0); run.flush()\n"
        "os._exit(0)  # killed: no finish(), no atexit\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    assert Run.objects.get(id=record.id).status == "running"
    time.sleep(1.5)
    assert runs.mark_lost_runs(timeout_s=1) == [record.id]
    assert Run.objects.get(id=record.id).status == "lost"
    # The script was only asleep: its next report brings the run back.
    revived = arbiter_client.Run(
        url=asgi_server.url, run_id=record.id, token=token, owns_status=True, system_interval=0
    )
    revived.log({"loss": 0.5}, step=1)
    assert revived.finish(timeout=30)
    assert Run.objects.get(id=record.id).status == "succeeded"
    assert list(Run.objects.get(id=record.id).transitions.values_list("status", flat=True)) == [
        "running", "lost", "running", "succeeded",
    ]  # fmt: skip


def test_platform_runs_are_not_stamped_by_their_reports(asgi_server: Any, researcher: User, make_run: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from training.models import hash_token

    old = timezone.now() - timedelta(minutes=5)
    record = make_run(researcher, status="running", started_at=old, heartbeat_at=old, token_hash=hash_token("arb_r_p"))
    run = arbiter_client.Run(
        url=asgi_server.url, run_id=record.id, token="arb_r_p", owns_status=False, system_interval=0
    )
    run.log({"loss": 1.0}, step=0)
    assert run.finish(timeout=30)
    # Its supervisor owns the heartbeat: an engine still reporting after its worker died is lost all the same.
    assert Run.objects.get(id=record.id).heartbeat_at == old
    assert runs.mark_lost_runs(timeout_s=60) == [record.id]
