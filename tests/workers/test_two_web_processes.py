"""Issue 11.5: two web processes behind one address. The browser's websocket lands on one uvicorn process, the run
reports (or the annotator submits) to another; the live update crosses through channels_redis."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.test import Client
from websockets.asyncio.client import connect

from arbiter.accounts.models import User
from arbiter.server import web_server_command
from tests.conftest import ROOT, free_port, platform_env, wait_for_port
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def two_web_processes(tmp_path: Path) -> Iterator[list[str]]:
    procs, urls = [], []
    for name in ("a", "b"):
        port = free_port()
        log = (tmp_path / f"web-{name}.log").open("wb")
        proc = subprocess.Popen(
            web_server_command(host="127.0.0.1", port=port),
            cwd=ROOT,
            env=platform_env(ARBITER_PUBLIC_URL=f"http://127.0.0.1:{port}"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        wait_for_port(port, proc)
        urls.append(f"127.0.0.1:{port}")
    try:
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)


async def _first_message_naming(url: str, cookie: str, origin: str, needle: str, after: Any) -> dict[str, Any]:
    async with connect(url, additional_headers={"Cookie": cookie, "Origin": origin}) as socket:
        await asyncio.sleep(0.5)  # joined the run's group
        await asyncio.get_running_loop().run_in_executor(None, after)
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))
            if needle in json.dumps(message):
                return dict(message)


def test_a_run_reporting_to_one_web_process_streams_to_a_socket_on_the_other(
    two_web_processes: list[str], researcher: User
) -> None:
    socket_host, ingest_host = two_web_processes
    run, token = runs.create_external_run(owner=researcher, name="two-webs", config={})
    browser = Client()
    browser.force_login(researcher)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"

    def report() -> None:
        answer = requests.post(
            f"http://{ingest_host}/api/runs/{run.id}/metrics/",
            json={"points": [{"key": "cross_process_loss", "step": 1, "value": 0.5}]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    message = asyncio.run(
        _first_message_naming(
            f"ws://{socket_host}/ws/runs/{run.id}/", cookie, f"http://{socket_host}", "cross_process_loss", report
        )
    )
    assert "cross_process_loss" in json.dumps(message)


async def _progress_after(url: str, cookie: str, origin: str, after: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    async with connect(url, additional_headers={"Cookie": cookie, "Origin": origin}) as socket:
        snapshot = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))  # sent on connect
        await asyncio.get_running_loop().run_in_executor(None, after)
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))
            if message.get("judgments", 0) > snapshot.get("judgments", 0):
                return snapshot, message


def test_study_progress_crosses_web_processes(
    two_web_processes: list[str], researcher: User, annotator: User, make_study: Any
) -> None:
    socket_host, form_host = two_web_processes
    study = make_study(kind="pairwise", n_items=2, annotators=[annotator])
    watcher, person = Client(), Client()
    watcher.force_login(researcher)
    person.force_login(annotator)

    def judge_on_the_other_process() -> None:
        http = requests.Session()
        http.cookies.set("sessionid", person.cookies["sessionid"].value)
        form = http.get(f"http://{form_host}/annotate/{study.pk}/", timeout=30)
        assert form.status_code == 200, form.status_code
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assignment = re.search(r'name="assignment" value="(\d+)"', form.text)
        assert csrf and assignment, form.text[:2000]
        answer = http.post(
            f"http://{form_host}/annotate/{study.pk}/submit/",
            data={"csrfmiddlewaretoken": csrf.group(1), "assignment": assignment.group(1), "choice": "left"},
            headers={"Referer": f"http://{form_host}/annotate/{study.pk}/", "Origin": f"http://{form_host}"},
            timeout=30,
        )
        assert answer.status_code in (200, 302), answer.status_code

    snapshot, update = asyncio.run(
        _progress_after(
            f"ws://{socket_host}/ws/studies/{study.pk}/",
            f"sessionid={watcher.cookies['sessionid'].value}",
            f"http://{socket_host}",
            judge_on_the_other_process,
        )
    )
    assert (snapshot["judgments"], update["judgments"]) == (0, 1)
