"""The researcher's item browser: paginated, searchable, previews as annotators see them, edits and deletes
items nobody has judged, and hands out an example file per study kind."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from evaluation import services
from evaluation.examples import EXAMPLES, example_file
from evaluation.importers import parse_all
from evaluation.models import Item
from tests.evaluation.conftest import pairwise_row

pytestmark = pytest.mark.sqlite


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_example_file_imports_cleanly_with_a_gold_row(kind: str) -> None:
    result = parse_all(example_file(kind), kind=kind)
    assert result.ok, result.errors
    assert len(result.items) == len(EXAMPLES[kind])
    assert any(item.is_gold and item.expected is not None for item in result.items)


def test_example_download_is_the_studys_kind(client_for, researcher, make_study) -> None:
    study = make_study(kind="rubric", n_items=0)
    response = client_for(researcher).get(reverse("evaluation:items_example", args=[study.pk]))
    assert response.status_code == 200 and response["Content-Disposition"].endswith('example-rubric.jsonl"')
    assert response.content == example_file("rubric")


def test_item_list_pages_and_shows_item_text(client_for, researcher, make_study) -> None:
    study = make_study(n_items=30)
    client = client_for(researcher)
    url = reverse("evaluation:item_list", args=[study.pk])
    first = client.get(url).content.decode()
    assert "30 items" in first and "Question 0?" in first and "Question 25?" not in first
    assert "Page 1 of 2" in first
    second = client.get(url, {"page": 2}).content.decode()
    assert "Question 25?" in second and "Question 0?" not in second


def test_item_list_searches_text_and_filters(client_for, researcher, make_study) -> None:
    zebra = {**pairwise_row(9), "prompt": "Where is the zebra?", "gold": True, "expected": "a"}
    rows = [pairwise_row(i) for i in range(5)] + [zebra]
    study = make_study(rows=rows)
    client = client_for(researcher)
    url = reverse("evaluation:item_list", args=[study.pk])
    found = client.get(url, {"q": "ZEBRA"}).content.decode()
    assert "1 item matching" in found and "Where is the zebra?" in found and "Question 1?" not in found
    gold = client.get(url, {"status": "gold"}).content.decode()
    assert "1 item" in gold and "zebra" in gold


def test_preview_is_the_annotators_page_with_inputs_disabled(client_for, researcher, make_study) -> None:
    row = {**pairwise_row(0), "response_a": "****-****-****-1234", "response_b": "<b>x</b>"}
    study = make_study(rows=[row])
    item = Item.objects.get(study=study)
    html = client_for(researcher).get(reverse("evaluation:item_detail", args=[study.pk, item.pk])).content.decode()
    assert '<fieldset disabled class="preview"' in html
    assert '<div class="plain" dir="auto">****-****-****-1234</div>' in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert 'name="choice"' in html  # the same form an annotator answers
    assert "A: alpha" in html  # researchers see which system wrote which side


def test_edit_reparses_the_row_and_refuses_a_bad_one(client_for, researcher, make_study) -> None:
    study = make_study(n_items=1)
    item = Item.objects.get(study=study)
    url = reverse("evaluation:item_edit", args=[study.pk, item.pk])
    client = client_for(researcher)
    row = {"prompt": "New question?", "response_a": "yes", "response_b": "no", "model_a": "m1", "model_b": "m2"}
    assert client.post(url, {"row": json.dumps(row)}).status_code == 302
    item.refresh_from_db()
    assert item.payload["prompt"] == "New question?" and item.payload["model_b"] == "m2"
    bad = client.post(url, {"row": json.dumps({"prompt": "p", "response_a": "x"})})
    assert bad.status_code == 422 and "response_b: missing" in bad.content.decode()


def test_a_lone_surrogate_in_an_edited_or_new_item_is_invalid_json_not_a_500(
    client_for, researcher, make_study
) -> None:
    """Item forms read JSON as uploads do: PostgreSQL cannot store U+D800, nor can a page render it back."""
    study = make_study(n_items=1)
    item = Item.objects.get(study=study)
    before = dict(item.payload)
    client = client_for(researcher)
    edit = client.post(
        reverse("evaluation:item_edit", args=[study.pk, item.pk]),
        {"row": '{"prompt": "\\ud800", "response_a": "a", "response_b": "b"}'},
    )
    assert edit.status_code == 422 and "valid JSON" in edit.content.decode()
    violation = make_study(kind="violation", n_items=0)
    new = client.post(reverse("evaluation:item_create", args=[violation.pk]), {"task_json": '{"task": "\\ud800"}'})
    assert new.status_code == 422
    assert 'aria-invalid="true" aria-describedby="id_task_json_helptext' in new.content.decode()  # on the field
    item.refresh_from_db()
    assert item.payload == before and not violation.items.exists()


def test_judged_item_can_be_neither_edited_nor_deleted(client_for, researcher, annotator, make_study) -> None:
    study = make_study(n_items=1, annotators=[annotator])
    assignment = services.next_assignment(annotator=annotator, study=study)
    client = client_for(researcher)
    item = assignment.item
    # Leased: an annotator is on it.
    assert client.post(reverse("evaluation:item_delete", args=[study.pk, item.pk])).status_code == 409
    services.submit_judgment(annotator=annotator, assignment_id=assignment.pk, data={"choice": "left"})
    response = client.post(reverse("evaluation:item_delete", args=[study.pk, item.pk]))
    assert response.status_code == 409 and "1 judgment" in response.content.decode()
    edit = client.post(reverse("evaluation:item_edit", args=[study.pk, item.pk]), {"row": json.dumps(pairwise_row(5))})
    assert edit.status_code == 422 and Item.objects.get(pk=item.pk).payload["prompt"] == "Question 0?"


def test_delete_an_unjudged_item(client_for, researcher, make_study) -> None:
    study = make_study(n_items=2)
    item = Item.objects.filter(study=study).first()
    response = client_for(researcher).post(reverse("evaluation:item_delete", args=[study.pk, item.pk]))
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.item_count == 1 and not Item.objects.filter(pk=item.pk).exists()


def test_shared_researcher_may_browse_but_not_edit(client_for, researcher, other_researcher, make_study) -> None:
    study = make_study(n_items=1, shared_with=[other_researcher])
    item = Item.objects.get(study=study)
    client = client_for(other_researcher)
    assert client.get(reverse("evaluation:item_detail", args=[study.pk, item.pk])).status_code == 200
    assert client.get(reverse("evaluation:item_edit", args=[study.pk, item.pk])).status_code == 403
    assert client.post(reverse("evaluation:item_delete", args=[study.pk, item.pk])).status_code == 403
