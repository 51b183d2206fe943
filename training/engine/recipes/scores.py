"""Recipes that learn from scores people gave: a reward model on ratings or rubric pass rates, a process reward
model on agent steps marked as violating a policy, and a rubric judge taught people's per-item verdicts.

ScoreRewardRecipe (``reward_regression``, ``process_reward_model``): a one-logit sequence classifier on prompt +
response, fitted to the score s in [0, 1] of each row by
  regression      L = mean (r - s)^2                                   (a reward-model regression target)
  classification  L = mean -[s log σ(r) + (1 - s) log(1 - σ(r))]      (a step's label; s may be a vote share)
Its held-out metric is ``pair_accuracy``: over held-out pairs with different scores, how often the model orders
them as people did (0.5 is chance); classification also logs ``accuracy`` beside ``majority_accuracy``, what
always answering the commoner label scores.

RubricJudgeRecipe (``rubric_judge``): SFT on (judge question, " yes"/" no") rows, spelled as RubricJudge reads
them (rewards/models.py); its held-out ``agreement`` is the share of held-out items on which the judge's verdict
(its "yes" logit against its "no" logit) equals the people's: the judge's agreement with people.
"""

from __future__ import annotations

from itertools import combinations
from typing import cast

import torch
import torch.nn.functional as F

from training.engine.batching import EncodedRow, encode_prompt, encode_supervised, pad_rows
from training.engine.config import ScoreRewardConfig
from training.engine.data import DatasetKind, ScoredExample, SupervisedExample, load_dataset, step_indices
from training.engine.distributed import unwrap, wrap_ddp
from training.engine.recipes.base import Recipe, RunContext
from training.engine.recipes.sft import SFTRecipe
from training.engine.rewards.models import answer_spellings
from training.engine.sample_tables import SampleTable, fixed_indices
from training.engine.truncation import Truncation, check_usable

KINDS: dict[str, DatasetKind] = {"reward_regression": "scored", "process_reward_model": "steps"}


def score_loss(rewards: torch.Tensor, scores: torch.Tensor, *, objective: str) -> torch.Tensor:
    """The loss of the head's outputs against the scores (see the module docstring)."""
    if objective == "classification":
        return F.binary_cross_entropy_with_logits(rewards, scores)
    return F.mse_loss(rewards, scores)


def pair_accuracy(rewards: list[float], scores: list[float]) -> float | None:
    """Share of pairs with different scores that the rewards order the same way (ties in reward count half);
    None when every score is equal."""
    agree, pairs = 0.0, 0
    for i, j in combinations(range(len(scores)), 2):
        if scores[i] == scores[j]:
            continue
        pairs += 1
        d = (rewards[i] - rewards[j]) * (scores[i] - scores[j])
        agree += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    return agree / pairs if pairs else None


