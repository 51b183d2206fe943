"""Typed recipe configs and the recipe registry; no torch import, so the web tier can build forms cheaply.

Every field has a default (a minimal launch works), a description and constraints: the launch form is
generated from ``config_cls.model_json_schema()`` and validated with ``config_cls.model_validate(data)``.
Configs are flat on purpose: a flat schema renders as a plain form, with no nested objects to lay out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

# The linear layers of the built-in tiny Llama (modeling.tiny_llama_config): LoRA targets it can take.
TINY_LINEAR = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

RewardName = Literal["exact_match", "numeric_answer", "regex", "format", "reward_model", "rubric_judge", "cup"]


def _default_rewards() -> list[RewardName]:
    """GRPO's default reward list (a typed factory: a lambda would be inferred as list[str])."""
    return ["numeric_answer"]


def field_error(config: BaseModel, field: str, message: str) -> ValidationError:
    """A validation error on one field of ``config`` (a model validator's own errors name no field; the launch
    form puts this one next to the field it is about)."""
    details = InitErrorDetails(
        type=PydanticCustomError("config_rule", message), loc=(field,), input=getattr(config, field)
    )
    return ValidationError.from_exception_data(type(config).__name__, [details])


class BaseRecipeConfig(BaseModel):
    """Fields every recipe shares: the model, the optimiser, the schedule, checkpoints and the device."""

    # No infinities or NaNs in any float (a list's items included): JSON has none, so PostgreSQL refuses to store
    # such a config (a 500 at launch), and no hyperparameter means them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model_name_or_path: str = Field(
        "tiny",
        description=(
            "A local folder or hub id of a causal LM (also a previous run's checkpoint or final/ folder). "
            "'tiny' builds a ~1M-parameter Llama from a config, with a character tokenizer trained on the data."
        ),
        min_length=1,
        max_length=500,
    )
    dataset_path: str = Field(
        "",
        description=(
            "JSONL or Parquet file in TRL's columns (prompt/completion, prompt/chosen/rejected, messages). "
            "Empty uses the recipe's built-in demo data."
        ),
        max_length=1000,
    )
    max_steps: int = Field(200, ge=1, le=10_000_000, description="Optimiser steps to train for.")
    batch_size: int = Field(
        16,
        ge=1,
        le=4096,
        description="Examples (prompts for GRPO) per optimiser step, over all GPUs and accumulation micro-batches.",
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Micro-batches per optimiser step: each GPU runs forward and backward on batch_size / (GPUs x this) "
            "examples at a time; the update is that of the whole batch, with a fraction of the activation memory."
        ),
    )
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW decoupled weight decay.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule after warm-up."
    )
    warmup_steps: int = Field(0, ge=0, le=1_000_000, description="Linear learning-rate warm-up steps.")
    max_grad_norm: float = Field(1.0, ge=0.0, le=1000.0, description="Gradient-norm clip; 0 disables clipping.")
    max_length: int = Field(128, ge=8, le=131_072, description="Tokens kept per example (prompt + completion).")
    save_steps: int = Field(50, ge=1, le=10_000_000, description="Write a checkpoint every this many steps.")
    logging_steps: int = Field(1, ge=1, le=100_000, description="Report metrics every this many steps.")
    sample_table_steps: int = Field(
        50,
        ge=0,
        le=10_000_000,
        description=(
            "Log a small table of prompts, completions and rewards every this many steps (the run page's "
            "Samples); 0 = never."
        ),
    )
    sample_table_rows: int = Field(8, ge=1, le=64, description="Rows in each samples table.")
    sample_table_max_new_tokens: int = Field(
        32, ge=1, le=4096, description="Longest completion SFT and DPO sample for their table (greedy)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when available.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description=(
            "Compute dtype. bfloat16: forward and backward under bf16 autocast while the trained weights, their "
            "gradients and the AdamW state stay float32 (mixed precision, as Trainer's bf16=True)."
        ),
    )
    num_threads: int = Field(0, ge=0, le=256, description="CPU threads for torch; 0 keeps torch's default.")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description=(
            "With several GPUs (torchrun): 'ddp' keeps a whole model per GPU; 'fsdp' shards weights, gradients "
            "and optimiser state over them (FSDP2). batch_size stays the global batch either way."
        ),
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory (about 1.16x slower)."
    )
    finetuning: Literal["full", "lora", "qlora"] = Field(
        "full",
        description=(
            "full: train every weight. lora: freeze the model and train low-rank adapters (peft), saved as PEFT "
            "folders; the reference model is the base with the adapters switched off, not a second copy. "
            "qlora: LoRA on a base quantised to 4-bit NF4 (bitsandbytes; needs a CUDA GPU)."
        ),
    )
    lora_r: int = Field(16, ge=1, le=4096, description="LoRA rank r.")
    lora_alpha: int = Field(32, ge=1, le=65536, description="LoRA alpha: updates are scaled by alpha / r.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    lora_target_modules: str = Field(
        "all-linear",
        min_length=1,
        max_length=1000,
        description=(
            "Modules given adapters: all-linear (every linear layer but the output head), or comma-separated "
            "module names such as q_proj,v_proj."
        ),
    )
    tiny_hidden_size: int = Field(128, ge=8, le=4096, description="Hidden size of the 'tiny' model.")
    tiny_num_layers: int = Field(4, ge=1, le=64, description="Decoder layers of the 'tiny' model.")
    tiny_num_heads: int = Field(4, ge=1, le=64, description="Attention heads of the 'tiny' model.")
    eval_steps: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="Evaluate on held-out examples every this many steps (and at the last); 0 = no evaluation.",
    )
    eval_dataset_path: str = Field(
        "",
        max_length=1000,
        description="Held-out examples in the training data's format; empty: hold out eval_fraction of it instead.",
    )
    eval_fraction: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Share of the training data held out for evaluation (a seeded split, never trained on).",
    )
    eval_max_examples: int = Field(
        256, ge=1, le=1_000_000, description="Evaluate on at most this many held-out examples (the first ones)."
    )

    @model_validator(mode="after")
    def _accumulation_divides_batch(self) -> Self:
        """Equal micro-batches: only then is the accumulated gradient that of the whole batch."""
        k = self.gradient_accumulation_steps
        if self.batch_size % k:
            raise field_error(
                self,
                "gradient_accumulation_steps",
                f"Must divide batch_size ({self.batch_size}) into equal micro-batches; {k} does not.",
            )
        return self

    @field_validator("lora_target_modules")
    @classmethod
    def _target_modules_are_names(cls, value: str) -> str:
        names = [part.strip() for part in value.split(",")]
        if value.strip() != "all-linear" and not all(_MODULE_NAME.fullmatch(name) for name in names):
            raise ValueError("must be all-linear or module names separated by commas (e.g. q_proj,v_proj)")
        return value

    @model_validator(mode="after")
    def _combination_can_run(self) -> Self:
        """Refuse what cannot run wherever the run lands (the engine re-checks what depends on its machine)."""
        if self.finetuning == "qlora" and self.device == "cpu":
            raise field_error(
                self,
                "finetuning",
                "QLoRA quantises the base to 4 bits with bitsandbytes, which needs a CUDA GPU: set device to "
                "auto or cuda, or use lora.",
            )
        if self.finetuning == "qlora" and self.distributed == "fsdp":
            raise field_error(
                self,
                "distributed",
                "FSDP2 cannot shard QLoRA's 4-bit base weights: use ddp (each GPU holds the small 4-bit base), "
                "or lora.",
            )
        if self.finetuning != "full" and self.model_name_or_path == "tiny":
            targets = self.lora_target_modules.strip()
            unknown = set() if targets == "all-linear" else {t.strip() for t in targets.split(",")} - TINY_LINEAR
            if unknown:
                raise field_error(
                    self,
                    "lora_target_modules",
                    f"The tiny Llama has no module {', '.join(sorted(unknown))}; its linear layers are "
                    f"{', '.join(sorted(TINY_LINEAR))}.",
                )
        return self

    @model_validator(mode="after")
    def _evaluation_is_complete(self) -> Self:
        """Evaluation needs both a schedule and held-out data; half of it is refused rather than ignored."""
        has_data = bool(self.eval_dataset_path) or self.eval_fraction > 0
        if self.eval_steps and not has_data:
            raise field_error(self, "eval_steps", "Evaluation needs an eval dataset path or an eval fraction above 0.")
        if has_data and not self.eval_steps:
            field = "eval_dataset_path" if self.eval_dataset_path else "eval_fraction"
            raise field_error(self, field, "Held-out data is only used with eval_steps above 0: set how often.")
        if self.eval_dataset_path and self.eval_fraction > 0:
            raise field_error(self, "eval_fraction", "Give an eval dataset path or an eval fraction, not both.")
        return self


