"""The run page's header: step N of M with an ETA, and a failed run's last error line from its logs."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from arbiter.accounts.models import User
from training import selectors
from training.models import LogLine
from training.payloads import MetricBatch
from training.services import ingest

pytestmark = pytest.mark.django_db


def _log(run_id: int, stream: str, *lines: str) -> None:
    existing = LogLine.objects.filter(run_id=run_id, stream=stream).count()
    ingest.record_logs(run_id=run_id, batch=ingest.lines_batch(stream=stream, first_seq=existing, texts=list(lines)))


def _metrics(run: Any, key: str, steps: list[int], times: list[float]) -> None:
    ingest.record_metrics(run=run, batch=MetricBatch([key] * len(steps), steps, [1.0] * len(steps), times))


def test_running_run_shows_step_n_of_m_and_an_eta_at_its_own_pace(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, status="running", started_at=timezone.now(), config={"max_steps": 100})
    # 10 steps in 20 s (after a model load that took 500 s: not counted), then 60 steps to go at 2 s a step.
    _metrics(run, "loss", [31, 40], [1500.0, 1520.0])
    _metrics(run, "system/cpu_percent", [900], [1521.0])  # a sample number, not a training step
    progress = selectors.run_progress(run=run)
    assert progress is not None and (progress.step, progress.total) == (40, 100)
    assert progress.eta_s == pytest.approx(60 * 20 / 9)
    html = client_for(researcher).get(f"/runs/{run.id}/").content.decode()
    assert "step <b>40</b> of 100" in html and "about 2 min 13 s left" in html


def test_finished_or_unbounded_runs_show_the_step_without_an_eta(researcher: User, make_run: Any) -> None:
    done = make_run(researcher, status="cancelled", config={"max_steps": 100})
    _metrics(done, "loss", [1, 2], [0.0, 1.0])
    assert selectors.run_progress(run=done) == selectors.RunProgress(step=2, total=100, eta_s=None)
    external = make_run(researcher, status="running", started_at=timezone.now(), config={"max_steps": "lots"})
    _metrics(external, "loss", [1, 5], [0.0, 1.0])
    assert selectors.run_progress(run=external) == selectors.RunProgress(step=5, total=None, eta_s=None)
    assert selectors.run_progress(run=make_run(researcher)) is None


def test_failed_run_header_shows_the_exception_line_not_only_the_exit_code(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, status="failed", exit_code=1)
    _log(
        run.id,
        "stderr",
        "Traceback (most recent call last):",
        '  File "train.py", line 3, in <module>',
        "ValueError: dataset row 7 has no <b>completion</b>",
        "",
        "Map:   0%|          | 0/3 [00:00<?, ? examples/s]",  # a progress bar's last redraw, also on stderr
        "[arbiter] engine exited with code 1",
    )
    _log(run.id, "stdout", "step 3 loss 0.5")
    assert selectors.last_error_line(run=run) == "ValueError: dataset row 7 has no <b>completion</b>"
    html = client_for(researcher).get(f"/runs/{run.id}/").content.decode()
    assert 'id="run-error"' in html and "ValueError: dataset row 7 has no &lt;b&gt;completion&lt;/b&gt;" in html
    assert "exit code 1" in html


def test_error_line_falls_back_to_the_last_stderr_line_then_the_transition_note(
    researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, status="failed", exit_code=137)
    _log(run.id, "stderr", "Killed", "[arbiter] engine exited with code 137")
    assert selectors.last_error_line(run=run) == "Killed"
    silent = make_run(researcher, status="failed")
    silent.transitions.create(status="failed", note="could not start the engine: [Errno 2] no such file")
    assert selectors.last_error_line(run=silent) == "could not start the engine: [Errno 2] no such file"
    assert selectors.last_error_line(run=make_run(researcher, status="succeeded")) is None
