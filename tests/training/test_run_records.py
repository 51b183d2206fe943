"""Rename, tag, archive and delete a run from its page: the owner may, no one else may; delete refuses dependants."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from kombu.exceptions import OperationalError

from arbiter.accounts.models import User
from artifacts.models import ArtifactKind
from artifacts.services import register_artifact
from training.models import LogLine, Run, RunTag
from training.services import ingest, runs

pytestmark = pytest.mark.django_db


@contextmanager
def broker_refusing() -> Iterator[None]:
    """The broker down: training.remove_run_files cannot be queued (a fault injected where the task is sent)."""
    from training.tasks import remove_run_files

    refused = OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    with mock.patch.object(remove_run_files, "delay", side_effect=refused):
        yield


def test_owner_renames_and_retags_a_run_and_htmx_gets_the_header_back(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, name="old")
    RunTag.objects.create(run=run, name="drop-me")
    response = client_for(researcher).post(
        f"/runs/{run.id}/edit/", {"edit-name": "  new name ", "edit-tags": "a, b ,a, "}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="run-head"' in html and '<span id="run-name">new name</span>' in html and "<html" not in html
    run.refresh_from_db()
    assert run.name == "new name" and sorted(run.tags.values_list("name", flat=True)) == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "tags", "field", "message"),
    [
        ("", "", "name", "This field is required."),
        ("bad\x00name", "", "name", "Null characters are not allowed."),
        ("ok", "x\ty", "tags", "control characters"),
        ("ok", ",".join(f"t{i}" for i in range(21)), "tags", "At most 20 tags"),
    ],
)
def test_bad_rename_is_a_422_naming_the_field_and_changes_nothing(
    client_for: Any, researcher: User, make_run: Any, name: str, tags: str, field: str, message: str
) -> None:
    run = make_run(researcher, name="kept")
    response = client_for(researcher).post(f"/runs/{run.id}/edit/", {"edit-name": name, "edit-tags": tags})
    assert response.status_code == 422
    errors = response.context["edit_form"].errors
    assert message in " ".join(errors[field])
    run.refresh_from_db()
    assert run.name == "kept" and not run.tags.exists()


def test_another_researcher_cannot_rename_archive_or_delete_even_a_shared_run(
    client_for: Any, researcher: User, other_researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, name="mine", shared=True)
    other = client_for(other_researcher)
    assert other.get(f"/runs/{run.id}/").status_code == 200  # shared: readable
    assert 'id="run-edit"' not in other.get(f"/runs/{run.id}/").content.decode()
    assert other.post(f"/runs/{run.id}/edit/", {"edit-name": "theirs"}).status_code == 404
    assert other.post(f"/runs/{run.id}/archive/", {"archived": "1"}).status_code == 404
    assert other.get(f"/runs/{run.id}/delete/").status_code == 404
    assert other.post(f"/runs/{run.id}/delete/").status_code == 404
    run.refresh_from_db()
    assert run.name == "mine" and run.archived_at is None


def test_archived_runs_leave_the_list_until_asked_for_and_come_back(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, name="to-archive")
    client = client_for(researcher)
    assert client.post(f"/runs/{run.id}/archive/", {"archived": "1"}).status_code == 302
    assert "to-archive" not in client.get("/runs/").content.decode()
    assert "to-archive" in client.get("/runs/", {"archived": "1"}).content.decode()
    assert 'id="run-archived"' in client.get(f"/runs/{run.id}/").content.decode()
    client.post(f"/runs/{run.id}/archive/", {"archived": "0"})
    assert "to-archive" in client.get("/runs/").content.decode()


def test_an_active_run_is_neither_archived_nor_deleted(client_for: Any, researcher: User, make_run: Any) -> None:
    run = make_run(researcher, status="queued")
    client = client_for(researcher)
    client.post(f"/runs/{run.id}/archive/", {"archived": "1"})
    response = client.post(f"/runs/{run.id}/delete/")
    assert response.status_code == 409 and "cancel it before deleting it" in response.content.decode()
    run.refresh_from_db()
    assert run.archived_at is None


def test_delete_removes_the_run_and_what_it_logged(client_for: Any, researcher: User, make_run: Any) -> None:
    run = make_run(researcher, name="gone")
    LogLine.objects.create(run=run, stream="stdout", seq=0, text="hi", time=0)
    client = client_for(researcher)
    confirm = client.get(f"/runs/{run.id}/delete/")
    assert confirm.status_code == 200 and "1 log lines" in confirm.content.decode()
    response = client.post(f"/runs/{run.id}/delete/")
    assert response.status_code == 302 and response["Location"] == "/runs/"
    assert not Run.objects.filter(id=run.id).exists() and not LogLine.objects.filter(run_id=run.id).exists()


def test_delete_refuses_while_a_run_resumed_from_its_checkpoint_and_lists_it(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, name="base", config={"max_steps": 3})
    run.checkpoints.create(step=2, path="/a/checkpoint-2")
    child = runs.resume_run(run=run, by=researcher)
    response = client_for(researcher).post(f"/runs/{run.id}/delete/")
    assert response.status_code == 409
    html = response.content.decode()
    assert f'<a href="/runs/{child.id}/">run #{child.id} base (resumed @2)</a>' in html
    assert "resumed from its checkpoint" in html
    assert Run.objects.filter(id=run.id).exists()


def test_delete_refuses_while_another_run_trains_from_its_checkpoint_named_as_a_uri(
    client_for: Any, researcher: User, other_researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, name="base")
    run.checkpoints.create(step=4, path="/store/runs/1/checkpoint-4")
    make_run(other_researcher, name="secret", config={"model_name_or_path": "file:///store/runs/1/checkpoint-4"})
    response = client_for(researcher).post(f"/runs/{run.id}/delete/")
    assert response.status_code == 409
    html = response.content.decode()
    assert "of another researcher" in html and "trains from its checkpoint" in html and "secret" not in html


@pytest.mark.parametrize(
    ("field", "spelling"),
    [
        ("model_name_or_path", "{path}"),
        ("ref_model_name_or_path", "file://{path}"),  # the launch check accepts file:// URIs
        ("model_name_or_path", "{path}/"),
        ("model_name_or_path", "{parent}/./checkpoint-10"),
        ("reward_model_path", "{parent}"),  # the run's whole location (its final model folder lies there)
        ("process_reward_model_path", "{path}"),
    ],
)
def test_delete_refuses_while_a_run_trains_from_its_checkpoint_in_any_accepted_spelling(
    client_for: Any, researcher: User, settings: Any, tmp_path: Any, field: str, spelling: str
) -> None:
    """Each spelling passes the launch check (so the run reads the checkpoint); the delete must see it too."""
    settings.ARTIFACT_ROOT, settings.ARTIFACT_STORE_URL = tmp_path / "artifacts", ""
    base = Run.objects.create(owner=researcher, name="base", recipe="dpo", status="succeeded")
    folder = tmp_path / "artifacts" / "runs" / str(base.id) / "checkpoint-10"
    folder.mkdir(parents=True)
    ingest.record_checkpoint(run=base, step=10, path=str(folder))
    register_artifact(owner=researcher, kind=ArtifactKind.CHECKPOINT, uri=str(folder.parent), run=base)
    value = spelling.format(path=folder, parent=folder.parent)
    recipe = "grpo" if field in {"reward_model_path", "process_reward_model_path"} else "dpo"
    user = runs.launch_run(owner=researcher, recipe=recipe, config={"max_steps": 2, field: value})
    response = client_for(researcher).post(f"/runs/{base.id}/delete/")
    assert response.status_code == 409, value
    assert f"run #{user.id} " in response.content.decode() and "trains from its checkpoint" in response.content.decode()
    assert Run.objects.filter(id=base.id).exists()


def test_a_scripts_run_naming_a_checkpoint_in_its_config_does_not_block_the_delete(
    client: Any, client_for: Any, researcher: User, other_researcher: User, make_run: Any
) -> None:
    """A run created by a script (POST /api/runs/) keeps any config as its own notes, unchecked: it reads nothing
    on the server, so it cannot hold another researcher's run (whose paths are guessable) hostage."""
    base = make_run(researcher, name="base")
    base.checkpoints.create(step=4, path="/store/runs/1/checkpoint-4")
    _, key = runs.issue_api_token(user=other_researcher, name="k")
    config = {"model_name_or_path": "/store/runs/1/checkpoint-4"}
    created = client.post(
        "/api/runs/", {"name": "squat", "config": config}, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )  # fmt: skip
    assert created.status_code == 201, created.content
    response = client_for(researcher).post(f"/runs/{base.id}/delete/")
    assert response.status_code == 302 and not Run.objects.filter(id=base.id).exists()


