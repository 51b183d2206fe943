"""Researcher and annotator pages through the Django client: uploads, forms of every kind, access, results."""

from __future__ import annotations

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from evaluation import services
from evaluation.models import Assignment, Item, Judgment, RubricItemFlag
from tests.evaluation.conftest import jsonl, pairwise_row


def _upload(client, study, data: bytes, **extra):
    url = reverse("evaluation:items_upload", kwargs={"study_id": study.pk})
    return client.post(url, {"file": SimpleUploadedFile("items.jsonl", data), **extra})


def test_create_study_then_upload(client_for, researcher, annotator) -> None:
    client = client_for(researcher)
    response = client.post(
        reverse("evaluation:study_create"),
        {"name": "Helpfulness", "kind": "pairwise", "instructions": "Pick the *better* one", "overlap": 2,
         "lease_seconds": 600, "accuracy_threshold": 0.8, "annotators": [annotator.pk]},
    )  # fmt: skip
    assert response.status_code == 302
    study = researcher.owned_studies.get()
    assert list(study.annotators.all()) == [annotator]
    response = _upload(client, study, jsonl([pairwise_row(i) for i in range(3)]))
    assert response.status_code == 200 and Item.objects.filter(study=study).count() == 3
    assert set(Item.objects.filter(study=study).values_list("overlap", flat=True)) == {2}


def test_bad_upload_names_line_and_field_and_imports_nothing(client_for, researcher, make_study) -> None:
    study = make_study(n_items=0)
    data = jsonl([pairwise_row(0), {"prompt": "p", "chosen": "x"}, pairwise_row(2)])
    response = _upload(client_for(researcher), study, data)
    assert response.status_code == 422
    assert "line 2, field &#x27;rejected&#x27;: missing" in response.content.decode()
    assert Item.objects.filter(study=study).count() == 0


def test_upload_can_import_the_valid_rows_when_asked(client_for, researcher, make_study) -> None:
    study = make_study(n_items=0)
    data = jsonl([pairwise_row(0), {"prompt": "p", "chosen": "x"}, pairwise_row(2)])
    response = _upload(client_for(researcher), study, data, import_valid_rows="on")
    assert response.status_code == 200
    assert Item.objects.filter(study=study).count() == 2
    assert "Skipped 1 invalid row" in response.content.decode()


def test_item_by_form(client_for, researcher, make_study) -> None:
    study = make_study(kind="rubric", n_items=0)
    url = reverse("evaluation:item_create", kwargs={"study_id": study.pk})
    response = client_for(researcher).post(url, {"goal": "g", "plan_1": "p1", "rubric": "a\nb"})
    assert response.status_code == 302
    assert Item.objects.get(study=study).payload["rubric"] == ["a", "b"]
    bad = client_for(researcher).post(url, {"goal": "g", "rubric": "a"})
    assert bad.status_code == 422 and "plans" in bad.content.decode()


@pytest.mark.sqlite
def test_annotator_page_hides_model_names_and_shows_progress(client_for, annotator, make_study) -> None:
    study = make_study(n_items=4, annotators=[annotator])
    response = client_for(annotator).get(reverse("annotate:next", kwargs={"study_id": study.pk}))
    html = response.content.decode()
    assert response.status_code == 200
    assert "alpha" not in html and "beta" not in html
    assert re.search(r"1 of 4", html)


def _submit(client, study, data):
    return client.post(reverse("annotate:submit", kwargs={"study_id": study.pk}), data)


FORM_DATA = {
    "pairwise": {"choice": "left", "strength": "2", "rationale": "clearer"},
    "rating": {"rating": "4"},
    "rubric": {
        **{f"v_{p}_{i}": "satisfied" for p in range(2) for i in range(3)},
        "v_1_2": "not_satisfied",
        "flag_1": "on",
        "preference": "left",
    },
    "violation": {"v_1_0": "on", "completion": "partial", "fraction": "0.5", "dormant_1": "on"},
}


