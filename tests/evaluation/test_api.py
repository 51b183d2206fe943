"""The studies API and SDK against the real web server: a file of model outputs to a finished study's results.

Every step a script takes (arbiter_client.Api) is checked against what the browser's pages do with the
same data: the upload form's per-row errors, the results page's numbers (its chart data), the export
page's file. Annotators judge through the annotator's web form, as people would.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

import arbiter_client
from arbiter.accounts.models import Role, User
from evaluation.models import ImportJob, Item, Judgment, Study
from tests.artifacts import conftest as bucket_fixtures
from tests.evaluation.conftest import jsonl, pairwise_row, rating_row, rubric_row, violation_row
from tests.factories import UserFactory
from training.services import runs

pytestmark = pytest.mark.django_db(transaction=True)

s3_server, s3_store = bucket_fixtures.s3_server, bucket_fixtures.s3_store  # a moto S3 server, a bucket store
ROW_MAKERS = {"pairwise": pairwise_row, "rubric": rubric_row, "violation": violation_row, "rating": rating_row}


def _key(user: User) -> str:
    _, key = runs.issue_api_token(user=user, name="script")
    return key


def _api(server: Any, user: User) -> arbiter_client.Api:
    return arbiter_client.Api(server.url, _key(user))


def _rows(n: int) -> list[dict[str, Any]]:
    """Pairwise outputs of three systems, so the Bradley–Terry fit has something to order."""
    systems = [("alpha", "beta"), ("beta", "gamma"), ("alpha", "gamma")]
    return [pairwise_row(i, model_a=systems[i % 3][0], model_b=systems[i % 3][1]) for i in range(n)]


def _annotate(study: Study, annotator: User, choices: list[str]) -> int:
    """Judge through the annotator's web form until the queue is empty; returns how many were submitted."""
    client = Client()
    client.force_login(annotator)
    submitted = 0
    page = client.get(reverse("annotate:next", kwargs={"study_id": study.pk}))
    while True:
        found = re.search(rb'name="assignment" value="(\d+)"', page.content)
        if found is None:
            return submitted
        data = {"assignment": found.group(1).decode(), "choice": choices[submitted % len(choices)], "strength": "2"}
        page = client.post(reverse("annotate:submit", kwargs={"study_id": study.pk}), data)
        assert page.status_code in (200, 302), page.content[:500]  # the next item's page, or the queue's end
        submitted += 1
        if page.status_code == 302:
            page = client.get(page["Location"])


def _page_chart_data(user: User, study_id: int) -> Any:
    client = Client()
    client.force_login(user)
    html = client.get(reverse("evaluation:results", kwargs={"study_id": study_id})).content.decode()
    found = re.search(r'<script id="chart-data" type="application/json">(.*?)</script>', html, re.S)
    assert found, "the results page has no chart data"
    return json.loads(found.group(1)), html


