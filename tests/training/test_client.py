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
    run.log_checkpoint(step=49, path="/data/ckpt-49")
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