@pytest.mark.sqlite
@pytest.mark.parametrize("kind", ["pairwise", "rating", "rubric", "violation"])
def test_each_kind_form_stores_a_judgment(kind, client_for, annotator, make_study) -> None:
    study = make_study(kind=kind, n_items=2, annotators=[annotator])
    client = client_for(annotator)
    client.get(reverse("annotate:next", kwargs={"study_id": study.pk}))
    assignment = Assignment.objects.get(annotator=annotator)
    response = _submit(client, study, {"assignment": assignment.pk, "time_ms": 1234, **FORM_DATA[kind]})
    assert response.status_code == 200, response.content.decode()[:2000]
    judgment = Judgment.objects.get()
    # The answer is the next item's form (one request a judgment), its page's own URL for the address bar.
    following = Assignment.objects.exclude(pk=assignment.pk).get(annotator=annotator)
    assert f'name="assignment" value="{following.pk}"' in response.content.decode()
    assert f'data-page-url="/annotate/{study.pk}/"' in response.content.decode()
    assert judgment.time_ms <= 1234
    if kind == "rubric":
        expected_plan_1 = ["satisfied", "satisfied", "not_satisfied"]
        assert judgment.payload["verdicts"][1 if not assignment.swapped else 0] == expected_plan_1
        assert RubricItemFlag.objects.filter(rubric_index=1).count() == 1
    if kind == "violation":
        assert judgment.payload["violations"] == [{"step": 1, "policy": 0, "dimension": "user_consent"}]
        assert judgment.payload["fraction"] == 0.5 and judgment.payload["dormant"] == [1]
    last = _submit(client, study, {"assignment": following.pk, "time_ms": 10, **FORM_DATA[kind]})
    assert (last.status_code, last["Location"]) == (302, f"/annotate/{study.pk}/")  # the end: the done page's URL


@pytest.mark.sqlite
def test_skip_and_flag_answer_with_the_next_item(client_for, annotator, make_study) -> None:
    study = make_study(n_items=2, annotators=[annotator])
    client = client_for(annotator)
    client.get(reverse("annotate:next", kwargs={"study_id": study.pk}))
    first = Assignment.objects.get(annotator=annotator)
    skip = reverse("annotate:skip", kwargs={"study_id": study.pk})
    response = client.post(skip, {"assignment": first.pk, "flag": "1", "reason": "garbled"})
    assert response.status_code == 200
    first.refresh_from_db()
    assert first.skipped and first.flagged and first.flag_reason == "garbled"
    following = Assignment.objects.exclude(pk=first.pk).get(annotator=annotator)
    assert f'name="assignment" value="{following.pk}"' in response.content.decode()
    last = client.post(skip, {"assignment": following.pk})
    assert (last.status_code, last["Location"]) == (302, f"/annotate/{study.pk}/")  # the end: the done page
    assert not Judgment.objects.exists()