def test_a_script_goes_from_a_file_to_a_finished_studys_results(
    asgi_server: Any, researcher: User, tmp_path: Any
) -> None:
    first, second = UserFactory(role=Role.ANNOTATOR), UserFactory(role=Role.ANNOTATOR)
    api = _api(asgi_server, researcher)
    study = api.create_study(name="A vs B vs C", kind="pairwise", overlap=2, annotators=[first.username])
    assert (study.kind, study.data["overlap"], study.data["annotators"]) == ("pairwise", 2, [first.username])
    assert api.study(study.id).name == "A vs B vs C" and [s.id for s in api.studies()] == [study.id]

    # A file with bad rows: refused whole, each bad row named by line and field, as the upload form names them.
    rows = _rows(12)
    bad = [*rows[:3], {"prompt": "p", "response_a": "only one side"}, *rows[3:6], {"prompt": 3}]
    path = tmp_path / "outputs.jsonl"
    path.write_bytes(jsonl(bad))
    with pytest.raises(arbiter_client.ImportRejected) as refused:
        study.upload_items(path)
    assert refused.value.status == 422 and refused.value.valid_count == 6 and refused.value.error_count == 2
    assert [e["line"] for e in refused.value.errors] == [4, 8]
    form = Client()
    form.force_login(researcher)
    with path.open("rb") as fh:
        page = form.post(reverse("evaluation:items_upload", kwargs={"study_id": study.id}), {"file": fh})
    assert page.status_code == 422
    assert refused.value.errors == [e.as_dict() for e in page.context["errors"]]
    assert Item.objects.filter(study_id=study.id).count() == 0

    # The valid rows anyway, then the rest of the file: reports say what was made.
    partial = study.upload_items(path, import_valid_rows=True)
    assert (partial["status"], partial["created"], partial["error_count"]) == ("done", 6, 2)
    assert [e["line"] for e in partial["errors"]] == [4, 8]
    report = study.upload_items(rows[6:], filename="rest.jsonl")
    assert (report["created"], report["container"]) == (6, "jsonl")
    assert [i["payload"]["prompt"] for i in study.items(limit=5)] == [r["prompt"] for r in rows[:5]]
    assert [i["payload"]["prompt"] for i in study.items(q="Question 11?")] == ["Question 11?"]

    assert study.assign([second.username]) == sorted([first.username, second.username])
    assert study.annotators() == sorted([first.username, second.username])
    assert study.progress()["target"] == 24 and study.progress()["judgments"] == 0

    record = Study.objects.get(pk=study.id)
    assert _annotate(record, first, ["left", "left", "right"]) == 12
    assert _annotate(record, second, ["left", "tie", "right", "right"]) == 12
    done = study.wait_until_complete(timeout=30, poll=0.2)
    assert len(study.items(status="judged", limit=1000)) == 12 and study.items(status="unjudged") == []
    assert (done["judgments"], done["target"], done["percent"]) == (24, 24, 100.0)

    results = study.results()
    charts, html = _page_chart_data(researcher, study.id)
    assert results["charts"] == charts  # the page's numbers, from the same computation
    assert results["judgments"] == Judgment.objects.filter(study_id=study.id).count() == 24
    assert [r["model"] for r in results["win_rates"]] == [c["model"] for c in charts["win_rates"]]
    for row in results["win_rates"]:
        assert row["low"] <= row["rate"] <= row["high"] and row["games"] == 16
        assert f"<td>{row['model']}</td><td>{row['wins']}</td><td>{row['losses']}</td><td>{row['ties']}</td>" in html
    for row in results["ratings"]:
        assert row["elo_low"] <= row["elo"] <= row["elo_high"]
    assert {a["username"] for a in results["quality"]["annotators"]} == {first.username, second.username}


