"""Training data is never silently destroyed: TRL-style truncation, counted, and mostly unusable data refused early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.engine.batching import IGNORE, encode_supervised, pad_rows
from training.engine.modeling import train_char_tokenizer
from training.engine.pairs import encode_preferences
from training.engine.recipes import build_recipe
from training.engine.recipes.base import run_training
from training.engine.spec import RunSpec
from training.engine.truncation import Truncation, UnusableDataError, check_usable, cut

ROOT = Path(__file__).resolve().parents[2]
BOS = 1


def test_prompt_is_cut_from_the_left_completion_from_the_right_then_the_cap() -> None:
    prompt, completion = [BOS, 10, 11, 12, 13, 14], [20, 21, 22, 23, 2]
    # The prompt keeps its end (and BOS), the completion its start.
    c = cut(prompt, completion, Truncation(max_length=100, max_prompt_length=3, max_completion_length=2), bos=BOS)
    assert c.ids == (BOS, 13, 14, 20, 21)
    assert (c.prompt_len, c.prompt_cut, c.completion_cut) == (3, True, True)
    # max_length then cuts from the end: the completion loses its tail, never the whole of it.
    c = cut(prompt, completion, Truncation(max_length=5, max_prompt_length=3), bos=BOS)
    assert c.ids == (BOS, 13, 14, 20, 21)
    assert c.completion_len == 2
    # Nothing to cut: nothing is marked.
    c = cut([BOS, 10], [20, 2], Truncation(max_length=8, max_prompt_length=4), bos=BOS)
    assert (c.ids, c.prompt_cut, c.completion_cut) == ((BOS, 10, 20, 2), False, False)


def test_plain_keep_start_cap_loses_completions_and_is_counted() -> None:
    """Without a prompt limit a long prompt fills max_length: the example is counted and left out, not trained."""
    tokenizer = train_char_tokenizer(["abcdefghij xyz"])
    rows, report = encode_supervised(tokenizer, [("abcdefghij", "xyz"), ("ab", "xyz")], Truncation(max_length=8))
    assert rows[0] is None and rows[1] is not None
    assert (report.examples, report.truncated, report.no_completion, report.usable) == (2, 1, 1, 1)
    batch = pad_rows([r for r in rows if r is not None], pad_id=0)
    # BOS + "ab" are prompt, "xyz" + EOS the labelled completion
    assert batch.labels[0].tolist() == [IGNORE, IGNORE, IGNORE, *batch.input_ids[0, 3:].tolist()]


def hh_pairs(n_long: int = 13, n_short: int = 5) -> list[dict[str, str]]:
    """HH-RLHF-shaped pairs: multi-turn prompts, most longer than 128 characters, then two answers that differ
    from their first word (the chosen one helpful, the rejected one a refusal)."""
    topics = ["bread", "a bike", "tomatoes", "a resume", "sleep", "a fever", "a kite", "rice", "a tie",
              "a budget", "stretching", "a garden", "tea", "a cold", "knots", "paint", "a tent", "soup"]  # fmt: skip
    rows = []
    for i, topic in enumerate(topics[: n_long + n_short]):
        if i < n_long:
            prompt = (
                f"\n\nHuman: I have been trying to figure out {topic} for weeks and nothing I read makes sense.\n\n"
                f"Assistant: I can help. What have you tried so far?\n\nHuman: Just tell me about {topic}.\n\n"
                "Assistant:"
            )
        else:
            prompt = f"\n\nHuman: Tell me about {topic}.\n\nAssistant:"
        rows.append(
            {
                "prompt": prompt,
                "chosen": f" Sure, here is how {topic} works, step by step.",
                "rejected": f" No. I will not talk about {topic}.",
            }
        )
    return rows


def test_hh_pairs_with_long_prompts_keep_their_completions() -> None:
    """The regression seen in the product: with the old cut, (prompt + completion)[:128] emptied 13 of 18 pairs,
    which then compared identical prompts; with TRL's limits every pair keeps both answers."""
    rows = hh_pairs()
    assert sum(len(r["prompt"]) > 128 for r in rows) == 13
    triples = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    tokenizer = train_char_tokenizer([t for r in rows for t in r.values()])

    old = Truncation(max_length=128)
    _, report = encode_preferences(tokenizer, triples, old)
    assert report.no_completion == 13
    with pytest.raises(UnusableDataError, match="13 of 18 examples are unusable"):
        check_usable(report, old)

    new = Truncation(max_length=128, max_prompt_length=64)
    encoded, report = encode_preferences(tokenizer, triples, new)
    assert report.usable == 18
    assert report.prompt_truncated == 13  # the long prompts lose their start, the short ones nothing
    assert report.no_completion == report.identical_pairs == 0
    for pair in encoded:
        assert pair is not None
        assert pair.chosen.tolist() != pair.rejected.tolist()
        assert min(pair.chosen.numel(), pair.rejected.numel()) > 10  # the answers are there, not a token of each


def test_dpo_on_hh_pairs_learns_with_the_default_limits(
    tmp_path: Path, context_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """DPO with the launch form's defaults (max_length 128) on those 18 pairs: the implicit reward now
    separates chosen from rejected (under the old cut rewards/accuracies sat at chance for 200 steps)."""
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in hh_pairs()) + "\n")
    ctx, reporter = context_factory(
        "dpo", {"dataset_path": str(data), "max_steps": 24, "batch_size": 6, "learning_rate": 1e-3, "save_steps": 100}
    )
    run_training(build_recipe(ctx))
    log = capsys.readouterr().out
    assert "truncation: 13 of 18 examples truncated (13 prompts, 0 completions); 0 lost every completion token" in log
    accuracies = reporter.series("rewards/accuracies")
    assert sum(accuracies[-6:]) / 6 >= 0.9
    assert reporter.series("rewards/margins")[-1] > 0


def test_a_run_on_mostly_unusable_data_fails_before_its_first_step(tmp_path: Path) -> None:
    """One completion token each (the shared leading space) makes every pair identical: the engine says so and
    exits 1 without a traceback, before any step."""
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in hh_pairs()) + "\n")
    spec = RunSpec(
        recipe="dpo",
        config={"dataset_path": str(data), "max_completion_length": 1, "max_steps": 5, "tiny_num_layers": 1},
        output_dir=str(tmp_path / "out"),
        run_id=3,
    )
    spec.dump(tmp_path / "spec.json")
    env = {**os.environ, "ARBITER_RUN_TOKEN": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "training.engine", str(tmp_path / "spec.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "data error: 18 of 18 examples are unusable after truncation" in proc.stderr
    assert "18 pairs became identical" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "step 1/" not in proc.stdout
