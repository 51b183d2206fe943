"""Rename, tag, archive and delete a study from its page: the owner may; readers get 403, everyone else 404."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.accounts.models import User
from evaluation.models import Item, Study

pytestmark = pytest.mark.django_db


def test_owner_renames_and_tags_a_study_and_the_list_filters_by_tag(
    client_for: Any, researcher: User, make_study: Any
) -> None:
    study = make_study()
    client = client_for(researcher)
    response = client.post(
        f"/studies/{study.pk}/labels/", {"labels-name": "helpfulness v2", "labels-tags": "pilot, helpful"}
    )
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.name == "helpfulness v2" and sorted(study.tags.values_list("name", flat=True)) == ["helpful", "pilot"]
    assert "helpfulness v2" in client.get("/studies/", {"tag": "pilot"}).content.decode()
    assert "helpfulness v2" not in client.get("/studies/", {"tag": "other"}).content.decode()


def test_a_bad_name_is_a_422_naming_the_field(client_for: Any, researcher: User, make_study: Any) -> None:
    study = make_study()
    response = client_for(researcher).post(f"/studies/{study.pk}/labels/", {"labels-name": "  ", "labels-tags": ""})
    assert response.status_code == 422
    assert response.context["labels_form"].errors["name"] == ["This field is required."]


def test_readers_get_403_and_strangers_404_for_every_change(
    client_for: Any, researcher: User, other_researcher: User, make_study: Any
) -> None:
    study = make_study()
    stranger = client_for(other_researcher)
    for method, url in (("post", "labels/"), ("post", "archive/"), ("get", "delete/"), ("post", "delete/")):
        assert getattr(stranger, method)(f"/studies/{study.pk}/{url}").status_code == 404
    study.shared_with.add(other_researcher)
    for method, url in (("post", "labels/"), ("post", "archive/"), ("get", "delete/"), ("post", "delete/")):
        assert getattr(stranger, method)(f"/studies/{study.pk}/{url}").status_code == 403
    assert Study.objects.filter(pk=study.pk, archived_at__isnull=True).exists()


def test_archived_study_leaves_the_list_and_the_annotators_queue(
    client_for: Any, researcher: User, make_study: Any, make_annotators: Any
) -> None:
    (person,) = make_annotators(1)
    study = make_study(annotators=[person])
    study.refresh_from_db()
    client = client_for(researcher)
    assert f"/annotate/{study.pk}/" in client_for(person).get("/annotate/").content.decode()
    client.post(f"/studies/{study.pk}/archive/", {"archived": "1"})
    assert study.name not in client.get("/studies/").content.decode()
    assert study.name in client.get("/studies/", {"archived": "1"}).content.decode()
    assert f"/annotate/{study.pk}/" not in client_for(person).get("/annotate/").content.decode()
    # Nor does the study's own address (an open tab, a bookmark) hand out items while it is archived.
    assert client_for(person).get(f"/annotate/{study.pk}/").status_code == 404
    client.post(f"/studies/{study.pk}/archive/", {"archived": "0"})
    assert study.name in client.get("/studies/").content.decode()
    assert 'name="assignment"' in client_for(person).get(f"/annotate/{study.pk}/").content.decode()


def test_delete_removes_the_study_and_its_items(client_for: Any, researcher: User, make_study: Any) -> None:
    study = make_study(n_items=3)
    client = client_for(researcher)
    assert "3 items" in client.get(f"/studies/{study.pk}/delete/").content.decode()
    response = client.post(f"/studies/{study.pk}/delete/")
    assert (response.status_code, response["Location"]) == (302, "/studies/")
    assert not Study.objects.filter(pk=study.pk).exists() and not Item.objects.filter(study_id=study.pk).exists()