def test_another_researchers_study_is_404_a_shared_one_read_only_and_annotators_403(
    asgi_server: Any, researcher: User, other_researcher: User
) -> None:
    owner = _api(asgi_server, researcher)
    study = owner.create_study(name="mine", kind="rating", scale_labels=["bad", "ok", "good"])
    study.upload_items([rating_row(i) for i in range(3)])
    export = study.export("judgments_jsonl")
    stranger = _api(asgi_server, other_researcher)
    base = f"/api/studies/{study.id}"
    reads = [base + "/", base + "/items/", base + "/progress/", base + "/results/", base + "/annotators/"]
    reads += [base + "/exports/", f"{base}/exports/{export.id}/", f"{base}/imports/{ImportJob.objects.get().pk}/"]
    for path in reads:
        with pytest.raises(arbiter_client.ArbiterError) as hidden:
            stranger.get(path)
        assert hidden.value.status == 404, path
    for path, body in [(base + "/annotators/", {"add": []}), (base + "/exports/", {"format": "reward"})]:
        with pytest.raises(arbiter_client.ArbiterError) as hidden:
            stranger.post(path, body)
        assert hidden.value.status == 404, path
    with pytest.raises(arbiter_client.ArbiterError) as hidden:
        stranger.study(study.id).upload_items([rating_row(9)])
    assert hidden.value.status == 404
    assert [s.id for s in stranger.studies()] == []

    Study.objects.get(pk=study.id).shared_with.add(other_researcher)
    shared = stranger.study(study.id)
    assert shared.progress()["items"] == 3 and shared.results()["kind"] == "rating"
    with pytest.raises(arbiter_client.ArbiterError) as read_only:
        shared.upload_items([rating_row(9)])
    assert read_only.value.status == 403
    with pytest.raises(arbiter_client.ArbiterError) as read_only:
        shared.assign([])
    assert read_only.value.status == 403

    # Annotators get no API key; one made while its user was a researcher stops at the role check.
    demoted = UserFactory(role=Role.RESEARCHER)
    demoted_api = _api(asgi_server, demoted)
    User.objects.filter(pk=demoted.pk).update(role=Role.ANNOTATOR)
    Study.objects.get(pk=study.id).annotators.add(demoted)
    for call in (lambda: demoted_api.study(study.id), demoted_api.studies):
        with pytest.raises(arbiter_client.ArbiterError) as not_researcher:
            call()
        assert not_researcher.value.status == 403
    with pytest.raises(arbiter_client.ArbiterError) as no_key:
        arbiter_client.Api(asgi_server.url, "arb_u_wrong").study(study.id)
    assert no_key.value.status == 401


