"""The HF rollout backend, backend selection, the verifiers, model rewards and their weighted combination."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.engine.batching import encode_prompt, token_logprobs
from training.engine.checkpoints import save_model_folder
from training.engine.config import GRPOConfig, SFTConfig
from training.engine.data import PromptExample
from training.engine.modeling import load_causal_lm, load_sequence_classifier, train_char_tokenizer
from training.engine.rewards import CombinedReward
from training.engine.rewards.models import RewardModelReward, RubricJudge
from training.engine.rewards.registry import build_reward
from training.engine.rewards.verifiers import exact_match, make_format, make_regex, numeric_answer
from training.engine.rollout import choose_backend
from training.engine.rollout.hf import HFRollout

CPU = torch.device("cpu")
TINY = SFTConfig(tiny_hidden_size=32, tiny_num_layers=1, tiny_num_heads=2)


def tiny_policy() -> tuple[torch.nn.Module, object]:
    tokenizer = train_char_tokenizer(["0123456789+= abcdefghijklmnopqrstuvwxyz?:\n."])
    return load_causal_lm("tiny", config=TINY, tokenizer=tokenizer, seed=0, device=CPU), tokenizer


def test_hf_rollout_shapes_masks_and_logprobs() -> None:
    model, tokenizer = tiny_policy()
    backend = HFRollout(model, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    prompts = [encode_prompt(tokenizer, "1+2="), encode_prompt(tokenizer, "12+30=")]
    torch.manual_seed(0)
    out = backend.generate(prompts, n=3, max_new_tokens=5, return_logprobs=True)
    assert out.completion_ids.shape[0] == 6
    assert out.completion_ids.shape[1] <= 5
    lengths = out.completion_mask.sum(1)
    for row, length, finished in zip(out.completion_ids, lengths, out.finished, strict=True):
        assert (row[int(length) :] == tokenizer.pad_token_id).all()
        assert bool(finished) == (int(row[int(length) - 1]) == tokenizer.eos_token_id)
    # the sampling log-probs equal the model's own scores of those tokens (one row, no padding involved)
    assert out.logprobs is not None
    ids = torch.tensor([prompts[0] + out.completion_ids[0, : int(lengths[0])].tolist()])
    logits = model(input_ids=ids).logits[:, len(prompts[0]) - 1 : -1]
    expected = token_logprobs(logits, ids[:, len(prompts[0]) :])
    assert torch.allclose(out.logprobs[0, : int(lengths[0])], expected[0], atol=1e-4)


def test_backend_selection_falls_back_to_hf_without_gpu_or_vllm() -> None:
    assert choose_backend("auto") == "hf"
    assert choose_backend("hf") == "hf"
    with pytest.raises(RuntimeError, match="needs a CUDA GPU and the vllm package"):
        choose_backend("vllm")


EXAMPLES = [PromptExample("1+1=", "2"), PromptExample("2+2=", "4"), PromptExample("x", "4.0")]


def test_verifiers() -> None:
    assert exact_match(["2", " 5", "<answer>4.0</answer>"], EXAMPLES) == [1.0, 0.0, 1.0]
    assert numeric_answer(["so 2", "4!", "4"], EXAMPLES) == [1.0, 1.0, 1.0]
    assert numeric_answer(["two", "5", ""], EXAMPLES) == [0.0, 0.0, 0.0]
    assert make_regex(r"\d+")(["12", "1a", "7"], EXAMPLES) == [1.0, 0.0, 1.0]
    fmt = make_format()
    assert fmt(["<think>a</think><answer>2</answer>", "2", "<answer>2</answer>"], EXAMPLES) == [1.0, 0.0, 0.0]


def test_combined_reward_weights_each_function() -> None:
    combined = CombinedReward([("exact_match", exact_match), ("regex", make_regex(r"\d"))], [2.0, 0.5])
    out = combined(["2", "x", "4"], EXAMPLES)
    assert out.total.tolist() == [2.5, 0.0, 0.5]
    assert out.per_func["regex"].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="2 reward weights given for 1"):
        CombinedReward([("exact_match", exact_match)], [1.0, 2.0])


def test_build_reward_from_config_names() -> None:
    reward = build_reward(GRPOConfig(reward_funcs=["numeric_answer", "format"], reward_weights=[1.0, 0.1]), device=CPU)
    assert [name for name, _ in reward.funcs] == ["numeric_answer", "format"]
    with pytest.raises(ValueError, match="reward_model_path is empty"):
        build_reward(GRPOConfig(reward_funcs=["reward_model"]), device=CPU)


def test_reward_model_checkpoint_scores_like_its_head(tmp_path: Path) -> None:
    tokenizer = train_char_tokenizer(["0123456789+="])
    model = load_sequence_classifier("tiny", config=TINY, tokenizer=tokenizer, seed=0, device=CPU)
    save_model_folder(tmp_path / "rm", model=model, tokenizer=tokenizer)
    reward = RewardModelReward(str(tmp_path / "rm"), device=CPU)
    scores = reward(["2", "33"], EXAMPLES[:2])
    ids = torch.tensor([encode_prompt(tokenizer, "1+1=2")])
    assert scores[0] == pytest.approx(model(input_ids=ids).logits[0, 0].item(), abs=1e-5)
    assert len(scores) == 2


def test_rubric_judge_reward_is_fraction_of_items_judged_yes(tmp_path: Path) -> None:
    model, tokenizer = tiny_policy()
    save_model_folder(tmp_path / "judge", model=model, tokenizer=tokenizer)
    judge = RubricJudge(str(tmp_path / "judge"), device=CPU)
    items = ("is short", "uses digits", "ends with a dot")
    verdicts = judge.satisfied("1+1=", "2", items)
    assert len(verdicts) == 3
    example = PromptExample("1+1=", "2", items)
    scores = judge(["2"], [example])
    assert scores == [sum(verdicts) / 3]
    # the verdict is the comparison of the judge's next-token logits for "yes" and "no"
    query = "Task: 1+1=\nResponse: 2\nDoes the response satisfy: is short? Answer yes or no.\nAnswer:"
    logits = judge.model(input_ids=torch.tensor([encode_prompt(judge.tokenizer, query)])).logits[0, -1]
    assert verdicts[0] == bool(logits[judge.yes_id] > logits[judge.no_id])
    assert judge(["2"], [PromptExample("1+1=", "2")]) == [0.0]
