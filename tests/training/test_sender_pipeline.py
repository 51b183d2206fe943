"""The SDK sender keeps `parallel` requests in flight: a slow answer holds back only its own slot.

A plain local HTTP server stands in for Arbiter (no database): what is tested is the client's
scheduling, which no real server could make deterministic.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from arbiter_client._http import Connection
from arbiter_client._sender import Sender


class HoldFirst:
    """Answers every metrics request at once, except the first, which waits for `release`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                body = json.loads(raw)
                with state.lock:
                    first = not state.bodies
                    state.bodies.append(body)
                if first:
                    state.release.wait(30)
                data = b'{"received":1,"written":1,"seq":1}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hold_first() -> Iterator[HoldFirst]:
    server = HoldFirst()
    yield server
    server.release.set()
    server.server.shutdown()


def test_a_slow_request_holds_back_only_its_own_slot(hold_first: HoldFirst) -> None:
    sender = Sender(Connection(hold_first.url, "arb_r_test"), 1, max_batch=10, parallel=2, flush_interval=0.001)
    sender.start()
    try:
        for step in range(100):  # 10 requests of 10 points
            sender.add_row(("a",), step, 1.0, (float(step),))
        deadline = time.monotonic() + 20
        while sender.report.delivered_points < 90 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The first request is still unanswered, yet the other slot delivered every later one.
        assert sender.report.delivered_points == 90
        assert sender.pending()["points"] == 10
        hold_first.release.set()
        assert sender.stop(timeout=20)
    finally:
        hold_first.release.set()
    assert sender.report.delivered_points == 100
    assert sender.report.failed_points == sender.report.dropped_points == 0
    assert len(hold_first.bodies) == 10  # each batch sent once


def test_a_barrier_waits_for_every_request_in_flight(hold_first: HoldFirst) -> None:
    sender = Sender(Connection(hold_first.url, "arb_r_test"), 1, max_batch=10, parallel=2, flush_interval=0.001)
    sender.start()
    try:
        for step in range(30):
            sender.add_row(("a",), step, 1.0, (float(step),))
        sender.add_call("/api/runs/1/status/", {"status": "succeeded"}, label="final status", barrier=True)
        time.sleep(0.5)
        # The held first request is in flight: the barrier (the run's end) must not have been sent.
        assert len(hold_first.bodies) == 3
        assert all("blocks" in body for body in hold_first.bodies)
        hold_first.release.set()
        assert sender.stop(timeout=20)
    finally:
        hold_first.release.set()
    assert hold_first.bodies[-1] == {"status": "succeeded"}
    assert sender.report.delivered_points == 30 and sender.report.delivered_calls == 1


def test_a_due_heartbeat_does_not_stall_the_free_slot(hold_first: HoldFirst) -> None:
    """A request in flight is a sign of life: no heartbeat then, so new data goes out on the free slot at once
    instead of waiting for the held request's connection."""
    sender = Sender(
        Connection(hold_first.url, "arb_r_test"),
        1,
        max_batch=10,
        parallel=2,
        flush_interval=0.001,
        heartbeat_interval=0.05,
    )
    sender.start()
    try:
        for step in range(10):
            sender.add_row(("a",), step, 1.0, (float(step),))
        time.sleep(0.3)  # the first request is held, and a beat is long overdue
        for step in range(10, 20):
            sender.add_row(("a",), step, 1.0, (float(step),))
        deadline = time.monotonic() + 5
        while sender.report.delivered_points < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sender.report.delivered_points == 10  # delivered while the first is still held
        assert all("blocks" in body for body in hold_first.bodies)  # and no beat was sent meanwhile
        hold_first.release.set()
        assert sender.stop(timeout=20)
    finally:
        hold_first.release.set()
    assert sender.report.delivered_points == 20
