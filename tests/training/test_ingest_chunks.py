"""Chunked metric storage: the columnar body, merges of overlapping and out-of-order batches, and SQLite."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.test import Client

from tests.conftest import ROOT
from training import selectors
from training.downsample import minmax_points
from training.models import CHUNK_STEPS, MetricChunk, MetricSummary, Run
from training.payloads import PayloadError, parse_metrics

pytestmark = pytest.mark.django_db(transaction=True)


def post(run: Run, token: str, body: Any) -> Any:
    return Client().post(
        f"/api/runs/{run.id}/metrics/",
        data=gzip.compress(json.dumps(body).encode()),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_CONTENT_ENCODING="gzip",
    )


def value(step: int) -> float:
    return float((step * 7919) % 1000) / 7


def series(key: str, steps: list[int], *, offset: float = 0.0) -> dict[str, Any]:
    return {
        "key": key,
        "steps": steps,
        "values": [value(s) + offset for s in steps],
        "times": [1.7e9 + s for s in steps],
    }


def test_columnar_batch_is_stored_and_a_resend_writes_nothing(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    body = {"series": [series("loss", list(range(1000))), series("acc", list(range(0, 1000, 10)))]}
    first, again = post(run, token, body), post(run, token, body)
    assert (first.json()["written"], again.json()["written"]) == (1100, 0)
    assert selectors.stored_points(run_id=run.id) == 1100
    key_id = MetricSummary.objects.get(run=run, key__name="loss").key_id
    assert selectors.series_points(run_id=run.id, key_id=key_id, lo=318, hi=322) == [
        (s, value(s), 1.7e9 + s) for s in range(318, 323)
    ]
    # 1,000 consecutive steps fill ceil(1000 / CHUNK_STEPS) rows, not 1,000.
    assert MetricChunk.objects.filter(run=run, key_id=key_id).count() == -(-1000 // CHUNK_STEPS)


def test_out_of_order_and_overlapping_batches_merge_and_first_value_wins(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    odd, even = list(range(1, 700, 2)), list(range(0, 700, 2))
    assert post(run, token, {"series": [series("m", odd)]}).json()["written"] == 350
    # Into the middle of existing chunks, plus a re-sent half with different values (ignored).
    resent = series("m", odd[:100], offset=1000.0)
    assert post(run, token, {"series": [series("m", even[::-1]), resent]}).json()["written"] == 350
    key_id = MetricSummary.objects.get(run=run, key__name="m").key_id
    stored = selectors.series_points(run_id=run.id, key_id=key_id)
    assert stored == [(s, value(s), 1.7e9 + s) for s in range(700)]
    summary = MetricSummary.objects.get(run=run, key_id=key_id)
    assert (summary.n, summary.last_step, summary.last_value) == (700, 699, value(699))
    assert (summary.min_value, summary.max_value) == (min(v for _, v, _ in stored), max(v for _, v, _ in stored))


def test_repeated_step_inside_one_batch_keeps_the_first(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    body = {"series": [{"key": "d", "steps": [5, 6, 5], "values": [1.0, 2.0, 3.0], "times": [1.0, 2.0, 3.0]}]}
    assert post(run, token, body).json()["written"] == 2
    key_id = MetricSummary.objects.get(run=run, key__name="d").key_id
    assert selectors.series_points(run_id=run.id, key_id=key_id) == [(5, 1.0, 1.0), (6, 2.0, 2.0)]


def test_rollups_after_scattered_batches_equal_downsampling_the_raw_points(external_run: tuple[Run, str]) -> None:
    run, token = external_run
    steps = list(range(40_960))
    # Three overlapping, unordered slices: every point arrives at least once, some twice.
    for part in (steps[20_000:], steps[:25_000][::-1], steps[10_000:30_000]):
        assert post(run, token, {"series": [series("r", part)]}).status_code == 200
    assert MetricSummary.objects.get(run=run, key__name="r").n == 40_960
    got = selectors.metric_series(run_id=run.id, key="r", buckets=40)
    raw = [(s, value(s), 1.7e9 + s) for s in steps]
    assert got["downsampled"]
    assert [tuple(p) for p in got["points"]] == minmax_points(raw, buckets=40, lo=0, hi=40_960)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"series": [series("a", [1, 2]), {"key": "b", "steps": [1, 2], "values": [1.0, "x"]}]}, "series[1].values[1]"),
        ({"series": [{"key": "b", "steps": [0, -1], "values": [1.0, 2.0]}]}, "series[0].steps[1]"),
        ({"series": [{"key": "b", "steps": [0, 1], "values": [1.0, True]}]}, "series[0].values[1]"),
        ({"series": [{"key": "b", "steps": [0, 1], "values": [1.0], "times": [1.0, 2.0]}]}, "series[0].values"),
        ({"series": [{"key": "b", "steps": [0], "values": [1.0], "times": [-5]}]}, "series[0].times[0]"),
        ({"series": [{"key": "bad\nkey", "steps": [0], "values": [1.0]}]}, "series[0].key"),
        ({"series": [], "points": []}, "body"),
    ],
)
def test_bad_columnar_batch_names_the_field_and_writes_nothing(
    external_run: tuple[Run, str], body: dict[str, Any], field: str
) -> None:
    run, token = external_run
    answer = post(run, token, body)
    assert (answer.status_code, answer.json()["field"]) == (400, field)
    assert selectors.stored_points(run_id=run.id) == 0
    assert not MetricSummary.objects.filter(run=run).exists()


def test_columnar_times_default_to_receipt_and_ints_become_floats() -> None:
    batch = parse_metrics({"series": [{"key": "k", "steps": [3, 4], "values": [1, 2.5]}]}, now=9.0)
    assert (batch.keys, batch.steps, batch.values, batch.times) == (["k", "k"], [3, 4], [1.0, 2.5], [9.0, 9.0])
    assert all(type(v) is float for v in batch.values)
    with pytest.raises(PayloadError):
        parse_metrics({"series": [{"key": "k", "steps": [1.5], "values": [1]}]}, now=0.0)
    # orjson refuses such a number in a body; a caller passing one in Python still gets a named field.
    with pytest.raises(PayloadError) as huge:
        parse_metrics({"series": [{"key": "k", "steps": [1], "values": [10**400]}]}, now=0.0)
    assert huge.value.field == "series[0].values[0]"


EMBEDDED_SCRIPT = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from arbiter.accounts.models import Role, User
from training import selectors
from training.payloads import MetricBatch
from training.models import MetricSummary
from training.services import ingest, runs
owner = User.objects.create_user(username="u", password="p", role=Role.RESEARCHER)
run, _ = runs.create_external_run(owner=owner, name="x", config={})
steps = list(range(2000))
b = MetricBatch(["loss"] * 2000, steps, [float(s % 97) for s in steps], [float(s) for s in steps])
first = ingest.record_metrics(run=run, batch=b).written
again = ingest.record_metrics(run=run, batch=b).written
late = MetricBatch(["loss"] * 2, [2000, 100], [5.0, -1.0], [1.0, 1.0])
third = ingest.record_metrics(run=run, batch=late).written
s = MetricSummary.objects.get(run=run)
whole = selectors.metric_series(run_id=run.id, key="loss", buckets=100)
zoom = selectors.metric_series(run_id=run.id, key="loss", start=10, end=19)
print(first, again, third, s.n, s.last_step, s.last_value, whole["total"], whole["downsampled"],
      [p[0] for p in zoom["points"]] == list(range(10, 20)))
"""