def test_admin_delete_refuses_what_the_run_page_refuses_and_removes_files_like_it(
    client_for: Any,
    admin_user: User,
    researcher: User,
    make_run: Any,
    settings: Any,
    tmp_path: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Django admin's delete goes through run_records.delete_run: an active run or one a resumed run needs is
    listed on admin's "cannot delete" page and stays; a deletable run's files leave the artifact store."""
    settings.ARTIFACT_ROOT, settings.ARTIFACT_STORE_URL = tmp_path / "artifacts", ""
    admin = client_for(admin_user)
    active = make_run(researcher, name="busy", status="queued")
    base = make_run(researcher, name="base", config={"max_steps": 3})
    base.checkpoints.create(step=2, path="/a/checkpoint-2")
    child = runs.resume_run(run=base, by=researcher)
    for run, says in ((active, "is queued: cancel it before deleting it"), (base, f"run #{child.id}")):
        page = admin.get(f"/admin/training/run/{run.id}/delete/")
        assert page.status_code == 200 and says in page.content.decode(), page.content.decode()[-3000:]
        admin.post(f"/admin/training/run/{run.id}/delete/", {"post": "yes"})
        assert Run.objects.filter(id=run.id).exists()  # refused: still there
    bulk = admin.post(
        "/admin/training/run/", {"action": "delete_selected", "_selected_action": [active.id], "post": "yes"}
    )
    assert bulk.status_code == 200 and Run.objects.filter(id=active.id).exists()
    done = make_run(researcher, name="done")
    folder = tmp_path / "artifacts" / "runs" / str(done.id) / "checkpoint-1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w")
    ingest.record_checkpoint(run=done, step=1, path=str(folder))
    with django_capture_on_commit_callbacks(execute=False) as after_commit:
        response = admin.post(f"/admin/training/run/{done.id}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Run.objects.filter(id=done.id).exists()
    # The files go after the commit, handed to the worker (tests/artifacts/test_run_delete_files.py runs one);
    # here the hand-over itself runs with the broker refusing, so they go in this process.
    assert folder.is_dir()
    with broker_refusing():
        for callback in after_commit:
            callback()
    assert not folder.exists()


def test_an_admin_bulk_delete_refused_part_way_deletes_nothing_and_is_a_403(
    admin_user: User, researcher: User, make_run: Any, rf: Any
) -> None:
    """A refusal that appears after admin's confirmation page (here: a run active again) stops the whole bulk
    delete: all or nothing, a 403 naming the reason, never a 500 after half the selection went."""
    from django.contrib.admin.sites import site
    from django.core.exceptions import PermissionDenied

    done = make_run(researcher, name="done")
    busy = make_run(researcher, name="busy", status="queued")
    request = rf.post("/admin/training/run/")
    request.user = admin_user
    with pytest.raises(PermissionDenied, match="cancel it before deleting it"):
        site._registry[Run].delete_queryset(request, Run.objects.filter(id__in=[done.id, busy.id]).order_by("id"))
    assert Run.objects.filter(id__in=[done.id, busy.id]).count() == 2


def test_admin_shows_a_runs_checkpoints_but_cannot_delete_or_add_one(
    client_for: Any, admin_user: User, researcher: User, make_run: Any
) -> None:
    run = make_run(researcher, name="base")
    checkpoint = run.checkpoints.create(step=2, path="/a/checkpoint-2")
    page = client_for(admin_user).get(f"/admin/training/run/{run.id}/change/").content.decode()
    assert "/a/checkpoint-2" in page
    assert "DELETE" not in page  # no delete box on any inline row
    assert re.search(r'name="checkpoints-MAX_NUM_FORMS" value="0"', page)  # no row added by hand
    assert run.checkpoints.get() == checkpoint
