"""The loop every recipe shares: seed per step, optimiser and schedule, report, checkpoint, resume, cancel."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.engine import checkpoints
from training.engine.config import BaseRecipeConfig
from training.engine.data import DatasetKind, Example, Renderer, load_dataset, render_plain, split_held_out
from training.engine.demo_tasks import task_texts
from training.engine.distributed import (
    DistInfo,
    all_mean,
    all_sum,
    full_model_state,
    full_optimizer_state,
    gathered,
    grad_norm_value,
    load_optimizer_state,
    unwrap,
)
from training.engine.modeling import (
    TINY,
    Head,
    compute_autocast,
    enable_gradient_checkpointing,
    frozen,
    is_tiny,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_device,
)
from training.engine.reporting import Reporter
from training.engine.sample_tables import SampleTable
from training.engine.spec import RunSpec

T = TypeVar("T")


@dataclass
class RunContext:
    """What a recipe is given: the spec, its validated config, where to report, and this process's place."""

    spec: RunSpec
    config: BaseRecipeConfig
    reporter: Reporter
    dist: DistInfo
    device: torch.device
    output_dir: Path

    @classmethod
    def create(cls, *, spec: RunSpec, reporter: Reporter, dist: DistInfo) -> RunContext:
        """Validate the recipe config, pick the device and make the output folder."""
        config = spec.recipe_config()
        dist = replace(dist, strategy=config.distributed)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        parts = dist.world_size * config.gradient_accumulation_steps
        if config.batch_size % parts:
            raise ValueError(
                f"batch_size {config.batch_size} does not split into {dist.world_size} process(es) x "
                f"{config.gradient_accumulation_steps} accumulation step(s) of equal micro-batches"
            )
        device = resolve_device(config.device)
        check_machine(config, device)
        output_dir = Path(spec.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        return cls(spec, config, reporter, dist, device, output_dir)

    @property
    def rank_batch_size(self) -> int:
        """This process's share of ``batch_size`` (the global batch of one optimiser step)."""
        return self.config.batch_size // self.dist.world_size

    @property
    def policy_path(self) -> str:
        """Where the trained weights start: the checkpoint being resumed, else the configured model."""
        return self.spec.resume_from or self.config.model_name_or_path

    def say(self, line: str) -> None:
        """A line in the run's log (rank 0 only)."""
        _say(self, line)

    def load_policy(self, tokenizer: PreTrainedTokenizerBase, *, head: Head = "causal_lm") -> torch.nn.Module:
        """The trained model in train mode: the whole model (full fine-tuning), or its frozen base with LoRA
        adapters (``finetuning`` lora / qlora: a ``PeftModel``), fresh or resumed from the checkpoint's.

        A LoRA run never loads its base from the checkpoint: the base is the configured model, and when that
        exists nowhere the adapter could name (the built-in tiny model, another run's adapter folder) it is
        written once to ``<output_dir>/base``.
        """
        config, seed, device = self.config, self.spec.seed, self.device
        load = load_sequence_classifier if head == "sequence_classifier" else load_causal_lm
        if config.finetuning == "full":
            whole = load(self.policy_path, config=config, tokenizer=tokenizer, seed=seed, device=device)
            if config.gradient_checkpointing:
                enable_gradient_checkpointing(whole, adapters=False)
            whole.train()
            return whole
        from training.engine.adapters import attach_lora, is_adapter_folder

        base_path = config.model_name_or_path
        if is_tiny(base_path) or is_adapter_folder(base_path):
            folder = self.output_dir / "base"
            if self.dist.is_main and not (folder / "config.json").exists():
                start = load(base_path, config=config, tokenizer=tokenizer, seed=seed, device=torch.device("cpu"))
                checkpoints.save_model_folder(folder, model=start, tokenizer=tokenizer)
                del start
            if self.dist.enabled:
                dist.barrier()  # the other ranks read what rank 0 wrote
            base_path = str(folder)
        base = load(base_path, config=config, tokenizer=tokenizer, seed=seed, device=device, lora_base=True)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(base, adapters=True)
        model = attach_lora(
            base, config=config, head=head, base_path=base_path, resume_from=self.spec.resume_from, seed=seed
        )
        model.train()
        return model

    def tokenizer_for(self, examples: list[Example], *, kind: DatasetKind | None = None) -> PreTrainedTokenizerBase:
        """The policy's tokenizer; for 'tiny' one trained on these examples' text (and the eval file's, given
        its ``kind``: a held-out file's characters must be in the vocabulary too)."""
        texts = task_texts(examples)
        if kind is not None and self.config.eval_dataset_path and self.policy_path == TINY:
            texts += task_texts(load_dataset(self.config.eval_dataset_path, kind=kind))
        return load_tokenizer(self.policy_path, texts=texts)

    def held_out(
        self, examples: Sequence[Example], *, kind: DatasetKind, render: Renderer = render_plain
    ) -> tuple[list[Example], list[Example]]:
        """(train, eval) examples: the eval file, or a seeded ``eval_fraction`` of ``examples``; capped at
        ``eval_max_examples``. Without evaluation configured, every example trains and none is held out."""
        config = self.config
        if config.eval_dataset_path:
            held = load_dataset(config.eval_dataset_path, kind=kind, render=render)
            train = list(examples)
        else:
            train, held = split_held_out(examples, fraction=config.eval_fraction, seed=self.spec.seed)
        return train, held[: config.eval_max_examples]


def check_machine(config: BaseRecipeConfig, device: torch.device) -> None:
    """What the config check in the web tier cannot know, refused at start with the field to change: the
    machine the run landed on (``device: auto`` may resolve to a CPU)."""
    if config.finetuning == "qlora":
        if device.type != "cuda":
            raise ValueError(
                f"finetuning: QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); this run is on {device.type}. "
                "Use lora, or run on a GPU queue."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("finetuning: QLoRA needs the bitsandbytes package, which this worker lacks.")
    if config.dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"dtype: {torch.cuda.get_device_name(device)} has no bfloat16 support (before Ampere): use float32."
        )


def chat_renderer(tokenizer: PreTrainedTokenizerBase) -> Renderer:
    """The tokenizer's chat template as a data renderer when it has one, else the plain renderer."""
    if getattr(tokenizer, "chat_template", None):

        def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            return str(text)

        return render
    return render_plain


class Recipe(ABC):
    """One training method: it owns its models; ``train_step`` runs forward and backward and returns metrics."""

    model: torch.nn.Module  # what the optimiser updates (DDP-wrapped under torchrun)
    tokenizer: PreTrainedTokenizerBase
    # False: train_step's metrics are means over this rank's equal share of the batch, and the loop averages
    # them over ranks. True: the recipe already reduced them to the whole batch's values (token-weighted
    # means, stds, minima ...), the same on every rank.
    metrics_are_global = False

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def train_step(self, step: int) -> dict[str, float]:
        """Forward and backward for one optimiser step (the loop clips, steps and zeroes)."""

    eval_examples: Sequence[Example] = ()  # held-out examples (RunContext.held_out); empty: no evaluation

    def evaluate(self, step: int) -> dict[str, float]:
        """Metrics on ``eval_examples`` with the current weights, keys without the ``eval/`` prefix (the loop
        adds it). Called in eval mode, without autograd, with its own seeded random stream."""
        return {}

    def eval_shards(self) -> Iterator[list[Example]]:
        """This rank's share of the held-out examples, in batches of ``batch_size``."""
        ctx = self.ctx
        mine = list(self.eval_examples)[ctx.dist.rank :: ctx.dist.world_size]
        size = ctx.config.batch_size
        for start in range(0, len(mine), size):
            yield mine[start : start + size]

    def micro_batches(self, rows: Sequence[T]) -> list[Sequence[T]]:
        """``rows`` (this rank's share of a step) cut into ``gradient_accumulation_steps`` equal micro-batches."""
        k = self.ctx.config.gradient_accumulation_steps
        size, rest = divmod(len(rows), k)
        assert rest == 0, f"{len(rows)} rows do not split into {k} equal micro-batches"
        return [rows[i * size : (i + 1) * size] for i in range(k)]

    def gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager[object]:
        """Around one micro-batch's backward: under DDP, gradients are all-reduced on the last one only (each
        reduction in between would be undone work: accumulation sums them locally first)."""
        if isinstance(self.model, FSDPModule):
            return _fsdp_gradient_sync(self.model, last=last)
        no_sync = getattr(self.model, "no_sync", None)
        if last or no_sync is None:
            return contextlib.nullcontext()
        context: contextlib.AbstractContextManager[object] = no_sync()
        return context

    def token_normaliser(self, local_items: float) -> float:
        """The divisor of a token-sum loss that equals a mean over every token of the step on every rank:
        N_global / world_size, since DDP averages the ranks' gradients (TRL's num_items_in_batch with
        average_tokens_across_devices: transformers' Trainer sums tokens over ranks, then scales by world size)."""
        if not self.ctx.dist.enabled:
            return max(local_items, 1.0)
        total = torch.tensor(local_items, dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(total)
        return max(float(total), 1.0) / self.ctx.dist.world_size

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        """Sums over every rank's share (the identity on one process)."""
        return all_sum(sums, self.ctx.dist)

    def after_update(self, step: int) -> None:
        """Called after each optimiser step (GRPO pushes weights into its rollout engine here)."""
        return None

    def lr_factor(self, step: int) -> float:
        """A recipe-specific learning-rate factor on top of the schedule (GRPO's SFT warm start uses it)."""
        return 1.0

    def state_dict(self) -> dict[str, object]:
        """What this process's recipe holds between steps beyond the model and optimiser (GRPO: the
        generation batch being reused); saved in the trainer state so a resume continues exactly."""
        return {}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Put back what ``state_dict`` returned (an empty mapping for checkpoints that have none)."""
        return None

    def sample_table(self, step: int) -> SampleTable | None:
        """The samples table for this step (prompts, completions, rewards), or None when the recipe logs none."""
        return None

    def can_sample_alone(self) -> bool:
        """Whether rank 0 may run the model by itself (for a table): not when FSDP shards the weights over ranks."""
        return not self.ctx.dist.fsdp

    def sampling_model(self) -> PreTrainedModel:
        """The transformers model to sample from: the trained model, or for LoRA the peft model's own (its
        layers carry the adapters, active), which the lean KV-cache decoder knows how to run."""
        inner = unwrap(self.model)
        get_base = getattr(inner, "get_base_model", None)  # a PeftModel's; duck-typed so peft stays optional
        if callable(get_base):
            inner = get_base()
        assert isinstance(inner, PreTrainedModel)
        return inner

    def reference_model(self, policy: torch.nn.Module, ref_path: str) -> torch.nn.Module:
        """The frozen reference of DPO / GRPO's KL: for LoRA the policy's own base with adapters off (unless a
        separate reference is configured), otherwise a frozen model from ``ref_path``."""
        if callable(getattr(policy, "disable_adapter", None)) and not getattr(
            self.ctx.config, "ref_model_name_or_path", ""
        ):
            from training.engine.adapters import AdapterDisabled

            return AdapterDisabled(policy)  # type: ignore[arg-type]  # a PeftModel, checked above
        ctx = self.ctx
        return frozen(
            load_causal_lm(ref_path, config=ctx.config, tokenizer=self.tokenizer, seed=ctx.spec.seed, device=ctx.device)
        )

    def saved_model(self) -> checkpoints.Saveable:
        """The model a checkpoint holds: a Hugging Face model, or a PEFT model (its adapters only)."""
        inner = unwrap(self.model)
        assert isinstance(inner, checkpoints.Saveable)
        return inner


@contextlib.contextmanager
def _fsdp_gradient_sync(model: FSDPModule, *, last: bool) -> Iterator[None]:
    """FSDP2's no_sync: reduce-scatter gradients on the last micro-batch only (set_requires_gradient_sync)."""
    model.set_requires_gradient_sync(last)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def schedule_factor(config: BaseRecipeConfig, step: int) -> float:
    """Warm-up then constant / linear / cosine decay, as a multiple of the peak learning rate."""
    if config.warmup_steps and step <= config.warmup_steps:
        return step / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.lr_scheduler == "linear":
        return 1.0 - progress
    if config.lr_scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def seed_step(seed: int, step: int) -> None:
    """Seed every generator from (seed, step): a resumed run samples exactly what an uninterrupted one would."""
    value = seed * 1_000_003 + step
    random.seed(value)
    torch.manual_seed(value)


def run_training(recipe: Recipe) -> Path | None:
    """Train ``recipe`` to ``max_steps``, resuming if asked; return the final model folder (rank 0)."""
    ctx, config = recipe.ctx, recipe.ctx.config
    params = [p for p in recipe.model.parameters() if p.requires_grad]
    # fused: one kernel per step instead of a loop over tensors (CPU and CUDA both have it)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    # The factor is evaluated for the step about to run (LambdaLR passes the count of steps taken).
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda taken: schedule_factor(config, taken + 1) * recipe.lr_factor(taken + 1)
    )
    start = 0
    if ctx.spec.resume_from:
        state = checkpoints.load_trainer_state(Path(ctx.spec.resume_from))
        load_optimizer_state(optimizer, state["optimizer"], ctx.dist)
        scheduler.load_state_dict(state["scheduler"])
        checkpoints.restore_rng(state["rng"])
        recipe.load_state_dict(checkpoints.recipe_state(state, rank=ctx.dist.rank, world_size=ctx.dist.world_size))
        start = state["step"]
        _say(ctx, f"resumed from {ctx.spec.resume_from} at step {start}")
    if ctx.dist.is_main:
        params_m = sum(p.numel() for p in params) / 1e6
        _say(ctx, f"recipe {ctx.spec.recipe}: {params_m:.2f}M trainable parameters on {ctx.device}")
    for step in range(start + 1, config.max_steps + 1):
        seed_step(ctx.spec.seed, step)
        began = time.perf_counter()
        # bf16 autocast around forward and backward only: the weights, gradients, clipping and AdamW stay float32.
        with compute_autocast(config, ctx.device):
            metrics = recipe.train_step(step)
        if not recipe.metrics_are_global:
            metrics = all_mean(metrics, ctx.dist)
        if config.max_grad_norm > 0:
            # Gradients are already reduced over ranks here (DDP all-reduce, FSDP2 reduce-scatter): a global norm.
            metrics["grad_norm"] = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recipe.after_update(step)
        metrics["learning_rate"] = optimizer.param_groups[0]["lr"]
        metrics["step_time"] = time.perf_counter() - began
        if ctx.dist.is_main and (step % config.logging_steps == 0 or step == config.max_steps):
            ctx.reporter.log(metrics, step)
            shown = " ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k or k.startswith(("rewards/", "sft/"))
            )
            _say(ctx, f"step {step}/{config.max_steps} {shown}")
        if config.eval_steps and recipe.eval_examples and (step % config.eval_steps == 0 or step == config.max_steps):
            _evaluate(recipe, step)
        if ctx.dist.is_main and _table_due(config, step):
            with compute_autocast(config, ctx.device):
                table = recipe.sample_table(step)
            if table is not None and table.rows:
                ctx.reporter.log_table(table.name, step, table.columns, [list(r) for r in table.rows])
        if step % config.save_steps == 0 or step == config.max_steps:
            _checkpoint(recipe, step, optimizer, scheduler)
    full = full_model_state(recipe.model, ctx.dist)  # every rank takes part in gathering FSDP2 shards
    if not ctx.dist.is_main:
        return None
    final = ctx.output_dir / "final"
    checkpoints.save_model_folder(final, model=recipe.saved_model(), tokenizer=recipe.tokenizer, state_dict=full)
    _say(ctx, f"final model written to {final}")
    return final


