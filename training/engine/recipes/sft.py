"""Supervised fine-tuning: next-token cross-entropy on completion tokens only (prompt tokens are masked)."""

from __future__ import annotations

import time
from typing import cast

import torch

from training.engine.batching import EncodedRow, encode_supervised, pad_rows
from training.engine.config import DemoConfig, SequenceDataConfig, SFTConfig
from training.engine.data import SupervisedExample, load_dataset, step_indices
from training.engine.demo_tasks import sorting_supervised
from training.engine.distributed import wrap_ddp
from training.engine.losses import sft_loss
from training.engine.modeling import load_causal_lm
from training.engine.recipes.base import Recipe, RunContext, chat_renderer
from training.engine.truncation import Truncation, check_usable


class SFTRecipe(Recipe):
    """Causal LM on prompt/completion data."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = cast(SFTConfig, ctx.config)
        examples = self._examples(ctx)
        self.tokenizer = ctx.tokenizer_for(list(examples))
        if ctx.config.dataset_path:  # re-read with the chat template, now that the tokenizer is known
            render = chat_renderer(self.tokenizer)
            examples = cast(
                list[SupervisedExample],
                load_dataset(ctx.config.dataset_path, kind="supervised", render=render),
            )
        self.examples = examples
        self.rows = self._encode(ctx, examples)
        policy = load_causal_lm(
            ctx.policy_path, config=ctx.config, tokenizer=self.tokenizer, seed=ctx.spec.seed, device=ctx.device
        )
        policy.train()
        self.model = wrap_ddp(policy, ctx.dist)

    def _encode(self, ctx: RunContext, examples: list[SupervisedExample]) -> list[EncodedRow]:
        """Tokenise and truncate the dataset once; log what truncation did and stop on mostly unusable data."""
        config = ctx.config
        if isinstance(config, SequenceDataConfig):
            limits = Truncation(*config.truncation_limits())
        else:  # the demo's short built-in data: one cap, nothing to size
            limits = Truncation(config.max_length, max(1, config.max_length // 2))
        rows, report = encode_supervised(self.tokenizer, [(e.prompt, e.completion) for e in examples], limits)
        ctx.say(report.summary(limits))
        check_usable(report, limits)
        if report.dropped_indices:
            ctx.say(f"left out {len(report.dropped_indices)} unusable examples; training on {report.usable}")
        return [row for row in rows if row is not None]

    def _examples(self, ctx: RunContext) -> list[SupervisedExample]:
        if ctx.config.dataset_path:
            return cast(list[SupervisedExample], load_dataset(ctx.config.dataset_path, kind="supervised"))
        return sorting_supervised(n=2000, seed=1234)

    def train_step(self, step: int) -> dict[str, float]:
        """One batch of next-token cross-entropy."""
        indices = step_indices(
            len(self.rows),
            batch_size=self.ctx.config.batch_size,
            step=step,
            seed=self.ctx.spec.seed,
            rank=self.ctx.dist.rank,
            world_size=self.ctx.dist.world_size,
        )
        completion_only = getattr(self.config, "completion_only_loss", True)
        tokens = pad_rows(
            [self.rows[i] for i in indices],
            pad_id=int(self.tokenizer.pad_token_id or 0),
            completion_only=completion_only,
        ).to(self.ctx.device)
        # Right-padded rows under causal attention need no mask (see preference._sequence_logps).
        logits = self.model(input_ids=tokens.input_ids).logits
        loss, accuracy = sft_loss(logits, tokens.labels)
        torch.autograd.backward(loss)
        n_tokens = int((tokens.labels[:, 1:] != -100).sum())
        return {"loss": float(loss.detach()), "mean_token_accuracy": accuracy, "num_tokens": float(n_tokens)}


class DemoRecipe(SFTRecipe):
    """The toy sorting task on a tiny model: the loss visibly falls within a minute on one CPU thread."""

    def _examples(self, ctx: RunContext) -> list[SupervisedExample]:
        return sorting_supervised(n=2000, seed=1234)

    def train_step(self, step: int) -> dict[str, float]:
        """An SFT step, optionally slowed down so a person can watch it."""
        metrics = super().train_step(step)
        delay = cast(DemoConfig, self.ctx.config).step_delay_s
        if delay:
            time.sleep(delay)
        return metrics