@pytest.mark.sqlite
def test_a_submit_after_the_lease_went_to_someone_else_is_a_409_that_names_the_pages_own_url(
    client_for, make_annotators, make_study
) -> None:
    """The 409 answers the POST; like the item page it carries the page's URL, which annotate.js puts in the
    address bar, so reloading it asks for the next item instead of re-sending the late judgment."""
    from datetime import timedelta

    from django.utils import timezone

    slow, fast = make_annotators(2)
    study = make_study(n_items=1, overlap=1, annotators=[slow, fast])
    client = client_for(slow)
    client.get(reverse("annotate:next", kwargs={"study_id": study.pk}))
    held = Assignment.objects.get(annotator=slow)
    Assignment.objects.filter(pk=held.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    client_for(fast).get(reverse("annotate:next", kwargs={"study_id": study.pk}))  # takes the freed slot
    response = _submit(client, study, {"assignment": held.pk, "choice": "left"})
    assert response.status_code == 409 and "timed out" in response.content.decode()
    assert f'data-page-url="/annotate/{study.pk}/"' in response.content.decode()
    assert "js/annotate.js" in response.content.decode()
    assert not Judgment.objects.exists()


@pytest.mark.sqlite
def test_invalid_submit_rerenders_with_422(client_for, annotator, make_study) -> None:
    study = make_study(n_items=1, annotators=[annotator])
    client = client_for(annotator)
    client.get(reverse("annotate:next", kwargs={"study_id": study.pk}))
    assignment = Assignment.objects.get()
    response = _submit(client, study, {"assignment": assignment.pk})
    assert response.status_code == 422 and not Judgment.objects.exists()


@pytest.mark.sqlite
def test_refused_rubric_submit_names_the_missing_cell_next_to_it(client_for, annotator, make_study) -> None:
    study = make_study(kind="rubric", n_items=1, annotators=[annotator])
    client = client_for(annotator)
    client.get(reverse("annotate:next", kwargs={"study_id": study.pk}))
    assignment = Assignment.objects.get()
    answers = {f"v_{p}_{i}": "satisfied" for p in range(2) for i in range(3) if (p, i) != (1, 2)}
    response = _submit(client, study, {"assignment": assignment.pk, "preference": "tie", **answers})
    html = response.content.decode()
    assert response.status_code == 422
    cell = html[html.index('name="v_1_2"') : html.index("</td>", html.index('name="v_1_2"'))]
    assert 'class="field-error"' in cell and "This field is required." in cell
    other = html[html.index('name="v_0_2"') : html.index("</td>", html.index('name="v_0_2"'))]
    assert "field-error" not in other


@pytest.mark.sqlite
def test_annotator_cannot_submit_someone_elses_assignment(client_for, make_annotators, make_study) -> None:
    first, second = make_annotators(2)
    study = make_study(n_items=2, annotators=[first, second])
    theirs = services.next_assignment(annotator=first, study=study)
    response = _submit(client_for(second), study, {"assignment": theirs.pk, "choice": "left"})
    assert response.status_code == 400 and not Judgment.objects.exists()


@pytest.mark.sqlite
def test_annotator_not_in_study_gets_404(client_for, annotator, make_study) -> None:
    study = make_study(n_items=1)
    assert client_for(annotator).get(reverse("annotate:next", kwargs={"study_id": study.pk})).status_code == 404


def test_annotator_cannot_open_results(client_for, annotator, make_study) -> None:
    study = make_study(n_items=1, annotators=[annotator])
    for name in ("results", "quality", "study_detail", "export"):
        assert (
            client_for(annotator).get(reverse(f"evaluation:{name}", kwargs={"study_id": study.pk})).status_code == 403
        )


def test_shared_researcher_reads_but_cannot_edit(client_for, other_researcher, make_study) -> None:
    study = make_study(n_items=1, shared_with=[other_researcher])
    client = client_for(other_researcher)
    assert client.get(reverse("evaluation:results", kwargs={"study_id": study.pk})).status_code == 200
    assert client.get(reverse("evaluation:study_edit", kwargs={"study_id": study.pk})).status_code == 403
    assert client.get(reverse("evaluation:study_list")).content.decode().count(study.name) == 1


def test_overlap_cannot_drop_below_what_items_hold(client_for, researcher, make_annotators, make_study) -> None:
    people = make_annotators(2)
    study = make_study(n_items=1, overlap=2, annotators=people)
    for p in people:
        services.next_assignment(annotator=p, study=study)
    url = reverse("evaluation:study_edit", kwargs={"study_id": study.pk})
    response = client_for(researcher).post(
        url, {"name": "x", "instructions": "", "overlap": 1, "lease_seconds": 600, "accuracy_threshold": 0.5,
              "annotators": [p.pk for p in people]},
    )  # fmt: skip
    assert response.status_code == 422
    assert Item.objects.get(study=study).overlap == 2


def _judge_all(study, people, data_for):
    for person in people:
        while (a := services.next_assignment(annotator=person, study=study)) is not None:
            services.submit_judgment(annotator=person, assignment_id=a.pk, data=data_for(person, a))


@pytest.mark.parametrize("kind", ["pairwise", "rating", "rubric", "violation"])
def test_results_and_quality_pages_render(kind, client_for, researcher, make_annotators, make_study) -> None:
    people = make_annotators(2)
    study = make_study(kind=kind, n_items=4, overlap=2, annotators=people)
    data = {
        "pairwise": {"choice": "left"},
        "rating": {"rating": 3},
        "rubric": {"verdicts": [["satisfied"] * 3, ["unclear"] * 3], "preference": "tie"},
        "violation": {"completion": "full", "violations": [(0, 0)]},
    }[kind]
    _judge_all(study, people, lambda person, a: data)
    client = client_for(researcher)
    for name in ("results", "quality", "study_detail"):
        response = client.get(reverse(f"evaluation:{name}", kwargs={"study_id": study.pk}))
        assert response.status_code == 200, name
    results = client.get(reverse("evaluation:results", kwargs={"study_id": study.pk})).content.decode()
    if kind == "violation":
        assert 'data-metric="cup">0.0%' in results  # completed, but a consent policy broken on every task
        assert "User consent" in results


def test_quality_flags_annotator_below_gold_threshold(client_for, researcher, make_annotators, make_study) -> None:
    good, bad = make_annotators(2)
    rows = [pairwise_row(i, gold=True, expected="a") for i in range(3)]
    study = make_study(rows=rows, overlap=2, annotators=[good, bad], accuracy_threshold=0.8)

    def answer(person, assignment):
        return {"choice": "left" if (person == good) != assignment.swapped else "right"}

    _judge_all(study, [good, bad], answer)
    html = client_for(researcher).get(reverse("evaluation:quality", kwargs={"study_id": study.pk})).content.decode()
    rows_html = re.findall(r"<tr class=\"(below)?\">\s*<td>(\w+)</td>", html)
    assert ("below", bad.username) in rows_html and ("", good.username) in rows_html


def test_progress_api(client_for, researcher, annotator, make_study) -> None:
    study = make_study(n_items=3, overlap=2, annotators=[annotator])
    a = services.next_assignment(annotator=annotator, study=study)
    services.submit_judgment(annotator=annotator, assignment_id=a.pk, data={"choice": "tie"})
    body = json.loads(
        client_for(researcher).get(reverse("evaluation_api:progress", kwargs={"study_id": study.pk})).content
    )
    assert (body["judgments"], body["target"], body["items"]) == (1, 6, 3)


def test_annotator_loop_query_counts_are_pinned(
    client_for, annotator, make_study, django_assert_max_num_queries
) -> None:
    study = make_study(n_items=3, annotators=[annotator])
    client = client_for(annotator)
    url = reverse("annotate:next", kwargs={"study_id": study.pk})
    client.get(url)  # the first request also sweeps leases; measure the steady state
    assignment = Assignment.objects.get(annotator=annotator)
    # In production (autocommit; the session comes from the cache): submit = user, the assignment with
    # its study and membership, one write statement, then the next page in the same request: one read of
    # study + membership + progress + latest assignment, one claim statement (5). next = user, the read,
    # the claim (3). The test runs inside a transaction, which wraps each write statement in a savepoint (+2).
    with django_assert_max_num_queries(9):
        response = _submit(client, study, {"assignment": assignment.pk, "choice": "tie"})
    assert response.status_code == 200 and Assignment.objects.filter(annotator=annotator).count() == 2
    with django_assert_max_num_queries(5):
        client.get(url)


@pytest.mark.sqlite
def test_reloading_the_page_shows_the_same_open_item(client_for, annotator, make_study) -> None:
    study = make_study(n_items=3, annotators=[annotator])
    client = client_for(annotator)
    url = reverse("annotate:next", kwargs={"study_id": study.pk})
    first, again = client.get(url), client.get(url)
    assert first.status_code == again.status_code == 200
    pick = re.compile(r'name="assignment" value="(\d+)"')
    assert pick.search(first.content.decode()).group(1) == pick.search(again.content.decode()).group(1)
    assert "Answer" in again.content.decode() and Assignment.objects.count() == 1


@pytest.mark.sqlite
def test_item_html_is_rendered_at_import_and_stale_html_is_redone(client_for, annotator, make_study) -> None:
    study = make_study(n_items=1, annotators=[annotator], text_format="markdown")  # plain text stores no HTML
    item = Item.objects.get(study=study)
    assert "<strong>A0</strong>" in item.rendered["response_a"]
    # The content changed behind the renderer's back (an admin, a script): the page renders it afresh.
    Item.objects.filter(pk=item.pk).update(payload={**item.payload, "response_a": "now **fresh**"})
    html = client_for(annotator).get(reverse("annotate:next", kwargs={"study_id": study.pk})).content.decode()
    assert "now <strong>fresh</strong>" in html and "<strong>A0</strong>" not in html
    assert "<strong>fresh</strong>" in Item.objects.get(pk=item.pk).rendered["response_a"]


@pytest.mark.sqlite
def test_tampered_stored_html_is_sanitised_on_display(client_for, annotator, make_study) -> None:
    study = make_study(n_items=1, annotators=[annotator], text_format="markdown")
    item = Item.objects.get(study=study)
    # Stored HTML that passes the freshness check but never went through the sanitiser.
    evil = '<p>hi</p><script>window.__xss=1</script><img src=x onerror="window.__xss=1"><a href="javascript:x">l</a>'
    Item.objects.filter(pk=item.pk).update(rendered={**item.rendered, "response_a": evil, "prompt": evil})
    html = client_for(annotator).get(reverse("annotate:next", kwargs={"study_id": study.pk})).content.decode()
    assert "<p>hi</p>" in html
    assert "__xss" not in html and "<img" not in html and "javascript:" not in html