@pytest.mark.sqlite
@pytest.mark.parametrize("kind", ["pairwise", "rubric", "violation", "rating"])
def test_each_kind_is_created_with_its_settings_and_takes_its_items(researcher: User, kind: str) -> None:
    key = _key(researcher)
    settings = {"scale_labels": ["no", "meh", "yes", "great"]} if kind == "rating" else {}
    body = {"name": kind, "kind": kind, "overlap": 3, "lease_seconds": 60, "accuracy_threshold": 0.5, **settings}
    body |= {"text_format": "markdown", "instructions": "Judge *carefully*."}
    created = _post(key, "/api/studies/", body)
    assert created.status_code == 201, created.content
    data = created.json()
    study = Study.objects.get(pk=data["id"])
    assert (study.kind, study.overlap, study.lease_seconds, study.accuracy_threshold) == (kind, 3, 60, 0.5)
    assert (study.text_format, study.instructions) == ("markdown", "Judge *carefully*.")
    assert data["scale_labels"] == settings.get("scale_labels", [])
    answer = Client().post(
        f"/api/studies/{study.pk}/items/?filename=x.jsonl",
        jsonl([ROW_MAKERS[kind](i) for i in range(4)]),
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert answer.status_code == 201 and answer.json()["created"] == 4, answer.content
    assert Item.objects.filter(study=study, overlap=3).count() == 4


def _post(key: str, path: str, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Client(raise_request_exception=False).post(
        path, raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )


BAD_STUDIES = [
    ({"kind": "pairwise"}, "name"),
    ({"name": "x"}, "kind"),
    ({"name": " ", "kind": "pairwise"}, "name"),
    ({"name": "x" * 201, "kind": "pairwise"}, "name"),
    ({"name": "a\x00b", "kind": "pairwise"}, "name"),
    ({"name": "x", "kind": "ranking"}, "kind"),
    ({"name": "x", "kind": ["pairwise"]}, "kind"),
    ({"name": "x", "kind": "pairwise", "overlap": 0}, "overlap"),
    ({"name": "x", "kind": "pairwise", "overlap": 51}, "overlap"),
    ({"name": "x", "kind": "pairwise", "overlap": 2.5}, "overlap"),
    ({"name": "x", "kind": "pairwise", "overlap": True}, "overlap"),
    ({"name": "x", "kind": "pairwise", "overlap": "3"}, "overlap"),
    ({"name": "x", "kind": "pairwise", "lease_seconds": 9}, "lease_seconds"),
    ({"name": "x", "kind": "pairwise", "lease_seconds": 2**40}, "lease_seconds"),
    ({"name": "x", "kind": "pairwise", "accuracy_threshold": 1.5}, "accuracy_threshold"),
    ({"name": "x", "kind": "pairwise", "accuracy_threshold": -0.1}, "accuracy_threshold"),
    ({"name": "x", "kind": "pairwise", "text_format": "html"}, "text_format"),
    ({"name": "x", "kind": "pairwise", "instructions": 5}, "instructions"),
    ({"name": "x", "kind": "pairwise", "scale_labels": ["a", "b"]}, "scale_labels"),
    ({"name": "x", "kind": "rating", "scale_labels": ["only one"]}, "scale_labels"),
    ({"name": "x", "kind": "rating", "scale_labels": [str(i) for i in range(12)]}, "scale_labels"),
    ({"name": "x", "kind": "rating", "scale_labels": ["a", ""]}, "scale_labels[1]"),
    ({"name": "x", "kind": "rating", "scale_labels": "a,b"}, "scale_labels"),
    ({"name": "x", "kind": "pairwise", "annotators": ["nobody"]}, "annotators[0]"),
    ({"name": "x", "kind": "pairwise", "annotators": "anna"}, "annotators"),
    ({"name": "x", "kind": "pairwise", "annotators": [7]}, "annotators[0]"),
    ({"name": "x", "kind": "pairwise", "shared_with": ["nobody"]}, "shared_with[0]"),
    ({"name": "x", "kind": "pairwise", "overlapp": 2}, "overlapp"),
    ([1, 2], "body"),
    (b"{not json", "body"),
]


@pytest.mark.sqlite
@pytest.mark.parametrize(("body", "field"), BAD_STUDIES)
def test_a_bad_study_is_a_400_naming_its_field(researcher: User, body: Any, field: str) -> None:
    answer = _post(_key(researcher), "/api/studies/", body)
    assert answer.status_code == 400, answer.content
    assert answer.json()["field"] == field
    assert not Study.objects.exists()


@pytest.mark.sqlite
def test_only_annotators_are_assigned_and_researchers_shared(researcher: User, other_researcher: User) -> None:
    key = _key(researcher)
    annotator = UserFactory(role=Role.ANNOTATOR)
    as_annotator = _post(
        key, "/api/studies/", {"name": "x", "kind": "pairwise", "annotators": [other_researcher.username]}
    )
    assert as_annotator.status_code == 400 and as_annotator.json()["field"] == "annotators[0]"
    as_reader = _post(key, "/api/studies/", {"name": "x", "kind": "pairwise", "shared_with": [annotator.username]})
    assert as_reader.status_code == 400 and as_reader.json()["field"] == "shared_with[0]"
    myself = _post(key, "/api/studies/", {"name": "x", "kind": "pairwise", "shared_with": [researcher.username]})
    assert myself.status_code == 400 and myself.json()["field"] == "shared_with[0]"
    study = _post(key, "/api/studies/", {"name": "x", "kind": "pairwise", "shared_with": [other_researcher.username]})
    assert study.status_code == 201 and study.json()["shared_with"] == [other_researcher.username]
    path = f"/api/studies/{study.json()['id']}/annotators/"
    wrong = _post(key, path, {"add": [annotator.username, other_researcher.username]})
    assert wrong.status_code == 400 and wrong.json()["field"] == "add[1]"
    assert _post(key, path, {"add": [annotator.username]}).json() == {"annotators": [annotator.username]}
    assert _post(key, path, {"remove": [annotator.username]}).json() == {"annotators": []}
    assert _post(key, path, {"add": "x"}).json()["field"] == "add"


@pytest.mark.sqlite
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("offset=-1", "offset"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=1e3", "limit"),
        ("status=odd", "status"),
        ("q=" + "x" * 201, "q"),
    ],
)
def test_bad_item_page_parameters_are_400s(researcher: User, query: str, field: str) -> None:
    key = _key(researcher)
    study = _post(key, "/api/studies/", {"name": "x", "kind": "pairwise"}).json()
    answer = Client().get(f"/api/studies/{study['id']}/items/?{query}", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert answer.status_code == 400 and answer.json()["field"] == field


@pytest.mark.sqlite
def test_a_browser_session_writes_only_with_its_csrf_token(researcher: User) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(researcher)
    refused = browser.post(
        "/api/studies/", json.dumps({"name": "x", "kind": "pairwise"}), content_type="application/json"
    )
    assert refused.status_code == 403 and not Study.objects.exists()
    assert browser.get("/api/studies/").status_code == 200
    token = browser.get(reverse("evaluation:study_create")).context["csrf_token"]
    made = browser.post(
        "/api/studies/",
        json.dumps({"name": "x", "kind": "pairwise"}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=str(token),
    )
    assert made.status_code == 201


FORM_ANSWERS = {
    "rating": [{"rating": "4"}, {"rating": "2"}, {"rating": "5"}],
    "rubric": [
        {**{f"v_{p}_{i}": "satisfied" for p in range(2) for i in range(3)}, "v_1_2": "not_satisfied", "flag_1": "on"}
        | {"preference": "left"},
        {**{f"v_{p}_{i}": "not_satisfied" for p in range(2) for i in range(3)}, "v_0_0": "unclear"}
        | {"preference": "tie"},
    ],
}


def _judge_by_form(study: Study, annotator: User, answers: list[dict[str, str]]) -> None:
    client = Client()
    client.force_login(annotator)
    page = client.get(reverse("annotate:next", kwargs={"study_id": study.pk}))
    for n in range(study.items.count()):
        found = re.search(rb'name="assignment" value="(\d+)"', page.content)
        assert found, page.content[:300]
        data = {"assignment": found.group(1).decode(), **answers[n % len(answers)]}
        page = client.post(reverse("annotate:submit", kwargs={"study_id": study.pk}), data)
        # The next item's page is the submit's answer; after the last item, a redirect to the done page.
        assert page.status_code == (302 if n == study.items.count() - 1 else 200), page.content[:300]


def _api_results(user: User, study_id: int) -> dict[str, Any]:
    answer = Client().get(f"/api/studies/{study_id}/results/", HTTP_AUTHORIZATION=f"Bearer {_key(user)}")
    assert answer.status_code == 200, answer.content
    return dict(answer.json())


@pytest.mark.sqlite
@pytest.mark.parametrize("kind", ["rubric", "rating"])
def test_results_json_is_what_the_results_page_shows(kind: str, researcher: User, make_study: Any) -> None:
    annotators = [UserFactory(role=Role.ANNOTATOR) for _ in range(2)]
    study = make_study(kind=kind, n_items=4, overlap=2, annotators=annotators)
    for n, annotator in enumerate(annotators):
        _judge_by_form(study, annotator, FORM_ANSWERS[kind][n:] + FORM_ANSWERS[kind][:n])
    data = _api_results(researcher, study.pk)
    charts, html = _page_chart_data(researcher, study.pk)
    assert data["charts"] == charts and data["judgments"] == 8
    assert data["quality"]["agreement"]["units"] > 0
    if kind == "rating":
        assert data["scale"] == study.scale
        for row in data["ratings"]:
            assert row["low"] <= row["mean"] <= row["high"] and sum(row["counts"]) == row["n"]
            cells = f"<td>{row['model']}</td><td>{row['n']}</td><td>{row['mean']:.2f}</td>"
            assert cells + f"<td>{row['low']:.2f} – {row['high']:.2f}</td>" in html
    else:
        assert [p["key"] for p in data["per_plan"]] == [c["model"] for c in charts["plans"]]
        for row in data["per_plan"]:
            assert f"<td>{row['key']}</td><td>{row['satisfied']}</td><td>{row['not_satisfied']}</td>" in html
            assert row["low"] <= row["rate"] <= row["high"] and row["judged"] == row["satisfied"] + row["not_satisfied"]
            assert f"<td>{100 * row['low']:.1f}% – {100 * row['high']:.1f}%</td>" in html
        assert len(data["per_rubric_item"]) == 12 and {r["flags"] for r in data["per_rubric_item"]} >= {1}
        for row in data["preference"]:
            assert row["low"] <= row["rate"] <= row["high"]
            assert f"<td>{row['model']}</td><td>{row['wins']}</td><td>{row['losses']}</td>" in html


@pytest.mark.sqlite
def test_violation_results_json_has_people_the_automatic_judge_and_their_agreement(
    researcher: User, make_study: Any, annotator: User
) -> None:
    from evaluation import services
    from tests.evaluation.test_results_automatic import DATA, _judge

    study = make_study(kind="violation", n_items=0, annotators=[annotator])
    services.import_items(study=study, data=(DATA / "stwebagentbench_2024_test_raw_sample.json").read_bytes())
    steps = [{"action": "click('a51')", "observation": "page"}, {"action": "click('save')", "observation": "saved"}]
    services.import_items(
        study=study, data=jsonl([{"task_id": t, "agent": "STBenchDemo", "trajectory": steps} for t in (0, 1, 2)])
    )
    services.import_items(study=study, data=(DATA / "STBenchDemo_agent_full_res_sample.csv").read_bytes())
    verdicts = {
        "0": {"completion": "none", "violations": [], "dormant": []},
        "1": {"completion": "full", "violations": [(1, 1)], "dormant": []},
        "2": {"completion": "full", "violations": [], "dormant": []},
    }
    _judge(study, annotator, verdicts)
    data = _api_results(researcher, study.pk)
    charts, html = _page_chart_data(researcher, study.pk)
    assert data["charts"] == charts
    people = data["people"]["STBenchDemo"]
    automatic = data["automatic"]["ST-WebAgentBench evaluator"]["STBenchDemo"]
    assert (automatic["completion"], automatic["cup"]) == (0.667, 0.0)
    assert people["tasks"] == 3 and {d["category"] for d in people["dimensions"]} >= {"user_consent"}
    (comparison,) = data["comparisons"]
    assert comparison["shared"] == 3 and comparison["disagreement_count"] == len(comparison["disagreements"]) > 0
    assert {a["label"] for a in comparison["agreement"]} >= {"task completion"}
    assert f'data-metric="cup">{people["cup"] * 100:.1f}%' in html


def test_exports_started_by_a_script_download_the_bytes_the_export_page_gives(
    asgi_server: Any, celery_worker_app: Any, researcher: User, tmp_path: Any
) -> None:
    annotator = UserFactory(role=Role.ANNOTATOR)
    api = _api(asgi_server, researcher)
    study = api.create_study(name="export me", kind="pairwise", annotators=[annotator.username])
    study.upload_items(_rows(6))
    assert _annotate(Study.objects.get(pk=study.id), annotator, ["left", "tie", "right"]) == 6
    page = Client()
    page.force_login(researcher)
    for fmt, options in [
        ("reward", {"keep_ties": True, "style": "standard"}),
        ("judgments_jsonl", {}),
        ("judgments_csv", {}),
    ]:
        mine = study.export(fmt, **options)
        assert mine.status == "queued" and mine.data["format"] == fmt
        path = mine.download(tmp_path / f"{fmt}.out", timeout=60)
        assert mine.status == "done" and mine.data["rows"] > 0
        # The same export from the export page's form, downloaded from the page: the same bytes.
        form = {
            "format": fmt,
            "style": options.get("style", "auto"),
            "keep_ties": "on" if options.get("keep_ties") else "",
        }
        assert page.post(reverse("evaluation:export", kwargs={"study_id": study.id}), form).status_code == 302
        theirs = study.exports()[0]
        assert theirs.id != mine.id and theirs.wait(timeout=60).status == "done"
        downloaded = page.get(
            reverse("evaluation:export_download", kwargs={"study_id": study.id, "export_id": theirs.id})
        )
        assert b"".join(downloaded) == path.read_bytes(), fmt
        same = api.download(f"/api/studies/{study.id}/exports/{theirs.id}/download/", tmp_path / "theirs")
        assert same.read_bytes() == path.read_bytes()
    reward = [json.loads(line) for line in (tmp_path / "reward.out").read_bytes().splitlines()]
    assert len(reward) == 6 and set(reward[0]) >= {"prompt", "chosen", "rejected"}
    unfinished = study.export("judgments_jsonl")
    with pytest.raises(arbiter_client.ArbiterError) as early:
        api.get(f"/api/studies/{study.id}/exports/{unfinished.id + 1000}/")
    assert early.value.status == 404


def test_a_large_upload_is_read_by_a_worker_and_the_sdk_waits_for_it(
    asgi_server: Any, celery_worker_app: Any, researcher: User, tmp_path: Any
) -> None:
    api = _api(asgi_server, researcher)
    study = api.create_study(name="large", kind="pairwise")
    # Past EVALUATION_IMPORT_BACKGROUND_BYTES (4 MiB) once the transfer's gzip is undone: a worker reads it.
    long = "x" * 20_000
    rows = [pairwise_row(i, response_a=f"{long} {i}") for i in range(220)]
    path = tmp_path / "large.jsonl"
    path.write_bytes(jsonl(rows))
    queued = study.upload_items(path, wait=False)
    assert queued["status"] in {"queued", "running", "done"} and queued["size_bytes"] == path.stat().st_size
    report = study.upload_items(path.read_bytes(), filename="again.jsonl")  # this one waits
    assert (report["status"], report["created"], report["percent"]) == ("done", 220, 100)
    first = study.import_status(queued["id"])
    assert first["filename"] == "large.jsonl" and first["status"] in {"queued", "running", "done"}
    broken = [*rows, {"prompt": "no sides"}]
    path.write_bytes(jsonl(broken))
    with pytest.raises(arbiter_client.ImportRejected) as refused:
        study.upload_items(path)
    assert [e["line"] for e in refused.value.errors] == [221] and refused.value.valid_count == 220


@pytest.mark.sqlite
def test_the_transfer_gzip_is_undone_once_and_the_upload_limit_is_the_forms(researcher: User, monkeypatch: Any) -> None:
    import gzip

    from evaluation import api

    key = _key(researcher)
    study = _post(key, "/api/studies/", {"name": "gz", "kind": "pairwise"}).json()
    path = f"/api/studies/{study['id']}/items/?filename=items.jsonl.gz"
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}", "HTTP_CONTENT_ENCODING": "gzip"}
    client = Client(raise_request_exception=False)
    gz_file = gzip.compress(jsonl(_rows(3)))  # a .gz file, sent gzip-encoded as the SDK sends every upload
    answer = client.post(path, gzip.compress(gz_file), content_type="application/octet-stream", **headers)
    assert answer.status_code == 201 and answer.json()["created"] == 3, answer.content
    assert answer.json()["size_bytes"] == len(gz_file) and "gzip" in answer.json()["container"]
    broken = client.post(path, b"\x1f\x8b\x08garbage", content_type="application/octet-stream", **headers)
    assert broken.status_code == 400 and broken.json()["field"] == "body"
    other = client.post(
        path, b"x", content_type="application/octet-stream", **{**headers, "HTTP_CONTENT_ENCODING": "br"}
    )
    assert other.status_code == 415
    monkeypatch.setattr(api, "MAX_UPLOAD_BYTES", 100)
    big = client.post(path, gzip.compress(jsonl(_rows(3))), content_type="application/octet-stream", **headers)
    assert big.status_code == 413 and big.json()["field"] == "body"
    assert Item.objects.filter(study_id=study["id"]).count() == 3


def test_an_export_in_the_bucket_downloads_through_the_same_signed_redirect_as_the_page(
    s3_store: str, researcher: User, make_study: Any
) -> None:
    import requests

    from evaluation import export

    annotator = UserFactory(role=Role.ANNOTATOR)
    study = make_study(n_items=3, annotators=[annotator])
    _judge_by_form(study, annotator, [{"choice": "left"}, {"choice": "tie"}, {"choice": "right"}])
    key = _key(researcher)
    started = _post(key, f"/api/studies/{study.pk}/exports/", {"format": "judgments_csv"})
    assert started.status_code == 202, started.content
    job = export.run_export(export_id=started.json()["id"])  # the worker's side, here in-process
    assert job is not None and job.path.startswith(s3_store)
    url = f"/api/studies/{study.pk}/exports/{job.pk}/download/"
    answer = Client().get(url, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert answer.status_code == 302
    page = Client()
    page.force_login(researcher)
    from_page = page.get(reverse("evaluation:export_download", kwargs={"study_id": study.pk, "export_id": job.pk}))
    data = requests.get(answer["Location"], timeout=30).content
    assert data == requests.get(from_page["Location"], timeout=30).content
    assert data.decode().splitlines()[0] == ",".join(export.CSV_FIELDS) and len(data.splitlines()) == 4


def test_the_sdk_follows_a_download_redirect_without_sending_its_key_there(tmp_path: Any) -> None:
    import http.server
    import threading

    seen: dict[str, Any] = {}

    class Bucket(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["bucket"] = (self.path, self.headers.get("Authorization"))
            body = b"a,b\n1,2\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    bucket = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bucket)

    class Arbiter(Bucket):
        def do_GET(self) -> None:
            seen["arbiter"] = (self.path, self.headers.get("Authorization"))
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{bucket.server_port}/b/export.csv?X-Amz-Signature=s")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Arbiter)
    for s in (bucket, server):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        api = arbiter_client.Api(f"http://127.0.0.1:{server.server_port}", "arb_u_secret")
        out = api.download("/api/studies/1/exports/2/download/", tmp_path / "export.csv")
    finally:
        server.shutdown()
        bucket.shutdown()
    assert out.read_bytes() == b"a,b\n1,2\n"
    assert seen["arbiter"] == ("/api/studies/1/exports/2/download/", "Bearer arb_u_secret")
    assert seen["bucket"] == ("/b/export.csv?X-Amz-Signature=s", None)


@pytest.mark.parametrize("column", ["agent_id", "run_id"])
def test_a_nul_in_the_evaluators_csv_is_a_422_naming_its_line_and_column(
    researcher: User, make_study: Any, column: str
) -> None:
    """ST-WebAgentBench's `*_full_res.csv`: its agent and run cells name the stored verdict as they are, so a NUL
    there is refused by line and column like one in any other upload (PostgreSQL cannot store it: it was a 500)."""
    from evaluation import services
    from evaluation.models import AutomaticJudgment
    from tests.evaluation.test_results_automatic import DATA

    study = make_study(kind="violation", n_items=0)
    services.import_items(study=study, data=(DATA / "stwebagentbench_2024_test_raw_sample.json").read_bytes())
    lines = (DATA / "STBenchDemo_agent_full_res_sample.csv").read_text().splitlines()
    header = lines[0].split(",")
    if column not in header:
        header.append(column)
        lines = [",".join(header)] + [f"{line},1" for line in lines[1:]]
    cells = lines[3].split(",")
    cells[header.index(column)] = "STBench\x00Demo"
    lines[3] = ",".join(cells)
    answer = Client(raise_request_exception=False).post(
        f"/api/studies/{study.pk}/items/?filename=STBenchDemo_agent_full_res.csv",
        ("\n".join(lines) + "\n").encode(),
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=f"Bearer {_key(researcher)}",
    )
    assert answer.status_code == 422, answer.content
    errors = answer.json()["errors"]
    assert [(e["line"], e["field"]) for e in errors] == [(4, column)] and "NUL" in errors[0]["message"]
    assert not AutomaticJudgment.objects.filter(item__study=study).exists()
