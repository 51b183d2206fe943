"""GRPO and its variants: sample G completions per prompt, score them, push up the better ones of each group.

One optimiser step = one generation batch (``batch_size`` prompts x G) consumed ``num_iterations`` times;
the loss aggregation, advantage scaling, clipping, KL, GTPO and GRPO-Guard options live in losses.py.
An optional SFT warm start (``sft_warmup_steps``) runs first: a random-init model cannot discover an
answer it never samples (measured on a+b=: GRPO from scratch only learned formatting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist

from training.engine.batching import encode_pairs, encode_prompt, positions, token_entropy, token_logprobs
from training.engine.config import DemoGRPOConfig, GRPOConfig
from training.engine.data import PromptExample, SupervisedExample, load_dataset, step_batch
from training.engine.demo_tasks import addition_prompts, addition_supervised
from training.engine.distributed import unwrap, wrap_ddp
from training.engine.losses import (
    aggregate_token_loss,
    clip_ratio_metrics,
    clipped_token_loss,
    group_advantages,
    gtpo_conflict_mask,
    gtpo_entropy_keep,
    gtpo_token_weights,
    guard_normalised_log_ratio,
    k3_kl,
    sft_loss,
)
from training.engine.modeling import TINY, load_causal_lm
from training.engine.recipes.base import Recipe, RunContext, chat_renderer
from training.engine.rewards.registry import build_reward
from training.engine.rollout import RolloutBackend, choose_backend
from training.engine.rollout.hf import HFRollout


@dataclass
class GenerationBatch:
    """One batch of rollouts with everything the loss needs, reused for ``num_iterations`` steps."""

    input_ids: torch.Tensor  # (N, P + T) prompt (left-padded) then completion
    attention_mask: torch.Tensor
    prompt_width: int
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T)
    advantages: torch.Tensor  # (N,)
    old_logps: torch.Tensor | None  # (N, T), only when num_iterations > 1
    ref_logps: torch.Tensor | None  # (N, T), only when beta > 0
    metrics: dict[str, float]


class GRPORecipe(Recipe):
    """Group Relative Policy Optimisation (Shao et al. 2024) with Dr. GRPO, DAPO, GTPO and GRPO-Guard options."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = config = cast(GRPOConfig, ctx.config)
        self.prompts, self.warm_data = self._data(config)
        self.tokenizer = ctx.tokenizer_for([*self.prompts, *self.warm_data])
        if config.dataset_path and getattr(self.tokenizer, "chat_template", None):
            render = chat_renderer(self.tokenizer)
            self.prompts = cast(list[PromptExample], load_dataset(config.dataset_path, kind="prompt", render=render))  # type: ignore[arg-type]
        policy = load_causal_lm(
            ctx.policy_path, config=config, tokenizer=self.tokenizer, seed=ctx.spec.seed, device=ctx.device
        )
        policy.train()
        self.policy = policy
        self.model = wrap_ddp(policy, ctx.dist)
        self.use_kl = config.beta > 0 and config.variant != "gtpo"  # GTPO replaces the KL term by its filter
        self.ref = None
        if self.use_kl:
            ref_path = config.ref_model_name_or_path or config.model_name_or_path
            self.ref = load_causal_lm(
                ref_path, config=config, tokenizer=self.tokenizer, seed=ctx.spec.seed, device=ctx.device
            ).eval()
            self.ref.requires_grad_(False)
        self.reward = build_reward(config, device=ctx.device)
        self.backend_name = choose_backend(config.rollout_backend)
        self.rollout = self._rollout_backend()
        self.batch: GenerationBatch | None = None
        self.tokens_seen = 0.0
        self.pad_id = int(self.tokenizer.pad_token_id or 0)

    def _data(self, config: GRPOConfig) -> tuple[list[PromptExample], list[SupervisedExample]]:
        if config.dataset_path:
            prompts = cast(list[PromptExample], load_dataset(config.dataset_path, kind="prompt"))
            warm = [SupervisedExample(p.prompt, p.answer) for p in prompts if p.answer]
            return prompts, warm
        noise = config.label_noise if isinstance(config, DemoGRPOConfig) else 0.0
        return addition_prompts(), addition_supervised(n=4000, seed=4321, label_noise=noise)

    def _rollout_backend(self) -> RolloutBackend:
        if self.backend_name == "vllm":
            from training.engine.rollout.vllm import VLLMRollout

            path = self.ctx.policy_path
            if path == TINY:  # vLLM loads from a folder: hand it the freshly built weights
                from training.engine.checkpoints import save_model_folder

                folder = self.ctx.output_dir / "rollout-init"
                save_model_folder(folder, model=self.policy, tokenizer=self.tokenizer)
                path = str(folder)
            return VLLMRollout(
                path,
                pad_token_id=int(self.tokenizer.pad_token_id or 0),
                gpu_memory_utilization=self.config.vllm_gpu_memory_utilization,
                max_model_len=self.config.max_length + self.config.max_new_tokens,
                seed=self.ctx.spec.seed,
            )
        return HFRollout(
            self.policy, pad_token_id=int(self.tokenizer.pad_token_id or 0), eos_token_id=self.tokenizer.eos_token_id
        )

    def lr_factor(self, step: int) -> float:
        """Warm-start steps run at ``sft_learning_rate``."""
        if step <= self.config.sft_warmup_steps:
            return self.config.sft_learning_rate / self.config.learning_rate
        return 1.0

    def after_update(self, step: int) -> None:
        """Push the new weights into the rollout engine (a no-op for the HF backend, which samples the model)."""
        if self.backend_name == "vllm":
            self.rollout.sync_weights(unwrap(self.model))

    def train_step(self, step: int) -> dict[str, float]:
        """A warm-start SFT step, or a GRPO step on the current (or a fresh) generation batch."""
        if step <= self.config.sft_warmup_steps:
            return self._sft_step(step)
        rl_step = step - self.config.sft_warmup_steps
        if self.batch is None or (rl_step - 1) % self.config.num_iterations == 0:
            self.batch = self._generate(rl_step)
        return self._policy_step(self.batch)

    def _sft_step(self, step: int) -> dict[str, float]:
        batch = step_batch(
            self.warm_data,
            batch_size=self.config.batch_size * 4,
            step=step,
            seed=self.ctx.spec.seed,
            rank=self.ctx.dist.rank,
            world_size=self.ctx.dist.world_size,
        )
        pairs = [(e.prompt, e.completion) for e in cast(list[SupervisedExample], batch)]
        tokens = encode_pairs(self.tokenizer, pairs, max_length=self.config.max_length).to(self.ctx.device)
        logits = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits
        loss, accuracy = sft_loss(logits, tokens.labels)
        loss.backward()
        return {"sft/loss": float(loss.detach()), "sft/mean_token_accuracy": accuracy}

    @torch.no_grad()
    def _generate(self, rl_step: int) -> GenerationBatch:
        config, g = self.config, self.config.num_generations
        generation_index = (rl_step - 1) // config.num_iterations + 1
        examples = cast(
            list[PromptExample],
            step_batch(
                self.prompts,
                batch_size=config.batch_size,
                step=generation_index,
                seed=self.ctx.spec.seed,
                rank=self.ctx.dist.rank,
                world_size=self.ctx.dist.world_size,
            ),
        )
        prompt_rows = [encode_prompt(self.tokenizer, e.prompt)[-self.config.max_length :] for e in examples]
        rollout = self.rollout.generate(
            prompt_rows, n=g, max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
        )
        device = self.ctx.device
        completion_ids = rollout.completion_ids.to(device)
        completion_mask = rollout.completion_mask.to(device)
        texts = self.tokenizer.batch_decode(
            [ids[: int(m.sum())] for ids, m in zip(completion_ids.tolist(), completion_mask, strict=True)],
            skip_special_tokens=True,
        )
        repeated = [e for e in examples for _ in range(g)]
        scored = self.reward(texts, repeated)
        rewards = scored.total
        advantages = group_advantages(rewards, group_size=g, scale=config.scale_rewards).to(device)
        width = max(len(r) for r in prompt_rows)
        prompt_ids = torch.full((len(prompt_rows) * g, width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros_like(prompt_ids)
        for i, row in enumerate(prompt_rows):
            prompt_ids[i * g : (i + 1) * g, width - len(row) :] = torch.tensor(row)
            prompt_mask[i * g : (i + 1) * g, width - len(row) :] = 1
        input_ids = torch.cat([prompt_ids.to(device), completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask.to(device), completion_mask], dim=1)
        batch = GenerationBatch(
            input_ids, attention_mask, width, completion_ids, completion_mask, advantages, None, None, {}
        )
        if config.num_iterations > 1:
            batch.old_logps = self._logps(unwrap(self.model), batch)[0]
        if self.ref is not None:
            batch.ref_logps = self._logps(self.ref, batch)[0]
        lengths = completion_mask.sum(1).float()
        grouped = rewards.view(-1, g)
        batch.metrics = {
            "reward": float(rewards.mean()),
            "reward_std": float(grouped.std(dim=1).mean()),
            "frac_reward_zero_std": float((grouped.std(dim=1) < 1e-6).float().mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float((~rollout.finished).float().mean()),
        }
        for name, values in scored.per_func.items():
            batch.metrics[f"rewards/{name}/mean"] = float(values.mean())
            batch.metrics[f"rewards/{name}/std"] = float(values.std()) if values.numel() > 1 else 0.0
        self.tokens_seen += float(attention_mask.sum()) * self.ctx.dist.world_size
        return batch

    def _logps(self, model: torch.nn.Module, batch: GenerationBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs and entropies of the completion tokens (logits divided by the temperature, as TRL)."""
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions(batch.attention_mask)
        ).logits
        p, t = batch.prompt_width, batch.completion_ids.size(1)
        logits = logits[:, p - 1 : p - 1 + t] / self.config.temperature
        targets = batch.completion_ids.masked_fill(batch.completion_mask == 0, -100)
        return token_logprobs(logits, targets), token_entropy(logits.detach())

    def _policy_step(self, batch: GenerationBatch) -> dict[str, float]:
        config = self.config
        logps, entropy = self._logps(self.model, batch)
        mask = batch.completion_mask.float()
        old = batch.old_logps if batch.old_logps is not None else logps.detach()
        metrics = dict(batch.metrics)
        log_ratio = guard_normalised_log_ratio(logps, old, mask) if config.variant == "grpo_guard" else None
        per_token, ratio = clipped_token_loss(
            logps,
            old,
            batch.advantages,
            epsilon_low=config.epsilon_low,
            epsilon_high=config.epsilon_high,
            log_ratio=log_ratio,
        )
        seq_entropy = (entropy * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if config.variant == "gtpo":
            conflict = gtpo_conflict_mask(
                batch.completion_ids, batch.completion_mask, batch.advantages, group_size=config.num_generations
            )
            per_token = per_token * gtpo_token_weights(conflict, batch.advantages, boost=config.gtpo_conflict_boost)
            threshold = config.gtpo_entropy_threshold or math.log(len(self.tokenizer)) / 2
            keep = gtpo_entropy_keep(seq_entropy, threshold=threshold)
            mask = mask * keep[:, None]
            metrics["gtpo/conflict_frac"] = float((conflict.float() * batch.completion_mask).sum() / mask.numel())
            metrics["gtpo/kept_frac"] = float(keep.mean())
        if batch.ref_logps is not None:
            kl = k3_kl(logps, batch.ref_logps)
            per_token = per_token + config.beta * kl
            metrics["kl"] = float((kl.detach() * mask).sum() / mask.sum().clamp(min=1.0))
        num_items = float(mask.sum())
        if self.ctx.dist.enabled:
            total = torch.tensor(num_items, device=mask.device)
            dist.all_reduce(total)
            num_items = float(total) / self.ctx.dist.world_size  # DDP averages gradients over ranks
        loss = aggregate_token_loss(
            per_token,
            mask,
            loss_type=config.loss_type,
            max_completion_length=config.max_new_tokens,
            num_items_in_batch=num_items,
        )
        loss.backward()
        metrics.update(
            clip_ratio_metrics(
                ratio.detach(),
                batch.advantages,
                batch.completion_mask,
                epsilon_low=config.epsilon_low,
                epsilon_high=config.epsilon_high,
            )
        )
        metrics["loss"] = float(loss.detach())
        metrics["entropy"] = float((entropy * batch.completion_mask).sum() / batch.completion_mask.sum().clamp(min=1))
        metrics["num_tokens"] = self.tokens_seen
        return metrics
