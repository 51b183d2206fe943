"""The researcher dashboard: recent runs and studies the user may see, with study progress; nobody else's."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from arbiter.accounts.models import User
from evaluation import services as study_services
from tests.evaluation.conftest import jsonl, pairwise_row
from training.models import Run, RunStatus


def test_dashboard_lists_own_runs_and_studies_only(researcher: User, other_researcher: User, client_for: Any) -> None:
    Run.objects.create(owner=researcher, name="mine-run", recipe="demo", status=RunStatus.RUNNING, started_at=now())
    Run.objects.create(owner=other_researcher, name="their-run", recipe="demo")
    mine = study_services.create_study(owner=researcher, name="mine-study", kind="pairwise", overlap=2, annotators=[])
    study_services.import_items(study=mine, data=jsonl([pairwise_row(i) for i in range(3)]))
    study_services.create_study(owner=other_researcher, name="their-study", kind="rating", overlap=1, annotators=[])

    body = client_for(researcher).get("/dashboard/").content.decode()
    assert "mine-run" in body and "mine-study" in body
    assert "their-run" not in body and "their-study" not in body
    assert "0 / 6" in body  # 3 items x overlap 2, none judged yet


def test_dashboard_query_count_does_not_grow_with_rows(researcher: User, client_for: Any) -> None:
    client = client_for(researcher)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/dashboard/").status_code == 200
        return len(queries)

    Run.objects.create(owner=researcher, name="r0", recipe="demo")
    study_services.create_study(owner=researcher, name="s0", kind="pairwise", overlap=1, annotators=[])
    count()  # warm the session and cached user, which are not what this test pins
    few = count()
    for i in range(1, 8):
        Run.objects.create(owner=researcher, name=f"r{i}", recipe="demo")
        study_services.create_study(owner=researcher, name=f"s{i}", kind="pairwise", overlap=1, annotators=[])
    assert count() == few
