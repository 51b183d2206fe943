"""Conversations split by turns, never by characters, and written back byte for byte (real HH-RLHF rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import conversations
from evaluation.conversations import SplitError, parse_hh, split_hh, split_plain, standard_strings

pytestmark = pytest.mark.sqlite  # no database: runs in both suites

DATA = Path(__file__).parent / "data"
HH_ROWS = [json.loads(line) for line in (DATA / "hh_rlhf_harmless_base_test_sample.jsonl").open(encoding="utf-8")]
EMPTY_REPLY = 7  # source line 87: the chosen transcript ends "Assistant: " with nothing after it
DIVERGED = 10  # source line 1255: chosen has an extra Human/Assistant exchange inside its last reply


def _split(row: dict[str, str], *, flag: bool = False) -> conversations.Split:
    return split_hh(row["chosen"], row["rejected"], flag=flag)


def test_replies_that_start_with_the_same_word_keep_it() -> None:
    # Source line 10: both replies start "I’m"; a character-prefix cut put "I’m " into the prompt.
    row = HH_ROWS[3]
    split = _split(row)
    assert isinstance(split.a, str) and isinstance(split.b, str)
    assert split.a.startswith("I’m not sure") and split.b.startswith("I’m sorry")
    assert split.prompt[-1] == {"role": "user", "content": split.prompt[-1]["content"]}
    prompt, chosen, rejected = standard_strings(split.payload_fields())
    assert prompt.endswith("\n\nAssistant:") and chosen.startswith(" I’m") and rejected.startswith(" I’m")


def test_every_real_row_round_trips_byte_for_byte() -> None:
    for i, row in enumerate(HH_ROWS):
        payload = _split(row, flag=True).payload_fields()
        prompt, chosen, rejected = standard_strings(payload)
        assert prompt + chosen == row["chosen"], i
        assert prompt + rejected == row["rejected"], i
        turns, chosen_turns, rejected_turns = conversations.conversational(payload)
        assert turns + chosen_turns == parse_hh(row["chosen"])[1], i
        assert turns + rejected_turns == parse_hh(row["rejected"])[1], i


def test_prompt_is_every_turn_before_the_final_assistant_turn() -> None:
    row = HH_ROWS[0]
    split = _split(row)
    _, turns = parse_hh(row["chosen"])
    assert split.prompt == turns[:-1] and split.a == turns[-1]["content"]
    assert [t["role"] for t in split.prompt] == ["user", "assistant"] * (len(turns) // 2 - 1) + ["user"]


def test_human_marker_inside_a_reply_is_text() -> None:
    # Source line 30: the final reply itself begins "Human: No, you are racist…" (not after a blank line).
    split = _split(HH_ROWS[6])
    assert isinstance(split.a, str) and split.a.startswith("Human: No, you are racist")


def test_empty_final_reply_is_an_error_naming_the_field() -> None:
    with pytest.raises(SplitError) as info:
        _split(HH_ROWS[EMPTY_REPLY])
    assert info.value.field == "chosen" and "empty" in info.value.message


def test_empty_final_reply_imports_flagged_when_asked() -> None:
    split = _split(HH_ROWS[EMPTY_REPLY], flag=True)
    assert split.flags == ["empty_reply_a"] and split.a == ""


def test_transcripts_that_differ_before_the_last_turn_are_refused() -> None:
    with pytest.raises(SplitError) as info:
        _split(HH_ROWS[DIVERGED])
    assert info.value.field == "rejected" and "before the final assistant turn" in info.value.message


def test_diverging_transcripts_keep_each_sides_turns_when_flagged() -> None:
    row = HH_ROWS[DIVERGED]
    split = _split(row, flag=True)
    assert split.flags == ["diverged"]
    assert isinstance(split.a, list) and isinstance(split.b, list)
    assert split.a[0]["role"] == "assistant" and len(split.a) > len(split.b)
    prompt, chosen, _ = standard_strings(split.payload_fields())
    assert prompt + chosen == row["chosen"]


def test_identical_sides_refused_or_flagged() -> None:
    transcript = "\n\nHuman: hi\n\nAssistant: hello"
    with pytest.raises(SplitError, match="identical"):
        split_hh(transcript, transcript, flag=False)
    assert split_hh(transcript, transcript, flag=True).flags == ["identical"]


def test_plain_strings_split_at_a_word_with_the_space_on_the_completion() -> None:
    # TRL's documented example: {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    split = split_plain("The sky is blue.", "The sky is green.", flag=False)
    assert (split.prompt, split.a, split.b) == ("The sky is", " blue.", " green.")
    # Never part of a word: "I" is shared, "I'm" and "I would" are not the same word.
    split = split_plain("Answer: I'm sure.", "Answer: I would not.", flag=False)
    assert (split.prompt, split.a, split.b) == ("Answer:", " I'm sure.", " I would not.")


def test_plain_strings_with_nothing_shared_are_refused() -> None:
    with pytest.raises(SplitError, match="shares no prompt"):
        split_plain("Yes", "No", flag=False)


def test_trl_conversational_implicit_prompt() -> None:
    user = {"role": "user", "content": "What color is the sky?"}
    split = conversations.split_turns(
        [user, {"role": "assistant", "content": "It is blue."}],
        [user, {"role": "assistant", "content": "It is green."}],
        source="messages",
        flag=False,
    )
    prompt, chosen, rejected = conversations.conversational(split.payload_fields())
    assert prompt == [user]
    assert chosen == [{"role": "assistant", "content": "It is blue."}]
    assert rejected == [{"role": "assistant", "content": "It is green."}]


def test_explicit_prompt_with_hh_markers_is_split_by_turns() -> None:
    split = conversations.split_explicit(
        "\n\nHuman: Tell me a joke.\n\nAssistant:", " Why did the chicken…", " No.", flag=False
    )
    assert split.source == "hh" and split.prompt == [{"role": "user", "content": "Tell me a joke."}]
    expected = ("\n\nHuman: Tell me a joke.\n\nAssistant:", " Why did the chicken…", " No.")
    assert standard_strings(split.payload_fields()) == expected


def test_noncanonical_spacing_is_kept_exactly() -> None:
    chosen = "\n\nHuman:hi\n\nAssistant:  yes"
    rejected = "\n\nHuman:hi\n\nAssistant:no"
    split = split_hh(chosen, rejected, flag=False)
    prompt, a, b = standard_strings(split.payload_fields())
    assert (prompt + a, prompt + b) == (chosen, rejected)