def test_embedded_mode_on_sqlite_stores_merges_and_reads_chunks(tmp_path: Any) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "REDIS_URL": "",
        "DJANGO_SETTINGS_MODULE": "arbiter.settings",
    }
    out = subprocess.run(
        [sys.executable, "-c", EMBEDDED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2000", "0", "1", "2001", "2000", "5.0", "2001", "True", "True"]


def test_client_blocks_body_round_trips_through_the_parser_bit_for_bit() -> None:
    from arbiter_client._columns import MetricBuffer, blocks_body

    buffer = MetricBuffer()
    tricky = (0.1, 1e-310, -0.0, 2.0**60 + 1, 5e-324, 1.7976931348623157e308)  # subnormals, -0, huge
    buffer.add_row(("b", "a"), 1, 10.0, (0.5, tricky[0]))
    buffer.add_row(("b", "a"), 2, 11.0, (tricky[1], tricky[2]))
    buffer.add_row(("c",), 7, 12.5, (tricky[3],))
    buffer.add_row(("b", "a"), 3, 13.0, (tricky[4], tricky[5]))
    body = json.loads(json.dumps(blocks_body(buffer.take())))
    assert [b["keys"] for b in body["blocks"]] == [["b", "a"], ["c"]]  # one block per key set, rows kept together
    cols = parse_metrics(body, now=0.0)
    got = sorted(
        (cols.names[k], s, v.hex(), t)
        for k, s, v, t in zip(
            cols.keys.tolist(), cols.steps.tolist(), cols.values.tolist(), cols.times.tolist(), strict=True
        )
    )
    sent = [
        ("b", 1, 0.5, 10.0), ("a", 1, tricky[0], 10.0), ("b", 2, tricky[1], 11.0), ("a", 2, tricky[2], 11.0),
        ("c", 7, tricky[3], 12.5), ("b", 3, tricky[4], 13.0), ("a", 3, tricky[5], 13.0),
    ]  # fmt: skip
    assert got == sorted((k, s, v.hex(), t) for k, s, v, t in sent)  # .hex(): bit for bit, -0.0 included