def _evaluate(recipe: Recipe, step: int) -> None:
    """Run the recipe's evaluation and report it as eval/* at this step.

    Eval mode (no dropout), no autograd, and a random stream of its own, seeded from (seed, step): sampling
    held-out completions neither depends on nor disturbs the training stream, so a resumed run evaluates
    and trains exactly as an uninterrupted one.
    """
    ctx = recipe.ctx
    model = unwrap(recipe.model)
    model.train(False)
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    try:
        # gathered: under FSDP2 ranks evaluate shares of different sizes, so their forwards must not need collectives
        with (
            gathered(recipe.model, ctx.dist),
            torch.random.fork_rng(devices=devices),
            torch.no_grad(),
            compute_autocast(ctx.config, ctx.device),
        ):
            torch.manual_seed(ctx.spec.seed * 1_000_003 + step + 7_777_777)
            began = time.perf_counter()
            found = recipe.evaluate(step)
            found["runtime"] = time.perf_counter() - began
    finally:
        model.train(True)
    metrics = {f"eval/{k}": v for k, v in found.items()}
    if ctx.dist.is_main:
        ctx.reporter.log(metrics, step)
        _say(ctx, f"eval {step}/{ctx.config.max_steps} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


def _table_due(config: BaseRecipeConfig, step: int) -> bool:
    every = config.sample_table_steps
    return bool(every) and (step % every == 0 or step == config.max_steps)


def _checkpoint(
    recipe: Recipe, step: int, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> None:
    ctx = recipe.ctx
    local = recipe.state_dict()
    # Every rank's recipe state goes into rank 0's file (each rank reuses its own generation batch).
    per_rank: list[object] = [local]
    if ctx.dist.enabled:
        per_rank = [None] * ctx.dist.world_size
        dist.all_gather_object(per_rank, local)
    # Collectives under FSDP2 (every rank gathers its shards); plain reads otherwise. Rank 0 alone writes.
    weights = full_model_state(recipe.model, ctx.dist)
    optimizer_state = full_optimizer_state(optimizer, ctx.dist)
    if not ctx.dist.is_main:
        return
    path = checkpoints.save_checkpoint(
        output_dir=ctx.output_dir,
        step=step,
        model=recipe.saved_model(),
        tokenizer=recipe.tokenizer,
        optimizer_state=optimizer_state,
        scheduler=scheduler,
        recipe_states=per_rank,
        state_dict=weights,
    )
    ctx.reporter.log_checkpoint(step, str(path))
    _say(ctx, f"checkpoint written to {path}")


def _shown(key: str) -> bool:
    """Keys worth a place on the human-readable log line (all of them go to the reporter)."""
    return "/" not in key or key.startswith(("rewards/", "sft/"))


def _say(ctx: RunContext, line: str) -> None:
    if ctx.dist.is_main:
        print(line, flush=True)  # noqa: T201 - stdout is the run's log


__all__ = ["TINY", "Recipe", "RunContext", "chat_renderer", "run_training", "schedule_factor", "seed_step"]