class DemoConfig(BaseRecipeConfig):
    """A toy language-modelling task for a tiny model: the loss visibly falls within a minute on one CPU thread."""

    max_steps: int = Field(200, ge=1, le=100_000, description="Optimiser steps to train for.")
    save_steps: int = Field(50, ge=1, le=100_000, description="Write a checkpoint every this many steps.")
    learning_rate: float = Field(3e-3, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    num_threads: int = Field(1, ge=0, le=256, description="CPU threads for torch; 0 keeps torch's default.")
    max_length: int = Field(32, ge=8, le=4096, description="Tokens kept per example (prompt + completion).")
    tiny_num_layers: int = Field(2, ge=1, le=64, description="Decoder layers of the 'tiny' model.")
    step_delay_s: float = Field(
        0.15, ge=0.0, le=60.0, description="Sleep after each step, to watch a demo run in slow motion."
    )


class SequenceDataConfig(BaseRecipeConfig):
    """Recipes that train on prompt + completion text: TRL-style truncation limits (see engine/truncation.py)."""

    max_length: int = Field(
        128, ge=8, le=131_072, description="Tokens kept per sequence (prompt + completion); cut from the end."
    )
    max_prompt_length: int | None = Field(
        None,
        ge=1,
        le=131_072,
        description=(
            "Tokens kept of each prompt, cut from the left (the end of a conversation is kept); "
            "must be less than max_length. Empty: half of max_length."
        ),
    )
    max_completion_length: int | None = Field(
        None, ge=1, le=131_072, description="Tokens kept of each completion (EOS included). Empty: no own limit."
    )

    @field_validator("max_prompt_length")
    @classmethod
    def _prompt_leaves_room(cls, value: int | None, info: ValidationInfo) -> int | None:
        # A prompt as long as max_length leaves no completion token: every example would be unusable.
        max_length = info.data.get("max_length")
        if value is not None and isinstance(max_length, int) and value >= max_length:
            raise ValueError(
                f"must be less than max_length ({max_length}), so every completion keeps at least one token"
            )
        return value

    def truncation_limits(self) -> tuple[int, int, int | None]:
        """(max_length, max_prompt_length, max_completion_length) with the prompt default resolved."""
        prompt = self.max_prompt_length if self.max_prompt_length is not None else max(1, self.max_length // 2)
        return self.max_length, prompt, self.max_completion_length


class SFTConfig(SequenceDataConfig):
    """Supervised fine-tuning of a causal LM on prompt/completion (or messages) data."""

    completion_only_loss: bool = Field(
        True, description="Compute the loss on completion tokens only (prompt tokens are masked out)."
    )


class RewardModelConfig(SequenceDataConfig):
    """A Bradley-Terry reward model on prompt/chosen/rejected pairs."""

    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    center_rewards_coefficient: float = Field(
        0.0, ge=0.0, le=10.0, description="Weight of a penalty on (r_chosen + r_rejected)^2 that centres rewards."
    )


class ScoreRewardConfig(SequenceDataConfig):
    """A reward model fitted to scores people gave (a rating, a rubric pass rate): its scalar head regresses them."""

    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    objective: Literal["regression", "classification"] = Field(
        "regression",
        description=(
            "regression: mean squared error of the head's output to the score in [0, 1]; classification: binary "
            "cross-entropy of its logit to the score (a label, or the share of annotators who said yes)."
        ),
    )


class ProcessRewardConfig(ScoreRewardConfig):
    """A process reward model: each step of an agent's trajectory, in the context of the task and the steps before
    it, scored by whether people marked it as violating a policy."""

    objective: Literal["regression", "classification"] = Field(
        "classification",
        description="classification: binary cross-entropy of the logit to the step's violation label (the default).",
    )


class RubricJudgeConfig(SFTConfig):
    """A rubric judge taught people's per-item verdicts: the yes/no model the GRPO rubric_judge reward asks."""


class DPOConfig(SequenceDataConfig):
    """Direct Preference Optimisation against a frozen reference model."""

    learning_rate: float = Field(1e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    beta: float = Field(0.1, gt=0.0, le=100.0, description="DPO temperature: strength of the pull to the reference.")
    ref_model_name_or_path: str = Field(
        "", max_length=500, description="Reference model; empty uses a frozen copy of the starting policy."
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="Conservative DPO: assumed probability that a preference label is flipped."
    )


class GRPOConfig(BaseRecipeConfig):
    """Group Relative Policy Optimisation and its variants (Dr. GRPO, DAPO, GTPO, GRPO-Guard)."""

    batch_size: int = Field(8, ge=1, le=4096, description="Prompts per optimiser step (each sampled G times).")
    learning_rate: float = Field(1e-5, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    num_generations: int = Field(8, ge=2, le=256, description="G: completions sampled per prompt (a group).")
    max_new_tokens: int = Field(32, ge=1, le=32_768, description="Longest completion sampled.")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold of rollouts.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description=(
            "Token-loss aggregation: grpo = per-sequence mean then mean; bnpo = sum / tokens in the batch; "
            "dr_grpo = sum / (B x max_new_tokens); dapo = sum / tokens in the whole generation batch."
        ),
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group's reward std, the batch's, or not at all (Dr. GRPO)."
    )
    epsilon_low: float = Field(0.2, ge=0.0, le=1.0, description="Lower clip: ratio >= 1 - epsilon_low.")
    epsilon_high: float = Field(0.2, ge=0.0, le=10.0, description="Upper clip: ratio <= 1 + epsilon_high (DAPO: 0.28).")
    num_iterations: int = Field(1, ge=1, le=64, description="Optimiser passes over each generation batch (PPO mu).")
    beta: float = Field(0.0, ge=0.0, le=10.0, description="Weight of the k3 KL penalty to the reference; 0 = none.")
    ref_model_name_or_path: str = Field(
        "", max_length=500, description="Reference model for the KL term; empty uses the starting policy."
    )
    variant: Literal["none", "gtpo", "grpo_guard"] = Field(
        "none",
        description=(
            "gtpo: its authors' method, as in their code (conflict tokens of the shared prefix and suffix, "
            "per-completion normalisation by their count, entropy filter and penalty, no reference model; needs "
            "beta = 0, num_iterations = 1, scale_rewards = none; sums its loss over completions, so loss_type "
            "does not apply); grpo_guard: ratio normalisation (an adaptation to language models of GRPO-Guard)."
        ),
    )
    gtpo_conflict_boost: float = Field(
        2.0, ge=1.0, le=10.0, description="GTPO: weight of conflict tokens in positive completions (their W_RAW)."
    )
    gtpo_entropy_threshold: float = Field(
        0.7,
        gt=0.0,
        le=20.0,
        description=(
            "GTPO: drop completions whose mean token entropy exceeds this many nats (their ENT_THRESHOLD, 0.7, "
            "set for pretrained LLMs; a model far from converged sits near ln|V| and needs more)."
        ),
    )
    gtpo_entropy_penalty: float = Field(
        0.1,
        ge=0.0,
        le=10.0,
        description="GTPO: advantage of a kept completion minus this times its mean entropy (their ENT_SCALE).",
    )
    reward_funcs: list[RewardName] = Field(
        default_factory=_default_rewards,
        min_length=1,
        description="Reward functions, summed with reward_weights.",
    )
    reward_weights: list[Annotated[float, Field(ge=-1000.0, le=1000.0)]] = Field(
        default_factory=list, max_length=64, description="One weight per reward function; empty means all 1.0."
    )
    reward_regex: str = Field("", max_length=1000, description="Pattern for the 'regex' reward (full match = 1).")
    reward_model_path: str = Field("", max_length=500, description="Checkpoint of a reward_model run.")
    rubric_judge_path: str = Field("", max_length=500, description="Causal LM that grades each rubric item.")
    process_reward_model_path: str = Field(
        "",
        max_length=500,
        description=(
            "Checkpoint of a process_reward_model run, for the 'cup' reward (Completion under Policy: the answer "
            "is right and no step, one per line, violates a policy)."
        ),
    )
    rollout_backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="'auto' uses vLLM when a GPU and vllm are present, else the Hugging Face backend."
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=0.95, description="Fraction of GPU memory the colocated vLLM engine may take."
    )
    vllm_max_model_len: int = Field(
        0,
        ge=0,
        le=1_048_576,
        description=(
            "vLLM's context length; 0 = max_length + max_new_tokens, capped at the model's max positions "
            "(a value above the model's positions is refused when the run starts)."
        ),
    )
    vllm_enable_sleep_mode: bool = Field(
        True,
        description="Put vLLM to sleep (level 1: weights to CPU, KV cache freed) while the trainer steps.",
    )
    vllm_importance_sampling_correction: bool = Field(
        True,
        description=(
            "Weight the loss by π_trainer / π_vLLM of the sampled tokens (vLLM's processed log-probs), bounded by "
            "the mode below, as TRL's vllm_importance_sampling_correction (vLLM samples in another precision)."
        ),
    )
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        Field(
            "token_truncate",
            description=(
                "TRL's modes: per token or per sequence; truncate (clamp the ratio to [clip_min, clip_max]) or mask "
                "(0 outside). token_truncate is TIS (Yao et al. 2025); TRL 1.16's own default is sequence_mask."
            ),
        )
    )
    vllm_importance_sampling_clip_max: float | None = Field(
        3.0, gt=0.0, le=1000.0, description="Upper bound C_max of the importance ratio (TRL's default 3.0)."
    )
    vllm_importance_sampling_clip_min: float | None = Field(
        None, ge=0.0, le=1000.0, description="Lower bound C_min of the importance ratio; empty: none (TRL's default)."
    )
    sft_warmup_steps: int = Field(
        0, ge=0, le=1_000_000, description="Supervised steps on the data's completions before RL (warm start)."
    )
    sft_learning_rate: float = Field(3e-3, gt=0.0, le=1.0, description="Learning rate of the warm-start steps.")

    @model_validator(mode="after")
    def _adapters_reach_the_rollout_engine(self) -> Self:
        """vLLM holds plain weights: the colocated sync does not merge adapters yet, so LoRA samples with HF."""
        if self.finetuning != "full" and self.rollout_backend == "vllm":
            raise field_error(
                self,
                "rollout_backend",
                "LoRA/QLoRA runs sample with the Hugging Face backend (weight sync into vLLM does not merge "
                "adapters yet): set it to hf or auto.",
            )
        return self

    @model_validator(mode="after")
    def _importance_sampling_bounds_are_ordered(self) -> Self:
        """C_min above C_max would clamp every ratio to one value (truncate) or mask every token (mask)."""
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if low is None and high is None and self.vllm_importance_sampling_mode.endswith("_truncate"):
            raise field_error(
                self, "vllm_importance_sampling_clip_max", "Truncation needs a bound: give an upper (or lower) one."
            )
        if low is not None and high is not None and low > high:
            raise field_error(
                self, "vllm_importance_sampling_clip_min", "The lower bound must not exceed the upper bound."
            )
        return self

    @model_validator(mode="after")
    def _cup_names_its_model(self) -> Self:
        """The 'cup' reward needs the process reward model that judges each step: refused at launch, on the field."""
        if "cup" in self.reward_funcs and not self.process_reward_model_path:
            raise field_error(
                self, "process_reward_model_path", "The 'cup' reward needs a process_reward_model run's checkpoint."
            )
        return self

    @model_validator(mode="after")
    def _gtpo_is_its_authors_method(self) -> Self:
        """Settings GTPO's definition excludes are refused, not silently ignored (each error names its field)."""
        if self.variant == "gtpo":
            if self.beta != 0:
                raise field_error(self, "beta", "GTPO has no KL term and no reference model: set beta to 0.")
            if self.num_iterations != 1:
                raise field_error(
                    self, "num_iterations", "GTPO takes one optimiser pass per generation batch: set it to 1."
                )
            if self.rollout_backend == "vllm" and self.vllm_importance_sampling_correction:
                raise field_error(
                    self,
                    "vllm_importance_sampling_correction",
                    "GTPO's loss (its authors') has no importance-sampling term: turn the correction off.",
                )
            if self.scale_rewards != "none":
                raise field_error(
                    self, "scale_rewards", "GTPO's advantages are r - mean(group), not scaled: set it to none."
                )
        return self


class DemoGRPOConfig(GRPOConfig):
    """GRPO demo on CPU: a tiny model is warm-started by SFT on noisy labels, then GRPO raises exact-match reward."""

    max_steps: int = Field(450, ge=1, le=100_000, description="Optimiser steps (warm-start SFT + GRPO).")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts per optimiser step (each sampled G times).")
    learning_rate: float = Field(5e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate of the GRPO steps.")
    num_generations: int = Field(8, ge=2, le=256, description="G: completions sampled per prompt (a group).")
    max_new_tokens: int = Field(4, ge=1, le=256, description="Longest completion sampled.")
    max_length: int = Field(32, ge=8, le=4096, description="Tokens kept per example (prompt + completion).")
    save_steps: int = Field(50, ge=1, le=100_000, description="Write a checkpoint every this many steps.")
    num_threads: int = Field(1, ge=0, le=256, description="CPU threads for torch; 0 keeps torch's default.")
    tiny_num_layers: int = Field(2, ge=1, le=64, description="Decoder layers of the 'tiny' model.")
    sft_warmup_steps: int = Field(
        250, ge=0, le=1_000_000, description="Supervised steps on the data's completions before RL (warm start)."
    )
    label_noise: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="Fraction of warm-start answers replaced by wrong ones, so RL has room to improve.",
    )


@dataclass(frozen=True)
class RecipeInfo:
    """One launchable recipe: its name, what the form shows, and its config class."""

    name: str
    title: str
    description: str
    config_cls: type[BaseRecipeConfig]
    writes_checkpoints: bool = True


RECIPES: dict[str, RecipeInfo] = {
    info.name: info
    for info in (
        RecipeInfo(
            "demo",
            "Demo (tiny model, CPU)",
            "A tiny model learns a toy task; the loss falls within a minute on one CPU thread.",
            DemoConfig,
        ),
        RecipeInfo(
            "demo_grpo",
            "Demo GRPO (tiny model, CPU)",
            "Warm-start by SFT on noisy labels, then GRPO visibly raises the verifier's reward in a few minutes.",
            DemoGRPOConfig,
        ),
        RecipeInfo("sft", "SFT", "Supervised fine-tuning, loss on completion tokens only.", SFTConfig),
        RecipeInfo(
            "reward_model",
            "Reward model",
            "Bradley-Terry reward model on chosen/rejected pairs; logs accuracy and margin.",
            RewardModelConfig,
        ),
        RecipeInfo("dpo", "DPO", "Direct Preference Optimisation against a frozen reference.", DPOConfig),
        RecipeInfo(
            "reward_regression",
            "Reward model (scores)",
            "A reward model regressing people's scores: a rating study's or a rubric study's reward export.",
            ScoreRewardConfig,
        ),
        RecipeInfo(
            "process_reward_model",
            "Process reward model (violations)",
            "Scores each step of an agent's trajectory by whether it violates a policy: a violation study's export.",
            ProcessRewardConfig,
        ),
        RecipeInfo(
            "rubric_judge",
            "Rubric judge",
            "A yes/no judge of each rubric item, taught people's verdicts from a rubric study's export; GRPO's "
            "rubric_judge reward uses it (reward = fraction of items satisfied).",
            RubricJudgeConfig,
        ),
        RecipeInfo(
            "grpo",
            "GRPO",
            "Group-relative policy optimisation with Dr. GRPO, DAPO, GTPO and GRPO-Guard variants.",
            GRPOConfig,
        ),
    )
}
