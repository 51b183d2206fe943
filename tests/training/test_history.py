"""A run's full history out in one call (JSON, CSV, Parquet) and back into rows with the SDK (issue 8 item 7)."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from django.test import Client

import arbiter_client
from arbiter.accounts.models import User
from training import selectors
from training.models import Run
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)

TRICKY = [0.1, 1e-310, -0.0, 2.0**60 + 1, 5e-324, 1.7976931348623157e308, -3.25, 1 / 3]


def _logged_run(url: str, owner: User) -> tuple[Run, str, dict[str, list[tuple[int, float, float]]]]:
    """A run with three series: `loss` every step, `acc` every 10th, `lr` from arrays; returns what was sent."""
    record, token = runs.create_external_run(owner=owner, name="history", config={})
    _, key = runs.issue_api_token(user=owner, name="reader")
    run = arbiter_client.Run(url=url, run_id=record.id, token=token, owns_status=True, system_interval=0)
    for step in range(300):
        metrics = {"loss": TRICKY[step % len(TRICKY)]}
        if step % 10 == 0:
            metrics["acc"] = step / 300
        run.log(metrics, step=step)
    steps = np.arange(1000, 1500)
    lr = np.linspace(1e-3, 1e-5, len(steps))
    times = 1.7e9 + steps * 0.5
    run.log_many({"lr": lr}, steps=steps, times=times)
    assert run.finish(timeout=60)
    sent = json.loads(
        Client().get(f"/api/runs/{record.id}/history/", HTTP_AUTHORIZATION=f"Bearer {key}").content
    )  # (only to learn the server-side times of run.log rows; values are checked against what was sent)
    by_key = {s["key"]: s for s in sent["series"]}
    expected = {
        "loss": [(s, TRICKY[s % len(TRICKY)], by_key["loss"]["times"][s]) for s in range(300)],
        "acc": [(s, s / 300, by_key["acc"]["times"][s // 10]) for s in range(0, 300, 10)],
        "lr": [(int(s), float(v), float(t)) for s, v, t in zip(steps, lr, times, strict=True)],
    }
    return record, key, expected


def _bits(x: float) -> str:
    return float(x).hex()


def test_history_comes_back_bit_for_bit_in_all_three_formats(asgi_server: Any, researcher: User, tmp_path: Any) -> None:
    record, key, expected = _logged_run(asgi_server.url, researcher)
    api = arbiter_client.Api(asgi_server.url, key)
    columns = {s["key"]: s for s in api.run(record.id).history_columns()}
    assert sorted(columns) == ["acc", "loss", "lr"]
    for name, points in expected.items():
        got = columns[name]
        assert got["steps"] == [p[0] for p in points]
        assert [_bits(v) for v in got["values"]] == [_bits(p[1]) for p in points]
    assert columns["lr"]["times"] == [p[2] for p in expected["lr"]]  # the times log_many was given
    for fmt in ("csv", "parquet"):
        path = api.run(record.id).download_history(tmp_path / f"history.{fmt}", format=fmt)
        table = pd.read_csv(path, dtype={"key": str}) if fmt == "csv" else pq.read_table(path).to_pandas()
        assert list(table.columns) == ["key", "step", "value", "time"]
        for name, points in expected.items():
            rows = table[table["key"] == name]
            assert rows["step"].tolist() == [p[0] for p in points], fmt
            assert [_bits(v) for v in rows["value"]] == [_bits(p[1]) for p in points], fmt
            assert [_bits(t) for t in rows["time"]] == [_bits(p[2]) for p in points], fmt


def test_sdk_history_returns_rows_and_a_dataframe(asgi_server: Any, researcher: User) -> None:
    record, key, expected = _logged_run(asgi_server.url, researcher)
    ref = arbiter_client.Api(asgi_server.url, key).run(record.id)
    frame = ref.history(["loss", "acc"])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["step", "time", "loss", "acc"]
    assert frame["step"].tolist() == list(range(300))
    assert [_bits(v) for v in frame["loss"]] == [_bits(p[1]) for p in expected["loss"]]
    assert frame["acc"].notna().sum() == 30 and math.isnan(frame["acc"][1]) and frame["acc"][10] == 10 / 300
    rows = ref.history(["loss", "acc"], pandas=False, start=5, end=10)
    assert [r["step"] for r in rows] == [5, 6, 7, 8, 9, 10]
    assert rows[0] == {"step": 5, "time": expected["loss"][5][2], "loss": expected["loss"][5][1], "acc": None}
    assert rows[5]["acc"] == 10 / 300
    assert ref.history(["never_logged"], pandas=False) == []
    assert list(ref.history(["never_logged", "acc"]).columns) == ["step", "time", "never_logged", "acc"]


def test_run_history_from_the_run_handle_reads_what_it_logged(asgi_server: Any, researcher: User) -> None:
    _, key = runs.issue_api_token(user=researcher, name="script")
    run = arbiter_client.init(name="handle", url=asgi_server.url, api_key=key, system_interval=0)
    run.log_many({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]}, steps=[0, 1, 2])
    rows = run.history()
    assert rows[["a", "b"]].to_numpy().tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    run.finish()


def test_history_of_another_researchers_run_is_404_and_a_bad_key_401(
    asgi_server: Any, researcher: User, other_researcher: User
) -> None:
    record, _, _ = _logged_run(asgi_server.url, researcher)
    _, other_key = runs.issue_api_token(user=other_researcher, name="other")
    with pytest.raises(arbiter_client.ArbiterError) as refused:
        arbiter_client.Api(asgi_server.url, other_key).run(record.id).history()
    assert refused.value.status == 404
    with pytest.raises(arbiter_client.ArbiterError) as bad:
        arbiter_client.Api(asgi_server.url, "arb_u_nope").run(record.id).history()
    assert bad.value.status == 401


def test_history_past_the_per_call_limit_is_413_naming_the_way_out(researcher: User, monkeypatch: Any) -> None:
    record, _ = runs.create_external_run(owner=researcher, name="big", config={})
    _, key = runs.issue_api_token(user=researcher, name="k")
    from training.payloads import MetricBatch
    from training.services import ingest

    ingest.record_metrics(
        run=record, batch=MetricBatch(["a"] * 50 + ["b"] * 50, [*range(50)] * 2, [1.0] * 100, [1.0] * 100)
    )
    monkeypatch.setattr(selectors, "MAX_HISTORY_POINTS", 60)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    answer = Client().get(f"/api/runs/{record.id}/history/", **auth)
    assert answer.status_code == 413 and "fewer keys or a step range" in answer.json()["error"]
    assert Client().get(f"/api/runs/{record.id}/history/?keys=a", **auth).status_code == 200
    bad = Client().get(f"/api/runs/{record.id}/history/?format=xlsx", **auth)
    assert bad.status_code == 400 and bad.json()["field"] == "format"


def test_csv_history_is_readable_by_plain_csv(asgi_server: Any, researcher: User) -> None:
    record, key, expected = _logged_run(asgi_server.url, researcher)
    import csv

    text = Client().get(f"/api/runs/{record.id}/history/?format=csv&keys=acc", HTTP_AUTHORIZATION=f"Bearer {key}")
    rows = list(csv.DictReader(io.StringIO(text.content.decode())))
    assert [(r["key"], int(r["step"]), float(r["value"])) for r in rows] == [
        ("acc", s, v) for s, v, _ in expected["acc"]
    ]


def test_csv_history_escapes_keys_a_spreadsheet_would_run(researcher: User) -> None:
    """OWASP CSV injection: a metric key may start with "@", "+" or "-"; in the CSV it reads as text."""
    from training.payloads import MetricBatch
    from training.services import ingest

    record, _ = runs.create_external_run(owner=researcher, name="formulas", config={})
    _, key = runs.issue_api_token(user=researcher, name="k")
    keys = ["@SUM(A1)", "+1+1", "-2+3", "loss"]
    ingest.record_metrics(run=record, batch=MetricBatch(keys, [0, 0, 0, 0], [1.0] * 4, [1.0] * 4))
    import csv

    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    text = Client().get(f"/api/runs/{record.id}/history/?format=csv", **auth).content.decode()
    assert sorted(r["key"] for r in csv.DictReader(io.StringIO(text))) == ["'+1+1", "'-2+3", "'@SUM(A1)", "loss"]
    parquet = Client().get(f"/api/runs/{record.id}/history/?format=parquet", **auth).content
    assert sorted(pq.read_table(io.BytesIO(parquet)).column("key").to_pylist()) == sorted(keys)
