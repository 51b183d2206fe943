"""Schemathesis against the whole OpenAPI document on the live server: no input makes it answer 5xx.

A property test (issue 12 item 7): for every operation in /api/openapi.json, Hypothesis generates
requests from the schema (valid ones and, in negative mode, ones that break it) and sends them to
the real uvicorn process. The requests are authenticated as the operation's security asks (a fresh
run token for ingest, a researcher's API key for reads and the studies API), and path ids point at
objects that exist (a study of the researcher's, an import and a finished export of it), so the
cases reach the real handlers instead of stopping at 401/404.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from django.conf import settings as django_settings
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from arbiter.accounts.models import Role
from evaluation.models import ExportJob, ImportJob
from tests.factories import UserFactory
from training.models import Run
from training.openapi import openapi_document
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)


class Identities:
    """The credentials and objects the generated requests use."""

    def __init__(self) -> None:
        self.researcher = UserFactory(role=Role.RESEARCHER)
        _, self.api_key = runs.issue_api_token(user=self.researcher, name="fuzz")
        self.read_run, _ = runs.create_external_run(owner=self.researcher, name="fuzz-read", config={})
        from evaluation.services import create_study

        self.study = create_study(owner=self.researcher, name="fuzz", kind="pairwise")
        self.import_job = ImportJob.objects.create(
            study=self.study, requested_by=self.researcher, filename="items.jsonl", status="done"
        )
        folder = Path(django_settings.ARTIFACT_ROOT) / "exports" / f"study-{self.study.pk}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fuzz.jsonl").write_text("{}\n")
        self.export = ExportJob.objects.create(
            study=self.study,
            requested_by=self.researcher,
            format="judgments_jsonl",
            status="done",
            path=str(folder / "fuzz.jsonl"),
            rows=1,
        )
        self.statuses: Counter[int] = Counter()

    def prepare(self, case: Any) -> dict[str, str]:
        """Fill the case's path ids and return its Authorization header."""
        security = {name for req in case.operation.definition.raw.get("security", []) for name in req}
        if "runToken" in security:
            # A fresh run per case: a status report may end a run, and an ended run refuses its token.
            run, token = runs.create_external_run(owner=self.researcher, name="fuzz", config={})
            case.path_parameters["run_id"] = run.id
            body = case.body if isinstance(case.body, dict) else {}
            if case.operation.path.endswith("/checkpoints/") and str(body.get("path", "")).startswith("/"):
                # A checkpoint must lie inside its run's location: put absolute paths there (a generated ".."
                # may still climb out: a 400), and leave the URI cases as generated.
                body["path"] = f"{django_settings.ARTIFACT_ROOT}/runs/{run.id}{body['path']}"
            return {"Authorization": f"Bearer {token}"}
        if case.method.upper() == "DELETE" and "run_id" in (case.path_parameters or {}):
            # A finished run of its own per case: a delete that is accepted removes it.
            run = Run.objects.create(owner=self.researcher, name="fuzz-delete", recipe="demo", status="succeeded")
            case.path_parameters["run_id"] = run.id
        elif "run_id" in (case.path_parameters or {}):
            case.path_parameters["run_id"] = self.read_run.id
        if "study_id" in (case.path_parameters or {}):
            case.path_parameters["study_id"] = self.study.pk
        if "import_id" in (case.path_parameters or {}):
            case.path_parameters["import_id"] = self.import_job.pk
        if "export_id" in (case.path_parameters or {}):
            case.path_parameters["export_id"] = self.export.pk
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture
def identities(transactional_db: None) -> Iterator[Identities]:
    ids = Identities()
    yield ids
    # Hypothesis ran every example of one operation with this fixture: some must have been accepted,
    # or the property held only because every request stopped at authentication or routing.
    assert any(200 <= code < 300 for code in ids.statuses), f"no request was accepted: {dict(ids.statuses)}"


# The document the server serves is built by this function (test_served_document_is_the_one_fuzzed);
# it is loaded at import because schemathesis' fixture-based loader does not work with pytest 9.
schema = schemathesis.openapi.from_dict(openapi_document(server=""))


def test_served_document_is_the_one_fuzzed(asgi_server: Any) -> None:
    served = requests.get(f"{asgi_server.url}/api/openapi.json", timeout=30).json()
    assert served["paths"] == openapi_document(server="")["paths"]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_input_makes_the_api_answer_5xx(case: Any, asgi_server: Any, identities: Identities) -> None:
    headers = identities.prepare(case)
    response = case.call_and_validate(
        base_url=asgi_server.url, headers=headers, checks=[not_a_server_error, response_schema_conformance]
    )
    identities.statuses[response.status_code] += 1
