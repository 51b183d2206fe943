"""The vLLM path's parts that need no GPU: TRL's importance weight, per-step seeds, context length, config refusals,
the sleep/wake/sync order (on a stand-in engine: vllm itself cannot run here), and the correction in a GRPO step."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig

from training.engine.config import GRPOConfig
from training.engine.losses import vllm_importance_sampling_ratio
from training.engine.recipes import build_recipe
from training.engine.recipes.grpo import GRPORecipe
from training.engine.rollout import rollout_seed
from training.engine.rollout.vllm import VLLMRollout, cap_max_model_len, model_max_positions, prompt_seeds

MODES = ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def trl_importance_sampling_ratio(
    old_per_token_logps: torch.Tensor,
    sampling_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> torch.Tensor:
    """TRL's lines, transcribed: huggingface/trl trl/trainer/grpo_trainer.py at f2cd577 (2026-07-24), lines
    2579-2621 of _generate_and_score_completions (the same in the installed TRL 1.16, checked below)."""
    per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask
    sequence_level_is = mode in ["sequence_mask", "sequence_truncate"]
    if sequence_level_is:
        per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
        logps_diff = per_sequence_logps_diff
    else:
        logps_diff = per_token_logps_diff
    vllm_importance_sampling_ratio = torch.exp(logps_diff)
    if mode in ["sequence_truncate", "token_truncate"]:
        vllm_importance_sampling_ratio = torch.clamp(vllm_importance_sampling_ratio, min=clip_min, max=clip_max)
    elif mode in ["sequence_mask", "token_mask"]:
        min_val = clip_min if clip_min is not None else -math.inf
        max_val = clip_max if clip_max is not None else math.inf
        invalid_mis_mask = (vllm_importance_sampling_ratio < min_val) | (vllm_importance_sampling_ratio > max_val)
        vllm_importance_sampling_ratio = vllm_importance_sampling_ratio.masked_fill(invalid_mis_mask, value=0.0)
    return vllm_importance_sampling_ratio


def test_the_installed_trl_computes_the_weight_with_these_lines() -> None:
    from trl import GRPOTrainer

    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    for line in (
        "per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask",
        "per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)",
        "vllm_importance_sampling_ratio = torch.exp(logps_diff)",
        "invalid_mis_mask, value=0.0",
    ):
        assert line in source


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("clip_min", "clip_max"), [(None, 3.0), (0.5, 2.0), (None, None), (0.8, None)])
def test_importance_weight_equals_trl_on_fixed_tensors(
    mode: str, clip_min: float | None, clip_max: float | None
) -> None:
    if clip_min is None and clip_max is None and mode.endswith("_truncate"):
        pytest.skip("refused by the config (a clamp with no bound; torch.clamp raises, in TRL too)")
    generator = torch.Generator().manual_seed(7)
    old = -torch.rand(6, 9, generator=generator) * 3
    sampling = old + torch.randn(6, 9, generator=generator) * 1.5  # ratios well past the bounds either way
    mask = (torch.rand(6, 9, generator=generator) > 0.2).float()
    mask[2] = 0.0  # a completion with no tokens
    sampling[0] = old[0] - 2.0  # a completion vLLM found far less likely: ratios e^2 per token, above every bound
    ours = vllm_importance_sampling_ratio(old, sampling, mask, mode=mode, clip_min=clip_min, clip_max=clip_max)
    theirs = trl_importance_sampling_ratio(old, sampling, mask, mode, clip_min, clip_max)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert ours.shape == ((6, 1) if mode.startswith("sequence_") else (6, 9))
    if clip_max is not None and mode.endswith("_truncate"):
        assert float(ours.max()) <= clip_max
    if mode.endswith("_mask") and clip_max is not None:
        assert bool((ours == 0).any())  # some ratio was above the bound and is masked


def test_prompt_seeds_give_every_completion_its_own_seed_whatever_the_ranks() -> None:
    n, total = 4, 6
    one = prompt_seeds(1234, 0, total, n=n)
    two = prompt_seeds(1234, 0, 3, n=n) + prompt_seeds(1234, 3, 3, n=n)
    assert one == two  # rank 1's prompts 3..5 get the seeds one process gives them
    children = [seed + j for seed in one for j in range(n)]  # vLLM: child j of a request gets seed + j
    assert len(set(children)) == total * n


def test_rollout_seed_is_a_pure_function_of_run_seed_and_batch() -> None:
    assert rollout_seed(3, 5) == rollout_seed(3, 5)
    assert len({rollout_seed(3, i) for i in range(1, 50)}) == 49
    assert rollout_seed(3, 5) != rollout_seed(4, 5)


def test_context_length_defaults_to_the_need_capped_at_the_model() -> None:
    assert cap_max_model_len(0, needed=640, model_max_positions=2048) == 640
    assert cap_max_model_len(0, needed=4096, model_max_positions=2048) == 2048
    assert cap_max_model_len(1024, needed=640, model_max_positions=2048) == 1024
    assert cap_max_model_len(0, needed=640, model_max_positions=None) == 640
    with pytest.raises(ValueError, match="vllm_max_model_len=4096 exceeds the model's max_position_embeddings=2048"):
        cap_max_model_len(4096, needed=640, model_max_positions=2048)


def test_model_positions_are_read_from_the_model_folder(tmp_path: Path) -> None:
    LlamaConfig(max_position_embeddings=777, hidden_size=16, num_attention_heads=2).save_pretrained(tmp_path)
    assert model_max_positions(str(tmp_path)) == 777


def test_config_refuses_crossed_importance_bounds_on_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        GRPOConfig(vllm_importance_sampling_clip_min=4.0, vllm_importance_sampling_clip_max=3.0)
    assert error.value.errors()[0]["loc"] == ("vllm_importance_sampling_clip_min",)


def test_config_refuses_truncation_without_a_bound() -> None:
    with pytest.raises(ValidationError) as error:
        GRPOConfig(vllm_importance_sampling_clip_max=None)
    assert error.value.errors()[0]["loc"] == ("vllm_importance_sampling_clip_max",)
    GRPOConfig(vllm_importance_sampling_clip_max=None, vllm_importance_sampling_mode="token_mask")


def test_config_refuses_importance_sampling_with_gtpo_on_vllm() -> None:
    gtpo = {"variant": "gtpo", "scale_rewards": "none", "rollout_backend": "vllm"}
    with pytest.raises(ValidationError) as error:
        GRPOConfig(**gtpo)
    assert error.value.errors()[0]["loc"] == ("vllm_importance_sampling_correction",)
    GRPOConfig(**gtpo, vllm_importance_sampling_correction=False)


class StandInEngine:
    """Records the calls VLLMRollout makes on ``vllm.LLM`` (vllm needs a GPU; this is only its call surface)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        model = SimpleNamespace(load_weights=lambda weights: self.calls.append(("load", [n for n, _ in weights])))
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=model))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))

    def sleep(self, level: int) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str]) -> None:
        self.calls.append(("wake_up", tags))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache", None))