class ScoreRewardRecipe(Recipe):
    """A scalar head on the LM fitted to people's scores of responses (or of steps)."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = config = cast(ScoreRewardConfig, ctx.config)
        kind = KINDS[ctx.spec.recipe]
        if not config.dataset_path:
            raise ValueError(f"{ctx.spec.recipe} trains on a study's reward export: set dataset_path")
        examples = cast(list[ScoredExample], load_dataset(config.dataset_path, kind=kind))
        if not examples:
            raise ValueError(f"{config.dataset_path}: no row has a score")
        self.tokenizer = ctx.tokenizer_for(list(examples), kind=kind)
        train, held = ctx.held_out(examples, kind=kind)
        self.examples = cast(list[ScoredExample], train)
        self.eval_examples = held
        self.rows, self.scores, self.examples = self._encode(self.examples)
        self.eval_rows, self.eval_scores, self.eval_kept = self._encode(
            cast(list[ScoredExample], held), what="held-out "
        )
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.model = wrap_ddp(ctx.load_policy(self.tokenizer, head="sequence_classifier"), ctx.dist)

    def _encode(
        self, examples: list[ScoredExample], *, what: str = ""
    ) -> tuple[list[EncodedRow], torch.Tensor, list[ScoredExample]]:
        """Rows, scores and the examples they came from, without those truncation left unusable (aligned)."""
        if not examples:
            return [], torch.zeros(0), []
        limits = Truncation(*self.config.truncation_limits())
        rows, report = encode_supervised(self.tokenizer, [(e.prompt, e.response) for e in examples], limits)
        self.ctx.say(f"{what}examples: {report.summary(limits)}")
        check_usable(report, limits)
        kept = [(row, e) for row, e in zip(rows, examples, strict=True) if row is not None]
        scores = torch.tensor([e.score for _, e in kept], dtype=torch.float32)
        return [row for row, _ in kept], scores, [e for _, e in kept]

    def _rewards(self, model: torch.nn.Module, rows: list[EncodedRow]) -> torch.Tensor:
        tokens = pad_rows(rows, pad_id=self.pad_id, completion_only=False).to(self.ctx.device)
        # Right-padded rows need no mask under causal attention; the head reads each row's last real token.
        logits: torch.Tensor = model(input_ids=tokens.input_ids).logits
        return logits[:, 0].float()

    def train_step(self, step: int) -> dict[str, float]:
        """One batch of the score loss; with accumulation each micro-batch's mean is divided by their count."""
        indices = step_indices(
            len(self.rows),
            batch_size=self.ctx.rank_batch_size,
            step=step,
            seed=self.ctx.spec.seed,
            rank=self.ctx.dist.rank,
            world_size=self.ctx.dist.world_size,
        )
        parts = self.micro_batches(indices)
        loss_total, outputs = 0.0, []
        for i, part in enumerate(parts):
            scores = self.scores[list(part)].to(self.ctx.device)
            with self.gradient_sync(last=i == len(parts) - 1):
                rewards = self._rewards(self.model, [self.rows[j] for j in part])
                loss = score_loss(rewards, scores, objective=self.config.objective)
                torch.autograd.backward(loss / len(parts))
            loss_total += float(loss.detach()) / len(parts)
            outputs.append((rewards.detach(), scores))
        rewards = torch.cat([r for r, _ in outputs])
        scores = torch.cat([s for _, s in outputs])
        metrics = {"loss": loss_total, "rewards/mean": float(rewards.mean()), "rewards/std": float(rewards.std())}
        if self.config.objective == "classification":
            metrics["accuracy"] = float(((rewards > 0) == (scores >= 0.5)).float().mean())
        else:
            metrics["mse"] = float(F.mse_loss(rewards, scores))
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out loss, pair_accuracy (people's order kept; 0.5 is chance) and, for labels, accuracy against
        always answering the majority label. Pairs span ranks, so every rank scores all held-out rows."""
        model = unwrap(self.model)
        size = self.ctx.config.batch_size
        rewards = torch.cat(
            [self._rewards(model, self.eval_rows[s : s + size]) for s in range(0, len(self.eval_rows), size)]
        ).cpu()
        scores = self.eval_scores
        metrics = {"loss": float(score_loss(rewards, scores, objective=self.config.objective))}
        if (pairs := pair_accuracy(rewards.tolist(), scores.tolist())) is not None:
            metrics["pair_accuracy"] = pairs
        if self.config.objective == "classification":
            positive = scores >= 0.5
            metrics["accuracy"] = float(((rewards > 0) == positive).float().mean())
            share = float(positive.float().mean())
            metrics["majority_accuracy"] = max(share, 1.0 - share)
        return metrics

    @torch.no_grad()
    def sample_table(self, step: int) -> SampleTable | None:
        """A fixed handful of rows: the model's reward beside the people's score."""
        if not self.can_sample_alone() or not self.rows:
            return None
        examples, rows, scores = (
            (self.eval_kept, self.eval_rows, self.eval_scores)
            if self.eval_rows
            else (self.examples, self.rows, self.scores)
        )
        picked = fixed_indices(len(rows), k=self.ctx.config.sample_table_rows, seed=0)
        model = unwrap(self.model)
        was_training = model.training
        model.train(False)
        rewards = self._rewards(model, [rows[i] for i in picked]).tolist()
        model.train(was_training)
        table = SampleTable(["prompt", "response", "score", "reward"])
        for i, reward in zip(picked, rewards, strict=True):
            table.add(examples[i].prompt, examples[i].response, float(scores[i]), round(reward, 4))
        return table


class RubricJudgeRecipe(SFTRecipe):
    """SFT of a yes/no judge on people's per-item verdicts; logs its held-out agreement with people."""

    dataset_kind: DatasetKind = "rubric_items"

    def _examples(self, ctx: RunContext) -> list[SupervisedExample]:
        if not ctx.config.dataset_path:
            raise ValueError("rubric_judge trains on a rubric study's reward export: set dataset_path")
        rows = cast(list[SupervisedExample], load_dataset(ctx.config.dataset_path, kind=self.dataset_kind))
        if not rows:
            raise ValueError(f"{ctx.config.dataset_path}: no rubric item has a verdict")
        return rows

    def _respelled(self, examples: list[SupervisedExample]) -> list[SupervisedExample]:
        spelling = answer_spellings(self.tokenizer)
        if spelling is None:
            raise ValueError("this tokenizer does not tell 'yes' from 'no' by their first token")
        yes, no = spelling[0], spelling[1]
        return [SupervisedExample(e.prompt, yes if e.completion.strip() == "yes" else no) for e in examples]

    def _encode(self, ctx: RunContext, examples: list[SupervisedExample], *, what: str = "") -> list[EncodedRow]:
        # Taught in the spelling the judge reward compares ("yes" against "no" by first token).
        return super()._encode(ctx, self._respelled(examples), what=what)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out loss and token accuracy, plus ``agreement``: verdicts equal to the people's."""
        metrics = super().evaluate(step)
        spelling = answer_spellings(self.tokenizer)
        assert spelling is not None
        yes_id, no_id = spelling[2], spelling[3]
        model = unwrap(self.model)
        held = cast(list[SupervisedExample], self.eval_examples)
        agree = 0
        for example in held:
            ids = torch.tensor([encode_prompt(self.tokenizer, example.prompt)], device=self.ctx.device)
            logits = model(input_ids=ids).logits[0, -1]
            said_yes = bool(logits[yes_id] > logits[no_id])
            agree += said_yes == (example.completion.strip() == "yes")
        if held:
            metrics["agreement"] = agree / len(held)
            share = sum(e.completion.strip() == "yes" for e in held) / len(held)
            metrics["majority_agreement"] = max(share, 1.0 - share)
        return metrics
