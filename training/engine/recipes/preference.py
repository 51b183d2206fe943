"""Pairwise recipes on {prompt, chosen, rejected}: a Bradley-Terry reward model, and DPO against a frozen reference."""

from __future__ import annotations

from typing import cast

import torch

from training.engine.batching import IGNORE, TokenBatch, encode_pairs, token_logprobs
from training.engine.config import DPOConfig, RewardModelConfig
from training.engine.data import PreferenceExample, load_dataset, step_batch
from training.engine.demo_tasks import sorting_preferences
from training.engine.distributed import wrap_ddp
from training.engine.losses import bradley_terry_loss, dpo_loss
from training.engine.modeling import frozen, load_causal_lm, load_sequence_classifier
from training.engine.recipes.base import Recipe, RunContext, chat_renderer


def _preference_data(ctx: RunContext) -> list[PreferenceExample]:
    if ctx.config.dataset_path:
        return cast(list[PreferenceExample], load_dataset(ctx.config.dataset_path, kind="preference"))
    return sorting_preferences(n=2000, seed=99)


class _PairRecipe(Recipe):
    def _load_data(self, ctx: RunContext) -> None:
        self.examples = _preference_data(ctx)
        self.tokenizer = ctx.tokenizer_for(list(self.examples))
        if ctx.config.dataset_path and getattr(self.tokenizer, "chat_template", None):
            render = chat_renderer(self.tokenizer)
            self.examples = cast(
                list[PreferenceExample],
                load_dataset(ctx.config.dataset_path, kind="preference", render=render),
            )

    def _pair_tokens(self, step: int, *, completion_only: bool) -> tuple[TokenBatch, int]:
        """Chosen rows then rejected rows in one batch (one forward pass for both halves)."""
        batch = cast(
            list[PreferenceExample],
            step_batch(
                self.examples,
                batch_size=self.ctx.config.batch_size,
                step=step,
                seed=self.ctx.spec.seed,
                rank=self.ctx.dist.rank,
                world_size=self.ctx.dist.world_size,
            ),
        )
        pairs = [(e.prompt, e.chosen) for e in batch] + [(e.prompt, e.rejected) for e in batch]
        tokens = encode_pairs(
            self.tokenizer, pairs, max_length=self.ctx.config.max_length, completion_only=completion_only
        )
        return tokens.to(self.ctx.device), len(batch)


class RewardModelRecipe(_PairRecipe):
    """A scalar head on the LM scores prompt + completion; trained so r(chosen) > r(rejected)."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = cast(RewardModelConfig, ctx.config)
        self._load_data(ctx)
        model = load_sequence_classifier(
            ctx.policy_path, config=ctx.config, tokenizer=self.tokenizer, seed=ctx.spec.seed, device=ctx.device
        )
        model.train()
        self.model = wrap_ddp(model, ctx.dist)

    def train_step(self, step: int) -> dict[str, float]:
        """One batch of the Bradley-Terry loss; logs accuracy (r_w > r_l) and margin (mean r_w - r_l)."""
        tokens, b = self._pair_tokens(step, completion_only=False)
        rewards = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits[:, 0].float()
        loss = bradley_terry_loss(rewards[:b], rewards[b:], center_coefficient=self.config.center_rewards_coefficient)
        torch.autograd.backward(loss)
        chosen, rejected = rewards[:b].detach(), rewards[b:].detach()
        return {
            "loss": float(loss.detach()),
            "accuracy": float((chosen > rejected).float().mean()),
            "margin": float((chosen - rejected).mean()),
            "rewards/chosen": float(chosen.mean()),
            "rewards/rejected": float(rejected.mean()),
        }


class DPORecipe(_PairRecipe):
    """DPO: the policy's log-ratio to a frozen reference, pushed up on chosen and down on rejected."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = config = cast(DPOConfig, ctx.config)
        self._load_data(ctx)
        policy = load_causal_lm(
            ctx.policy_path, config=config, tokenizer=self.tokenizer, seed=ctx.spec.seed, device=ctx.device
        )
        policy.train()
        # The reference is the starting model, never the checkpoint being resumed: the objective must not move.
        ref_path = config.ref_model_name_or_path or config.model_name_or_path
        self.ref = frozen(
            load_causal_lm(ref_path, config=config, tokenizer=self.tokenizer, seed=ctx.spec.seed, device=ctx.device)
        )
        self.model = wrap_ddp(policy, ctx.dist)

    def train_step(self, step: int) -> dict[str, float]:
        """One batch of the DPO loss with TRL's metric names."""
        tokens, b = self._pair_tokens(step, completion_only=True)
        logps = _sequence_logps(self.model, tokens)
        with torch.inference_mode():
            ref_logps = _sequence_logps(self.ref, tokens)
        loss, chosen_r, rejected_r = dpo_loss(
            logps[:b],
            logps[b:],
            ref_logps[:b],
            ref_logps[b:],
            beta=self.config.beta,
            label_smoothing=self.config.label_smoothing,
        )
        torch.autograd.backward(loss)
        return {
            "loss": float(loss.detach()),
            "rewards/chosen": float(chosen_r.mean()),
            "rewards/rejected": float(rejected_r.mean()),
            "rewards/accuracies": float((chosen_r > rejected_r).float().mean()),
            "rewards/margins": float((chosen_r - rejected_r).mean()),
            "logps/chosen": float(logps[:b].detach().mean()),
            "logps/rejected": float(logps[b:].detach().mean()),
        }


def _sequence_logps(model: torch.nn.Module, tokens: TokenBatch) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) over each row's labelled (completion) tokens.

    Only positions from the batch's first labelled one go through the LM head: prompt logits are never used,
    and on a real vocabulary they are most of the head's cost.
    """
    labelled = (tokens.labels != IGNORE).any(0).nonzero()
    width = tokens.labels.size(1)
    first = max(1, int(labelled[0])) if labelled.numel() else width - 1
    logits = model(
        input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, logits_to_keep=width - first + 1
    ).logits[:, :-1]
    targets = tokens.labels[:, first:]
    return token_logprobs(logits, targets).sum(-1)
