"""Real HH-RLHF rows: import → judgments → reward export gives back every transcript byte for byte, in TRL's formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import export, services
from evaluation.models import ExportFormat, ExportJob, Item, RewardStyle

pytestmark = pytest.mark.sqlite

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "hh_rlhf_harmless_base_test_sample.jsonl"
ORIGINAL = [json.loads(line) for line in FIXTURE.open(encoding="utf-8")]


def _judge_alternately(study, annotator) -> list[str]:
    """Judge every item: the file's chosen wins on even items, its rejected on odd ones (whatever side was shown)."""
    wanted = []
    for i in range(study.item_count):
        assignment = services.next_assignment(annotator=annotator, study=study)
        want = "a" if i % 2 == 0 else "b"
        shown = "left" if (want == "a") != assignment.swapped else "right"
        services.submit_judgment(annotator=annotator, assignment_id=assignment.pk, data={"choice": shown})
        wanted.append(want)
    return wanted


def _export(study, researcher, style: str) -> list[dict]:
    job = ExportJob.objects.create(study=study, requested_by=researcher, format=ExportFormat.REWARD, style=style)
    done = export.run_export(export_id=job.pk)
    assert done is not None
    return [json.loads(line) for line in Path(done.path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def judged_study(researcher, annotator, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path
    study = services.create_study(owner=researcher, name="hh", kind="pairwise", annotators=[annotator])
    report = services.import_items(
        study=study, data=FIXTURE.read_bytes(), filename=FIXTURE.name, flag_unsplittable=True
    )
    # 2 empty replies, 4 transcripts that diverge before the end
    assert report.created == len(ORIGINAL) and report.flagged == 6
    return study, _judge_alternately(study, annotator)


def test_standard_export_gives_back_every_transcript_byte_for_byte(judged_study, researcher) -> None:
    study, wanted = judged_study
    rows = _export(study, researcher, RewardStyle.STANDARD)
    assert len(rows) == len(ORIGINAL)
    for row, original, want in zip(rows, ORIGINAL, wanted, strict=True):
        winner, loser = ("chosen", "rejected") if want == "a" else ("rejected", "chosen")
        assert row["prompt"] + row["chosen"] == original[winner]
        assert row["prompt"] + row["rejected"] == original[loser]


def test_standard_export_is_trls_standard_preference_format(judged_study, researcher) -> None:
    study, _ = judged_study
    for row in _export(study, researcher, RewardStyle.STANDARD):
        assert set(row) == {"prompt", "chosen", "rejected"} and all(isinstance(v, str) for v in row.values())
        # TRL's standard preference row: the prompt ends with the generation prompt, completions keep their space.
        assert row["prompt"].endswith("\n\nAssistant:")
        assert row["chosen"].startswith(" ") and row["rejected"].startswith(" ")


def test_conversational_export_gives_back_every_turn(judged_study, researcher) -> None:
    from evaluation.conversations import parse_hh

    study, wanted = judged_study
    rows = _export(study, researcher, RewardStyle.CONVERSATIONAL)
    for row, original, want in zip(rows, ORIGINAL, wanted, strict=True):
        winner = "chosen" if want == "a" else "rejected"
        assert row["prompt"] + row["chosen"] == parse_hh(original[winner])[1]
        assert all(set(t) == {"role", "content"} for t in row["prompt"] + row["chosen"] + row["rejected"])
        assert row["chosen"][0]["role"] == "assistant" and row["prompt"][-1]["role"] == "user"


def test_auto_style_is_conversational_for_conversations(judged_study, researcher) -> None:
    study, _ = judged_study
    assert isinstance(_export(study, researcher, RewardStyle.AUTO)[0]["prompt"], list)


def test_prompt_shown_to_annotators_never_ends_inside_a_reply(judged_study) -> None:
    study, _ = judged_study
    for item in Item.objects.filter(study=study):
        prompt = item.payload["prompt"]
        assert isinstance(prompt, list) and prompt[-1]["role"] == "user"