def test_sleep_mode_wakes_the_weights_to_load_them_then_resets_the_cache() -> None:
    engine = StandInEngine()
    rollout = VLLMRollout(
        "unused",
        pad_token_id=0,
        gpu_memory_utilization=0.3,
        max_model_len=64,
        seed=0,
        enable_sleep_mode=True,
        llm=engine,
    )
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    rollout.sync_weights(model)
    rollout.sync_weights(model)  # already awake: no second wake-up
    assert engine.calls == [
        ("sleep", 1),
        ("wake_up", ["weights"]),
        ("load", ["0.weight", "0.bias"]),
        ("reset_prefix_cache", None),
        ("load", ["0.weight", "0.bias"]),
        ("reset_prefix_cache", None),
    ]
    assert rollout.asleep == {"kv_cache"}  # the KV cache wakes when sampling starts, and all sleeps after it


@pytest.fixture
def is_recipe(context_factory: Any) -> GRPORecipe:
    """A GRPO recipe whose sampler returns its log-probs, with the correction on: the HF sampler stands in for
    vLLM (its log-probs are the trainer's own, so the weight must come out 1)."""
    ctx, _ = context_factory(
        "grpo",
        {
            "batch_size": 2,
            "num_generations": 4,
            "max_new_tokens": 6,
            "reward_funcs": ["regex"],
            "reward_regex": "(?s).*[0-4].*",
        },
    )
    recipe = build_recipe(ctx)
    assert isinstance(recipe, GRPORecipe)
    recipe.importance_sampling = True
    recipe.zero_advantage_shortcut = False
    return recipe


def test_a_step_with_the_correction_logs_trl_sampling_metrics(is_recipe: GRPORecipe) -> None:
    metrics = is_recipe.train_step(1)
    assert metrics["sampling/sampling_logp_difference/max"] < 1e-4
    assert metrics["sampling/importance_sampling_ratio/mean"] == pytest.approx(1.0, abs=1e-4)


def test_the_correction_scales_the_loss_by_the_truncated_weight(is_recipe: GRPORecipe) -> None:
    batch = is_recipe._generate(1)
    assert batch.sampling_logps is not None
    assert bool((batch.advantages != 0).any())
    plain = float(is_recipe._policy_step(batch)["loss"])
    is_recipe.model.zero_grad()
    # vLLM's log-prob of every token log 2 above the trainer's: the token weight is 1/2 (TIS, below C_max).
    batch.sampling_logps = batch.sampling_logps + math.log(2.0)
    halved = float(is_recipe._policy_step(batch)["loss"])
    assert halved == pytest.approx(plain / 2, rel=1e-5)
    # log 5 below: the weight 5 is truncated at C_max = 3.
    batch.sampling_logps = batch.sampling_logps - math.log(2.0) - math.log(5.0)
    capped = float(is_recipe._policy_step(batch)["loss"])
    assert capped == pytest.approx(plain * 3, rel=1e-5)
