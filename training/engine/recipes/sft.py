"""Supervised fine-tuning: next-token cross-entropy on completion tokens only (prompt tokens are masked)."""

from __future__ import annotations

import time
from typing import cast

import torch

from training.engine.batching import EncodedRow, TokenBatch, encode_supervised, pad_rows
from training.engine.config import DemoConfig, SequenceDataConfig, SFTConfig
from training.engine.data import DatasetKind, SupervisedExample, load_dataset, step_indices
from training.engine.demo_tasks import sorting_supervised
from training.engine.distributed import DistInfo, all_sum, unwrap, wrap_model
from training.engine.losses import sft_loss
from training.engine.recipes.base import Recipe, RunContext, chat_renderer
from training.engine.sample_tables import SampleTable, fixed_indices, greedy_completions
from training.engine.truncation import Truncation, check_usable


def global_token_metrics(loss: float, correct: float, tokens: float, info: DistInfo) -> dict[str, float]:
    """SFT's metrics over every rank's tokens. ``loss`` is this rank's share of the token mean times
    world_size (token_normaliser: gradients are averaged over ranks), so the ranks' mean is the global mean."""
    total = all_sum({"loss": loss, "correct": correct, "tokens": tokens}, info)
    return {
        "loss": total["loss"] / info.world_size,
        "mean_token_accuracy": total["correct"] / max(total["tokens"], 1.0),
        "num_tokens": total["tokens"],
    }


class SFTRecipe(Recipe):
    """Causal LM on prompt/completion data."""

    dataset_kind: DatasetKind = "supervised"  # how dataset_path's rows are read (rubric_judge reads its own)
    metrics_are_global = True  # token-weighted over every rank's rows (train_step)

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = cast(SFTConfig, ctx.config)
        examples = self._examples(ctx)
        kind = self.dataset_kind
        self.tokenizer = ctx.tokenizer_for(list(examples), kind=kind)
        render = chat_renderer(self.tokenizer)
        if ctx.config.dataset_path:  # re-read with the chat template, now that the tokenizer is known
            examples = cast(list[SupervisedExample], load_dataset(ctx.config.dataset_path, kind=kind, render=render))
        train, held = ctx.held_out(examples, kind=kind, render=render)
        self.examples = cast(list[SupervisedExample], train)
        self.eval_examples = held
        self.rows = self._encode(ctx, self.examples)
        self.eval_rows = self._encode(ctx, cast(list[SupervisedExample], held), what="held-out") if held else []
        self.model = wrap_model(ctx.load_policy(self.tokenizer), ctx.dist)

    def _encode(self, ctx: RunContext, examples: list[SupervisedExample], *, what: str = "") -> list[EncodedRow]:
        """Tokenise and truncate the dataset once; log what truncation did and stop on mostly unusable data."""
        config = ctx.config
        if isinstance(config, SequenceDataConfig):
            limits = Truncation(*config.truncation_limits())
        else:  # the demo's short built-in data: one cap, nothing to size
            limits = Truncation(config.max_length, max(1, config.max_length // 2))
        rows, report = encode_supervised(self.tokenizer, [(e.prompt, e.completion) for e in examples], limits)
        ctx.say(f"{what} examples: {report.summary(limits)}" if what else report.summary(limits))
        check_usable(report, limits)
        if report.dropped_indices:
            ctx.say(f"left out {len(report.dropped_indices)} unusable examples; training on {report.usable}")
        return [row for row in rows if row is not None]

    def _examples(self, ctx: RunContext) -> list[SupervisedExample]:
        if ctx.config.dataset_path:
            return cast(list[SupervisedExample], load_dataset(ctx.config.dataset_path, kind="supervised"))
        return sorting_supervised(n=2000, seed=1234)

    def train_step(self, step: int) -> dict[str, float]:
        """One batch of next-token cross-entropy, in ``gradient_accumulation_steps`` micro-batches.

        Each micro-batch's loss is its token sum over the step's token count (all micro-batches, all ranks),
        so the accumulated gradient is that of the whole batch's token mean, as TRL's SFTTrainer computes it.
        """
        indices = step_indices(
            len(self.rows),
            batch_size=self.ctx.rank_batch_size,
            step=step,
            seed=self.ctx.spec.seed,
            rank=self.ctx.dist.rank,
            world_size=self.ctx.dist.world_size,
        )
        micro = [self._tokens(list(rows)) for rows in self.micro_batches([self.rows[i] for i in indices])]
        counts = [int((tokens.labels[:, 1:] != -100).sum()) for tokens in micro]
        normaliser = self.token_normaliser(float(sum(counts)))
        loss_total, correct = 0.0, 0.0
        for i, tokens in enumerate(micro):
            with self.gradient_sync(last=i == len(micro) - 1):
                # Right-padded rows under causal attention need no mask (see preference._sequence_logps).
                logits = self.model(input_ids=tokens.input_ids).logits
                loss, accuracy = sft_loss(logits, tokens.labels, num_items_in_batch=normaliser)
                torch.autograd.backward(loss)
            loss_total += float(loss.detach())
            correct += accuracy * counts[i]
        return global_token_metrics(loss_total, correct, float(sum(counts)), self.ctx.dist)

    def _tokens(self, rows: list[EncodedRow]) -> TokenBatch:
        completion_only = getattr(self.config, "completion_only_loss", True)
        return pad_rows(rows, pad_id=int(self.tokenizer.pad_token_id or 0), completion_only=completion_only).to(
            self.ctx.device
        )

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out cross-entropy and token accuracy, averaged over every held-out completion token."""
        model = unwrap(self.model)
        mine = self.eval_rows[self.ctx.dist.rank :: self.ctx.dist.world_size]
        size = self.ctx.config.batch_size
        sums = {"loss": 0.0, "correct": 0.0, "tokens": 0.0}
        for start in range(0, len(mine), size):
            tokens = self._tokens(mine[start : start + size])
            loss, accuracy = sft_loss(model(input_ids=tokens.input_ids).logits, tokens.labels)
            n = float((tokens.labels[:, 1:] != -100).sum())
            sums["loss"] += float(loss) * n
            sums["correct"] += accuracy * n
            sums["tokens"] += n
        total = self.reduce_sums(sums)
        n = max(total["tokens"], 1.0)
        return {"loss": total["loss"] / n, "mean_token_accuracy": total["correct"] / n, "num_tokens": total["tokens"]}

    def sample_table(self, step: int) -> SampleTable | None:
        """A fixed handful of training prompts: the model's greedy completion beside the reference one."""
        if not self.can_sample_alone():
            return None
        config = self.ctx.config
        # Held-out examples when there are some (what the model has not trained on), else training ones.
        source = cast(list[SupervisedExample], self.eval_examples) or self.examples
        picked = [source[i] for i in fixed_indices(len(source), k=config.sample_table_rows, seed=0)]
        model = self.sampling_model()
        texts = greedy_completions(
            model,
            self.tokenizer,
            [e.prompt for e in picked],
            max_new_tokens=config.sample_table_max_new_tokens,
            max_prompt_tokens=config.max_length,
        )
        table = SampleTable(["prompt", "completion", "reference"])
        for example, text in zip(picked, texts, strict=True):
            table.add(example.prompt, text, example.completion)
        return table


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
