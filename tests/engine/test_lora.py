"""LoRA through peft: only adapters train, checkpoints are PEFT folders that load (for resume, sampling and
reward scoring), and the reference model is the base with adapters switched off, not a second copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from training.engine.adapters import AdapterDisabled, adapter_base, is_adapter_folder, load_merged
from training.engine.batching import encode_prompt
from training.engine.config import GRPOConfig, SFTConfig
from training.engine.data import PromptExample
from training.engine.distributed import DistInfo
from training.engine.recipes import build_recipe
from training.engine.recipes.base import Recipe, RunContext, run_training, seed_step
from training.engine.recipes.grpo import GRPORecipe
from training.engine.rewards.models import RewardModelReward
from training.engine.sampling import load_sampler_model
from training.engine.spec import RunSpec

from .conftest import TINY

LORA = {"finetuning": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "sample_table_steps": 0}


def trained_names(recipe: Recipe) -> list[str]:
    return [n for n, p in recipe.model.named_parameters() if p.requires_grad]


def test_lora_sft_trains_only_adapters_and_saves_a_peft_folder_that_loads(context_factory: Any) -> None:
    ctx, reporter = context_factory("sft", {**LORA, "max_steps": 4, "save_steps": 2, "learning_rate": 1e-2})
    recipe = build_recipe(ctx)
    names = trained_names(recipe)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    frozen_before = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if not p.requires_grad}
    final = run_training(recipe)
    assert final is not None
    for name, param in recipe.model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), name  # the base never moves
    lora_b = [p for n, p in recipe.model.named_parameters() if ".lora_B." in n]
    assert all(float(p.abs().sum()) > 0 for p in lora_b)  # lora_B starts at zero: it trained
    assert reporter.series("loss")[-1] < reporter.series("loss")[0]

    for folder in (ctx.output_dir / "checkpoint-2", final):
        files = {p.name for p in folder.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
        assert "model.safetensors" not in files  # adapters only, not a copy of the base
    assert is_adapter_folder(final)
    assert adapter_base(final) == str(ctx.output_dir / "base")
    saved = load_file(str(final / "adapter_model.safetensors"))
    assert saved and all("lora_" in key for key in saved)

    # peft itself loads the folder onto the base, and the merged model computes what the trained one did.
    ids = recipe.rows[0].ids[None, :]
    with torch.no_grad():
        expected = recipe.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(adapter_base(final))
        assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-4)
        loaded = PeftModel.from_pretrained(base, str(final))
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
        merged = load_merged(final, head="causal_lm")
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
        # What "Sample into a study" loads for a LoRA checkpoint: the same weights, merged.
        sampler, _ = load_sampler_model(str(final), device=torch.device("cpu"))
        torch.testing.assert_close(sampler(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_lora_resume_continues_the_same_adapters(context_factory: Any) -> None:
    config = {**LORA, "max_steps": 4, "save_steps": 2, "learning_rate": 1e-2}
    whole_ctx, _ = context_factory("sft", config, out="whole")
    whole = build_recipe(whole_ctx)
    run_training(whole)
    part_ctx, _ = context_factory("sft", {**config, "max_steps": 2}, out="part")
    run_training(build_recipe(part_ctx))
    resumed_ctx, _ = context_factory(
        "sft", config, out="resumed", resume_from=str(part_ctx.output_dir / "checkpoint-2")
    )
    resumed = build_recipe(resumed_ctx)
    assert trained_names(resumed) == trained_names(whole)
    run_training(resumed)
    expected = dict(whole.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=0, atol=0, msg=name)


def test_lora_dpo_reference_is_the_base_with_adapters_disabled(context_factory: Any) -> None:
    ctx, reporter = context_factory("dpo", {**LORA, "max_steps": 5, "learning_rate": 1e-2, "save_steps": 100})
    recipe = build_recipe(ctx)
    assert isinstance(recipe.ref, AdapterDisabled)
    assert list(recipe.ref.parameters()) == []  # a view of the policy: no second copy of the weights
    run_training(recipe)
    assert reporter.series("loss")[0] == pytest.approx(0.6931, abs=1e-4)  # policy == reference at the start
    assert reporter.series("rewards/margins")[-1] > 0
    ids = recipe.pairs[0].rows()[0].ids[None, :]
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(ctx.output_dir / "base")(input_ids=ids).logits
        policy = recipe.model(input_ids=ids).logits
        reference = recipe.ref(input_ids=ids).logits
    torch.testing.assert_close(reference, base, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(policy, base, atol=1e-4)  # the adapters moved the policy, not its reference
    assert recipe.model.training  # the reference call left the policy in train mode


def test_lora_grpo_kl_reference_is_the_base_with_adapters_disabled(context_factory: Any) -> None:
    config = {
        **LORA,
        "batch_size": 4,
        "num_generations": 4,
        "max_new_tokens": 3,
        "max_length": 16,
        "beta": 0.1,
        "learning_rate": 5e-2,
        "reward_funcs": ["regex"],
        "reward_regex": "[0-9].*",
        "max_steps": 3,
    }
    ctx, _ = context_factory("grpo", config)
    recipe = build_recipe(ctx)
    assert isinstance(recipe, GRPORecipe)
    assert isinstance(recipe.ref, AdapterDisabled)
    kls = []
    for step in (1, 2, 3):
        seed_step(0, step)
        metrics = recipe.train_step(step)
        torch.optim.SGD([p for p in recipe.model.parameters() if p.requires_grad], lr=5.0).step()
        recipe.model.zero_grad(set_to_none=True)
        kls.append(metrics["kl"])
    assert kls[0] == pytest.approx(0.0, abs=1e-7)  # lora_B = 0: the policy starts as its reference
    assert kls[-1] > 1e-6  # the adapters moved the policy away from the base; the reference stayed


def test_lora_reward_model_trains_its_score_head_and_scores_from_the_folder(context_factory: Any) -> None:
    ctx, reporter = context_factory("reward_model", {**LORA, "max_steps": 6, "learning_rate": 1e-2})
    recipe = build_recipe(ctx)
    names = trained_names(recipe)
    assert any(".score." in n for n in names)  # the head is trained in full (modules_to_save)
    assert all(".lora_" in n or ".score." in n for n in names)
    final = run_training(recipe)
    assert final is not None
    assert reporter.series("accuracy")[-1] > 0.5
    # GRPO's reward_model reward loads the LoRA checkpoint: its scores are the trained model's.
    reward = RewardModelReward(str(final), device=torch.device("cpu"))
    pair = recipe.examples[0]
    scores = reward([pair.chosen], [PromptExample(pair.prompt)])
    tokens = torch.tensor([encode_prompt(recipe.tokenizer, pair.prompt + pair.chosen)])
    recipe.model.train(False)
    with torch.no_grad():
        expected = float(recipe.model(input_ids=tokens).logits[0, 0])
    assert scores[0] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_qlora_is_refused_on_a_cpu_with_a_field_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        SFTConfig.model_validate({"finetuning": "qlora", "device": "cpu"})
    (error,) = caught.value.errors()
    assert error["loc"] == ("finetuning",) and "CUDA GPU" in error["msg"]
    # 'auto' passes the form (a GPU worker may run it) but not the start on a machine without CUDA.
    spec = RunSpec(recipe="sft", config={**TINY, "finetuning": "qlora"}, output_dir=str(tmp_path / "out"))
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="finetuning: QLoRA needs a CUDA GPU"):
        RunContext.create(spec=spec, reporter=None, dist=DistInfo())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"finetuning": "lora", "lora_target_modules": "c_attn"}, "lora_target_modules", "no module c_attn"),
        ({"lora_target_modules": "q_proj; rm -rf /"}, "lora_target_modules", "module names separated by commas"),
        ({"finetuning": "qlora", "distributed": "fsdp"}, "distributed", "cannot shard QLoRA's 4-bit base"),
    ],
)
def test_adapter_settings_that_cannot_apply_are_refused(config: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SFTConfig.model_validate(config)
    (error,) = caught.value.errors()
    assert error["loc"] == (field,) and message in error["msg"]
    SFTConfig.model_validate({"finetuning": "lora", "lora_target_modules": "q_proj, v_proj"})
    # A real model's module names are only known once it loads: not refused here (peft's error names them).
    SFTConfig.model_validate({"finetuning": "lora", "lora_target_modules": "c_attn", "model_name_or_path": "gpt2"})


def test_lora_with_the_vllm_backend_is_refused_with_a_field_error() -> None:
    with pytest.raises(ValidationError) as caught:
        GRPOConfig.model_validate({"finetuning": "lora", "rollout_backend": "vllm"})
    (error,) = caught.value.errors()
    assert error["loc"] == ("rollout_backend",)
    GRPOConfig.model_validate({"finetuning": "lora", "rollout_backend": "auto"})


def test_a_lora_checkpoint_starts_the_next_run_full_or_lora(context_factory: Any) -> None:
    """A LoRA run's final folder as the next run's model: merged into its base for full fine-tuning; for LoRA
    the merged model becomes the new frozen base (written to <output_dir>/base, which the new adapters name)."""
    first_ctx, _ = context_factory("sft", {**LORA, "max_steps": 2, "learning_rate": 1e-2}, out="first")
    first = build_recipe(first_ctx)
    final = run_training(first)
    assert final is not None
    ids = first.rows[0].ids[None, :]
    with torch.no_grad():
        expected = first.model(input_ids=ids).logits
    for finetuning in ("full", "lora"):
        config = {**LORA, "finetuning": finetuning, "model_name_or_path": str(final), "max_steps": 1}
        ctx, _ = context_factory("sft", config, out=f"next-{finetuning}")
        recipe = build_recipe(ctx)
        with torch.no_grad():
            torch.testing.assert_close(recipe.model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
        if finetuning == "lora":
            assert isinstance(recipe.model, PeftModel)
            assert recipe.model.peft_config["default"].base_model_name_or_path == str(ctx.output_dir / "base")
            assert not is_adapter_folder(ctx.output_dir / "base")  # a plain model: the merge of the first run


def test_lora_in_bf16_keeps_a_bf16_base_and_float32_adapters_that_train(context_factory: Any) -> None:
    """dtype bfloat16 with LoRA: the frozen base is stored in bf16 (half its memory), the adapters and their
    AdamW state are float32 master weights, and the forward runs under autocast."""
    ctx, _ = context_factory("dpo", {**LORA, "dtype": "bfloat16", "max_steps": 2, "learning_rate": 1e-3})
    recipe = build_recipe(ctx)
    frozen_dtypes = {p.dtype for p in recipe.model.parameters() if not p.requires_grad}
    trained = {n: p for n, p in recipe.model.named_parameters() if p.requires_grad}
    assert frozen_dtypes == {torch.bfloat16}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in trained.items()}
    final = run_training(recipe)
    assert final is not None
    assert all(not torch.equal(p, before[n]) for n, p in trained.items() if ".lora_B." in n)
    saved = load_file(str(final / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    state = torch.load(ctx.output_dir / "checkpoint-2" / "trainer_state.pt", weights_only=False)["optimizer"]
    assert {v["exp_avg"].dtype for v in state["state"].values()} == {torch.float32}


def test_a_moved_lora_run_folder_still_finds_its_base(context_factory: Any, tmp_path: Path) -> None:
    """The run's own base is named by its absolute path; a copy of the run folder elsewhere (another host, a
    downloaded run) uses the base folder beside its checkpoints."""
    ctx, _ = context_factory("sft", {**LORA, "max_steps": 1, "learning_rate": 1e-2}, out="here")
    recipe = build_recipe(ctx)
    final = run_training(recipe)
    assert final is not None
    ids = recipe.rows[0].ids[None, :]
    with torch.no_grad():
        expected = recipe.model(input_ids=ids).logits
    moved = tmp_path / "elsewhere"
    ctx.output_dir.rename(moved)
    assert not Path(str(ctx.output_dir)).exists()  # the path the adapter names is gone
    assert adapter_base(moved / "final") == str(moved / "base")
    with torch.no_grad():
        merged = load_merged(moved / "final", head="causal_lm")
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
