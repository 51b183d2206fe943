""" "Sample into a study" without a worker: the form's checks, prompt sets, how completions become blinded items
with their provenance, and the job's claim, progress, cancel and sweep."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from arbiter.accounts.models import Role
from evaluation.models import Item, StudyKind
from loop import prompt_sets
from loop.models import ItemSource, Policy, PolicyKind, SampleJob, SampleStatus
from loop.services import sampling
from loop.services.policies import policy_for_checkpoint, policy_for_model, policy_for_run_step
from tests.factories import UserFactory
from tests.loop.conftest import judge

pytestmark = pytest.mark.django_db


def _form_data(**extra: Any) -> dict[str, Any]:
    data = {
        "prompt_source": "run",
        "max_prompts": 4,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 8,
        "n": 1,
        "seed": 0,
        "backend": "hf",
        "queue": "gpu",
        "study_kind": "pairwise",
        "overlap": 1,
        "skip_identical": "on",
    }
    data.update(extra)
    return data


def test_the_form_starts_a_job_with_the_runs_prompts_and_its_checkpoints(
    researcher: Any, annotator: Any, run_with_checkpoints: Any, client_for: Any
) -> None:
    run = run_with_checkpoints(researcher)
    ids = list(run.checkpoints.order_by("step").values_list("pk", flat=True))
    client = client_for(researcher)
    page = client.get(f"/samples/new/?run={run.pk}")
    assert page.status_code == 200 and "step 10" in page.content.decode()
    response = client.post(
        f"/samples/new/?run={run.pk}",
        _form_data(checkpoints=ids, prompt_run=run.pk, annotators=[annotator.pk], name="early vs late"),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    job = SampleJob.objects.get()
    assert response["Location"] == f"/samples/{job.pk}/"
    assert (job.status, job.total, job.prompt_count, job.name) == (SampleStatus.QUEUED, 8, 4, "early vs late")
    assert [m.policy.step for m in job.members.order_by("position")] == [10, 20]
    prompts = [json.loads(x) for x in (sampling.sample_set_dir(job.pk) / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 4 and all(p["prompt"].endswith("=") for p in prompts)  # demo GRPO's "a+b=" task
    assert job.study_options["annotators"] == [annotator.pk]


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"checkpoints": "first"}, "checkpoints", "at least two"),
        ({"study_kind": "violation"}, "study_kind", "agent trajectories"),
        ({"prompt_source": "file"}, "prompts_file", "Choose a file"),
        ({"temperature": 0.0, "n": 3}, "n", "identical"),
        ({"temperature": 11}, "temperature", "less than or equal to 10"),
        ({"max_prompts": 0}, "max_prompts", "greater than or equal to 1"),
        ({"model_paths": "/etc"}, "model_paths", "checkpoints of runs you can see"),
        ({"model_paths": "tiny"}, "model_paths", "random model"),
        ({"model_paths": "a/../../b"}, "model_paths", "'..'"),
        ({"study_kind": "rubric"}, "study_kind", "rubric with every prompt"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    researcher: Any, run_with_checkpoints: Any, client_for: Any, extra: dict[str, Any], field: str, message: str
) -> None:
    run = run_with_checkpoints(researcher)
    ids = list(run.checkpoints.values_list("pk", flat=True))
    data = _form_data(checkpoints=ids[:1] if extra.get("checkpoints") == "first" else ids, prompt_run=run.pk)
    data.update({k: v for k, v in extra.items() if k != "checkpoints"})
    if "model_paths" in extra:
        data["checkpoints"] = ids[:1]  # one checkpoint + the path under test
    response = client_for(researcher).post("/samples/new/", data)
    assert response.status_code == 422
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not SampleJob.objects.exists()


def test_checkpoints_of_runs_the_user_cannot_see_are_not_offered(
    researcher: Any, run_with_checkpoints: Any, client_for: Any
) -> None:
    theirs = run_with_checkpoints(UserFactory())
    mine = run_with_checkpoints(researcher)
    ids = list(theirs.checkpoints.values_list("pk", flat=True))
    response = client_for(researcher).post("/samples/new/", _form_data(checkpoints=ids, prompt_run=mine.pk))
    assert response.status_code == 422 and "checkpoints" in response.context["form"].errors
    with pytest.raises(ValidationError, match="cannot see"):
        sampling.create_sample_job(
            owner=researcher,
            name="",
            study_kind="pairwise",
            checkpoints=list(theirs.checkpoints.all()),
            prompts=[{"prompt": "1+1="}],
            prompt_source="file",
            prompt_label="x",
            sampling=sampling.SamplingSettings(),
            options=sampling.StudyOptions(),
        )
    # and another researcher's run (and its prompts) is a 404 from the run page's link
    assert client_for(researcher).get(f"/samples/new/?run={theirs.pk}").status_code == 404


@pytest.mark.parametrize(
    ("second", "says"),
    [
        (b'{"prompt": ""}', "line 2: field 'prompt' is empty"),
        (b'{"prompt": "a\\u0000b"}', "line 2: contains a NUL character"),
        (b'{"prompt": [{"role": "user", "content": "a\\u0000"}]}', "line 2: contains a NUL character"),
        (b'{"prompt": "x", "rubric": ["ok", "a\\u0000"]}', "line 2: contains a NUL character"),
    ],
)
def test_a_prompt_file_names_the_line_at_fault(
    researcher: Any, run_with_checkpoints: Any, client_for: Any, second: bytes, says: str
) -> None:
    run = run_with_checkpoints(researcher)
    ids = list(run.checkpoints.values_list("pk", flat=True))
    bad = SimpleUploadedFile("p.jsonl", b'{"prompt": "ok"}\n' + second + b"\n", content_type="application/jsonl")
    response = client_for(researcher).post(
        "/samples/new/", _form_data(checkpoints=ids, prompt_source="file", prompts_file=bad)
    )
    assert response.status_code == 422
    assert says in " ".join(response.context["form"].errors["prompts_file"])


def test_prompt_sets_from_files_studies_and_runs(
    researcher: Any, make_study: Any, make_run: Any, tmp_path: Path
) -> None:
    rows = prompt_sets.prompts_from_file(
        b'[{"prompt": [{"role": "user", "content": "hi"}]}, {"prompt": "x", "rubric": ["a", "b"]}]'
    )
    assert rows == [{"prompt": [{"role": "user", "content": "hi"}]}, {"prompt": "x", "rubric": ["a", "b"]}]
    with pytest.raises(ValidationError, match="JSON array"):
        prompt_sets.prompts_from_file(b"[{")
    study = make_study(kind="rubric", n_items=2)
    assert prompt_sets.prompts_from_study(study)[0] == {
        "prompt": "Goal 0",
        "rubric": ["States a hypothesis", "Names a control", "Estimates cost"],
    }
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"prompt": "p1", "chosen": "c", "rejected": "r"})
        + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "p2"}], "chosen": "c2", "rejected": "r2"})
        + "\n"
    )
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "held out"}) + "\n")
    run = make_run(researcher, recipe="dpo", config={"dataset_path": str(data)})
    assert prompt_sets.prompts_from_run(run) == [{"prompt": "p1"}, {"prompt": [{"role": "user", "content": "p2"}]}]
    run.config["eval_dataset_path"] = str(held)
    assert prompt_sets.prompts_from_run(run) == [{"prompt": "held out"}]
    # A held-out fraction: the very rows the engine holds out (same pure split), chat prompts kept as messages.
    del run.config["eval_dataset_path"]
    run.config["eval_fraction"] = 0.5
    from training.engine.data import load_dataset, split_held_out

    _, held = split_held_out(load_dataset(str(data), kind="preference"), fraction=0.5, seed=0)
    got = prompt_sets.prompts_from_run(run)
    assert len(got) == len(held) == 1 and got[0]["prompt"] in ("p1", [{"role": "user", "content": "p2"}])
    grpo = make_run(researcher, recipe="demo_grpo", config={"eval_fraction": 0.1})
    from training.engine.demo_tasks import addition_prompts

    _, held = split_held_out(addition_prompts(), fraction=0.1, seed=0)
    assert [r["prompt"] for r in prompt_sets.prompts_from_run(grpo)] == [e.prompt for e in held]
    assert prompt_sets.run_prompt_source(grpo)[0] == "held-out split (0.1 of its data)"
    picked = prompt_sets.choose([{"prompt": str(i)} for i in range(100)], limit=5, seed=3)
    assert len(picked) == 5 and picked == sorted(picked, key=lambda r: int(r["prompt"]))
    assert picked == prompt_sets.choose([{"prompt": str(i)} for i in range(100)], limit=5, seed=3)


def _policies(researcher: Any, run_with_checkpoints: Any) -> list[Policy]:
    run = run_with_checkpoints(researcher, steps=(10, 20, 30))
    return [policy_for_checkpoint(checkpoint=c) for c in run.checkpoints.order_by("step")]


def test_pairwise_items_cover_every_pair_with_sides_from_the_seed(researcher: Any, run_with_checkpoints: Any) -> None:
    p = _policies(researcher, run_with_checkpoints)
    completions = {
        (policy.pk, i, s): sampling.Completion(f"{policy.step}:{i}:{s}", True)
        for policy in p
        for i in range(2)
        for s in range(2)
    }
    completions[(p[0].pk, 1, 1)] = sampling.Completion(completions[(p[1].pk, 1, 1)].text, True)  # one identical pair
    completions[(p[2].pk, 0, 0)] = sampling.Completion("   ", True)  # an empty completion
    prompts = [{"prompt": "a?"}, {"prompt": "b?"}]
    built = sampling.build_items(
        job_id=7,
        kind="pairwise",
        prompts=prompts,
        policies=p,
        completions=completions,
        n=2,
        seed=0,
        skip_identical=True,
    )
    assert len(built.rows) == 2 * 2 * 3 - 1 - 2  # 3 pairs x 2 prompts x 2 samples, less 1 identical, 2 with empty
    assert (built.skipped_identical, built.skipped_empty) == (1, 2)
    for row in built.rows:
        sides = {side: pid for side, pid, _ in built.sources[row["id"]]}
        by_pk = {x.pk: x for x in p}
        assert row["model_a"] == by_pk[sides["a"]].label and row["model_b"] == by_pk[sides["b"]].label
        assert row["response_a"].split(":")[0] == str(by_pk[sides["a"]].step)
    firsts = [{s: pid for s, pid, _ in built.sources[r["id"]]}["a"] for r in built.rows]
    assert len(set(firsts)) == 3  # A is not always the earlier checkpoint
    again = sampling.build_items(
        job_id=7,
        kind="pairwise",
        prompts=prompts,
        policies=p,
        completions=completions,
        n=2,
        seed=0,
        skip_identical=True,
    )
    assert again.rows == built.rows


def test_rating_and_rubric_items(researcher: Any, run_with_checkpoints: Any) -> None:
    p = _policies(researcher, run_with_checkpoints)[:2]
    completions = {(x.pk, 0, 0): sampling.Completion(f"plan by {x.step}", True) for x in p}
    rating = sampling.build_items(
        job_id=1, kind="rating", prompts=[{"prompt": "q"}], policies=p, completions=completions, n=1, seed=0,
        skip_identical=True,
    )  # fmt: skip
    assert [(r["response"], r["model"]) for r in rating.rows] == [(f"plan by {x.step}", x.label) for x in p]
    rubric = sampling.build_items(
        job_id=1,
        kind="rubric",
        prompts=[{"prompt": [{"role": "user", "content": "goal"}], "rubric": ["r1"]}],
        policies=p,
        completions=completions,
        n=1,
        seed=0,
        skip_identical=True,
    )
    (row,) = rubric.rows
    assert row["goal"] == "user: goal" and row["rubric"] == ["r1"] and len(row["plans"]) == 2
    assert {side for side, _, _ in rubric.sources[row["id"]]} == {"plan0", "plan1"}


def _job_with_output(researcher: Any, annotator: Any, policies: list[Policy], n_prompts: int = 3) -> SampleJob:
    prompts = [{"prompt": f"{i}+1="} for i in range(n_prompts)]
    job = sampling.create_sample_job(
        owner=researcher,
        name="early vs late",
        study_kind="pairwise",
        checkpoints=[x.checkpoint for x in policies],
        prompts=prompts,
        prompt_source="file",
        prompt_label="test prompts",
        sampling=sampling.SamplingSettings(n=1, seed=4),
        options=sampling.StudyOptions(annotators=[annotator]),
    )
    rows = [
        {"prompt_index": i, "model": sampling.model_key(x), "sample": 0, "completion": f"{i + 1} says {x.step}",
         "finished": True, "tokens": 3}
        for x in policies for i in range(n_prompts)
    ]  # fmt: skip
    (sampling.sample_set_dir(job.pk) / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return job


def test_finishing_a_job_makes_a_blinded_study_that_remembers_its_sources(
    researcher: Any, annotator: Any, run_with_checkpoints: Any, client_for: Any
) -> None:
    policies = _policies(researcher, run_with_checkpoints)[:2]
    job = _job_with_output(researcher, annotator, policies)
    assert sampling.claim_sample_job(job_id=job.pk, worker="w1") is not None
    assert sampling.claim_sample_job(job_id=job.pk, worker="w2") is None  # a second delivery does nothing
    job = sampling.finish_sample_job(job_id=job.pk, backend="hf", seconds=0.5)
    assert job.status == SampleStatus.DONE and job.study is not None and job.completions_per_s == 12.0
    study = job.study
    assert (study.kind, study.item_count, study.name) == (StudyKind.PAIRWISE, 3, "early vs late")
    assert list(study.annotators.all()) == [annotator]
    for item in Item.objects.filter(study=study):
        sources = {s.side: s.policy for s in ItemSource.objects.filter(item=item)}
        assert item.payload["model_a"] == sources["a"].label and item.payload["model_b"] == sources["b"].label
        assert item.payload["response_a"].endswith(f"says {sources['a'].step}")
    assert sampling.finish_sample_job(job_id=job.pk, backend="hf", seconds=1).study_id == study.pk  # idempotent

    # Blinded: the annotator's page shows the texts, never which checkpoint wrote them.
    page = client_for(annotator).get(f"/annotate/{study.pk}/").content.decode()
    assert "says 10" in page or "says 20" in page
    assert "grpo-demo" not in page and "@ step" not in page

    # Judged: the results name the checkpoints.
    judge(study, annotator, ["a", "b", "a"])
    results = client_for(researcher).get(f"/studies/{study.pk}/results/").content.decode()
    for x in policies:
        assert x.label in results


def test_cancel_progress_and_the_stale_job_sweep(researcher: Any, annotator: Any, run_with_checkpoints: Any) -> None:
    policies = _policies(researcher, run_with_checkpoints)[:2]
    job = _job_with_output(researcher, annotator, policies)
    sampling.claim_sample_job(job_id=job.pk, worker="w")
    assert sampling.record_progress(job_id=job.pk, done=4) is False
    job.refresh_from_db()
    assert (job.done, job.percent) == (4, 66)
    sampling.cancel_sample_job(job=job)
    assert sampling.record_progress(job_id=job.pk, done=5) is True  # the worker's poll sees the cancel
    SampleJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert sampling.mark_stale_sample_jobs() == [job.pk]
    job.refresh_from_db()
    assert job.status == SampleStatus.FAILED and "stopped reporting" in job.error

    queued = _job_with_output(researcher, annotator, policies)
    queued = sampling.cancel_sample_job(job=queued)
    assert queued.status == SampleStatus.CANCELLED
    assert sampling.claim_sample_job(job_id=queued.pk, worker="w") is None
    with pytest.raises(ValidationError, match="already cancelled"):
        sampling.cancel_sample_job(job=queued)


def test_policies_are_shared_by_a_checkpoint_and_the_samples_of_its_step(
    researcher: Any, run_with_checkpoints: Any
) -> None:
    run = run_with_checkpoints(researcher, steps=(10,))
    before = policy_for_run_step(run=run, step=7)
    assert before.checkpoint is None and before.kind == PolicyKind.RUN
    at_checkpoint = policy_for_run_step(run=run, step=10)
    assert at_checkpoint == policy_for_checkpoint(checkpoint=run.checkpoints.get())
    assert policy_for_model(path="org/model") == policy_for_model(path="org/model")


def test_sample_job_pages_are_their_owners(
    researcher: Any, annotator: Any, run_with_checkpoints: Any, client_for: Any
) -> None:
    policies = _policies(researcher, run_with_checkpoints)[:2]
    job = _job_with_output(researcher, annotator, policies)
    page = client_for(researcher).get(f"/samples/{job.pk}/").content.decode()
    assert 'hx-trigger="every 1s"' in page
    assert 'id="job-done">0</strong>' in page and 'id="job-total">6</span>' in page
    assert client_for(UserFactory(role=Role.RESEARCHER)).get(f"/samples/{job.pk}/").status_code == 404
    assert client_for(annotator).get(f"/samples/{job.pk}/").status_code == 403


def test_a_model_path_under_a_run_folder_that_is_no_run_id_is_a_field_error(
    researcher: Any, run_with_checkpoints: Any, client_for: Any, settings: Any
) -> None:
    """ "²" passes str.isdigit() but not int(): the run folder's name is parsed as an id (arbiter.ids), not a 500."""
    run = run_with_checkpoints(researcher)
    path = Path(settings.ARTIFACT_ROOT) / "runs" / "²" / "checkpoint-1"
    data = _form_data(checkpoints=list(run.checkpoints.values_list("pk", flat=True))[:1], prompt_run=run.pk)
    response = client_for(researcher).post("/samples/new/", {**data, "model_paths": str(path)})
    assert response.status_code == 422
    assert "not a folder of a run you can see" in " ".join(response.context["form"].errors["model_paths"])
