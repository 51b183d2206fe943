"""Pairwise recipes on {prompt, chosen, rejected}: a Bradley-Terry reward model, and DPO against a frozen reference."""

from __future__ import annotations

from typing import cast

import torch

from training.engine.batching import IGNORE, TokenBatch, encode_pairs, token_logprobs
from training.engine.config import DPOConfig, RewardModelConfig, SequenceDataConfig
from training.engine.data import PreferenceExample, load_dataset, step_indices
from training.engine.demo_tasks import sorting_preferences
from training.engine.distributed import unwrap, wrap_model
from training.engine.losses import bradley_terry_loss, dpo_loss
from training.engine.pairs import (
    EncodedPair,
    SharedPromptBatch,
    encode_preferences,
    plain_pair_batch,
    shared_prompt_batch,
    shared_prompt_logps,
    supports_shared_prompt,
)
from training.engine.recipes.base import Recipe, RunContext, chat_renderer
from training.engine.sample_tables import SampleTable, fixed_indices, greedy_completions
from training.engine.truncation import Truncation, check_usable


def _preference_data(ctx: RunContext) -> list[PreferenceExample]:
    if ctx.config.dataset_path:
        return cast(list[PreferenceExample], load_dataset(ctx.config.dataset_path, kind="preference"))
    return sorting_preferences(n=2000, seed=99)


class _PairRecipe(Recipe):
    def _load_data(self, ctx: RunContext) -> None:
        examples = _preference_data(ctx)
        self.tokenizer = ctx.tokenizer_for(list(examples), kind="preference")
        render = chat_renderer(self.tokenizer)
        if ctx.config.dataset_path and getattr(self.tokenizer, "chat_template", None):
            examples = cast(
                list[PreferenceExample],
                load_dataset(ctx.config.dataset_path, kind="preference", render=render),
            )
        train, held = ctx.held_out(examples, kind="preference", render=render)
        self.eval_examples = held
        self.pairs = self._encode(ctx, cast(list[PreferenceExample], train))
        # The samples table's texts: held-out pairs when there are some (what the model has not trained on).
        self.examples = cast(list[PreferenceExample], held or train)
        self.eval_pairs = self._encode(ctx, cast(list[PreferenceExample], held), what="held-out") if held else []
        self.pad_id = int(self.tokenizer.pad_token_id or 0)

    def _encode(self, ctx: RunContext, examples: list[PreferenceExample], *, what: str = "") -> list[EncodedPair]:
        """Tokenised and truncated once, before the first step: the counts are logged (and mostly unusable
        data stops the run) now, and no step spends time in the tokenizer."""
        limits = Truncation(*cast(SequenceDataConfig, ctx.config).truncation_limits())
        triples = [(e.prompt, e.chosen, e.rejected) for e in examples]
        encoded, report = encode_preferences(self.tokenizer, triples, limits)
        ctx.say(f"{what} pairs: {report.summary(limits)}" if what else report.summary(limits))
        check_usable(report, limits)
        if report.dropped_indices:
            ctx.say(f"left out {len(report.dropped_indices)} unusable {what} pairs; using {report.usable}")
        return [pair for pair in encoded if pair is not None]

    def _pair_values(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        """Per held-out pair (B,): the loss term and the training metrics."""
        raise NotImplementedError

    def evaluate(self, step: int) -> dict[str, float]:
        """The training metrics on the held-out pairs, each averaged over pairs."""
        mine = self.eval_pairs[self.ctx.dist.rank :: self.ctx.dist.world_size]
        size = self.ctx.config.batch_size
        sums: dict[str, float] = {"pairs": 0.0}
        for start in range(0, len(mine), size):
            chunk = mine[start : start + size]
            for key, values in self._pair_values(chunk).items():
                sums[key] = sums.get(key, 0.0) + float(values.sum())
            sums["pairs"] += len(chunk)
        total = self.reduce_sums(sums)
        n = max(total.pop("pairs"), 1.0)
        return {key: value / n for key, value in total.items()}

    def _step_pairs(self, step: int) -> tuple[list[EncodedPair], list[int]]:
        """This rank's pairs of one optimiser step, and their indices."""
        indices = step_indices(
            len(self.pairs),
            batch_size=self.ctx.rank_batch_size,
            step=step,
            seed=self.ctx.spec.seed,
            rank=self.ctx.dist.rank,
            world_size=self.ctx.dist.world_size,
        )
        return [self.pairs[i] for i in indices], indices

    def _table_examples(self) -> list[PreferenceExample]:
        k = self.ctx.config.sample_table_rows
        return [self.examples[i] for i in fixed_indices(len(self.examples), k=k, seed=0)]


class RewardModelRecipe(_PairRecipe):
    """A scalar head on the LM scores prompt + completion; trained so r(chosen) > r(rejected)."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = cast(RewardModelConfig, ctx.config)
        self._load_data(ctx)
        self.model = wrap_model(ctx.load_policy(self.tokenizer, head="sequence_classifier"), ctx.dist)

    def _pair_values(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        b = len(pairs)
        tokens = plain_pair_batch(pairs, pad_id=self.pad_id, completion_only=False).to(self.ctx.device)
        rewards = unwrap(self.model)(input_ids=tokens.input_ids).logits[:, 0].float()
        chosen, rejected = rewards[:b], rewards[b:]
        loss = bradley_terry_loss(chosen, rejected, center_coefficient=self.config.center_rewards_coefficient)
        return {
            "loss": loss.expand(b),  # a batch mean repeated per pair: its sum is the batch's share of the mean
            "accuracy": (chosen > rejected).float(),
            "margin": chosen - rejected,
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
        }

    def train_step(self, step: int) -> dict[str, float]:
        """One batch of the Bradley-Terry loss; logs accuracy (r_w > r_l) and margin (mean r_w - r_l).

        With accumulation each micro-batch's mean loss is divided by their count (TRL's RewardTrainer under
        transformers' Trainer): equal micro-batches, so the gradient is the whole batch's mean.
        """
        pairs, _ = self._step_pairs(step)
        parts = self.micro_batches(pairs)
        loss_total, chosen_all, rejected_all = 0.0, [], []
        for i, part in enumerate(parts):
            b = len(part)
            # Chosen rows then rejected rows in one batch: one forward pass scores both halves.
            tokens = plain_pair_batch(list(part), pad_id=self.pad_id, completion_only=False).to(self.ctx.device)
            with self.gradient_sync(last=i == len(parts) - 1):
                # No attention mask: rows are right-padded, so under causal attention no real token sees a pad,
                # and the classifier finds each row's last real token from pad_token_id (SDPA's causal kernel).
                rewards = self.model(input_ids=tokens.input_ids).logits[:, 0].float()
                loss = bradley_terry_loss(
                    rewards[:b], rewards[b:], center_coefficient=self.config.center_rewards_coefficient
                )
                torch.autograd.backward(loss / len(parts))
            loss_total += float(loss.detach()) / len(parts)
            chosen_all.append(rewards[:b].detach())
            rejected_all.append(rewards[b:].detach())
        chosen, rejected = torch.cat(chosen_all), torch.cat(rejected_all)
        return {
            "loss": loss_total,
            "accuracy": float((chosen > rejected).float().mean()),
            "margin": float((chosen - rejected).mean()),
            "rewards/chosen": float(chosen.mean()),
            "rewards/rejected": float(rejected.mean()),
        }

    @torch.no_grad()
    def sample_table(self, step: int) -> SampleTable | None:
        """A fixed handful of pairs with the reward the model gives each side."""
        if not self.can_sample_alone():
            return None
        picked = self._table_examples()
        pairs = [(e.prompt, e.chosen) for e in picked] + [(e.prompt, e.rejected) for e in picked]
        tokens = encode_pairs(self.tokenizer, pairs, max_length=self.ctx.config.max_length, completion_only=False)
        tokens = tokens.to(self.ctx.device)
        model = unwrap(self.model)
        was_training = model.training
        model.train(False)
        scores = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits[:, 0].float().tolist()
        model.train(was_training)
        table = SampleTable(["prompt", "chosen", "rejected", "reward/chosen", "reward/rejected"])
        b = len(picked)
        for i, e in enumerate(picked):
            table.add(e.prompt, e.chosen, e.rejected, round(scores[i], 4), round(scores[b + i], 4))
        return table


class DPORecipe(_PairRecipe):
    """DPO: the policy's log-ratio to a frozen reference, pushed up on chosen and down on rejected."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = config = cast(DPOConfig, ctx.config)
        self._load_data(ctx)
        policy = ctx.load_policy(self.tokenizer)
        # The reference is the starting model, never the checkpoint being resumed: the objective must not move.
        # With LoRA that is the policy's own frozen base, adapters off.
        self.ref = self.reference_model(policy, config.ref_model_name_or_path or config.model_name_or_path)
        self.model = wrap_model(policy, ctx.dist)
        self.ref_cache = torch.full((len(self.pairs), 2), float("nan"))
        # One row per pair with the prompt computed once needs a 4-D mask: SDPA takes one, FlashAttention not.
        self.shared_prompt = supports_shared_prompt(policy) and supports_shared_prompt(self.ref)

    def _pair_values(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        b = len(pairs)
        policy = unwrap(self.model)
        if self.shared_prompt:
            shared = shared_prompt_batch(pairs, pad_id=self.pad_id).to(self.ctx.device)
            chosen, rejected = shared_prompt_logps(policy, shared)
            ref_chosen, ref_rejected = shared_prompt_logps(self.ref, shared)
        else:
            plain = plain_pair_batch(pairs, pad_id=self.pad_id).to(self.ctx.device)
            both, ref_both = _sequence_logps(policy, plain), _sequence_logps(self.ref, plain)
            chosen, rejected, ref_chosen, ref_rejected = both[:b], both[b:], ref_both[:b], ref_both[b:]
        loss, chosen_r, rejected_r = dpo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=self.config.beta,
            label_smoothing=self.config.label_smoothing,
        )
        return {
            "loss": loss.expand(b),  # a batch mean repeated per pair: its sum is the batch's share of the mean
            "rewards/chosen": chosen_r,
            "rewards/rejected": rejected_r,
            "rewards/accuracies": (chosen_r > rejected_r).float(),
            "rewards/margins": chosen_r - rejected_r,
            "logps/chosen": chosen,
            "logps/rejected": rejected,
        }

    def train_step(self, step: int) -> dict[str, float]:
        """One batch of the DPO loss with TRL's metric names; with accumulation each micro-batch's mean loss is
        divided by their count (TRL's DPOTrainer under transformers' Trainer), so the gradient is the batch's."""
        pairs, indices = self._step_pairs(step)
        k = self.ctx.config.gradient_accumulation_steps
        parts, index_parts = self.micro_batches(pairs), self.micro_batches(indices)
        loss_total = 0.0
        seen: dict[str, list[torch.Tensor]] = {key: [] for key in ("chosen_r", "rejected_r", "chosen", "rejected")}
        for i, (part, part_indices) in enumerate(zip(parts, index_parts, strict=True)):
            b = len(part)
            batch: SharedPromptBatch | TokenBatch
            with self.gradient_sync(last=i == k - 1):
                if self.shared_prompt:
                    batch = shared_prompt_batch(list(part), pad_id=self.pad_id).to(self.ctx.device)
                    chosen, rejected = shared_prompt_logps(self.model, batch)
                else:
                    batch = plain_pair_batch(list(part), pad_id=self.pad_id).to(self.ctx.device)
                    both = _sequence_logps(self.model, batch)
                    chosen, rejected = both[:b], both[b:]
                ref_chosen, ref_rejected = self._reference_logps(batch, list(part_indices))
                loss, chosen_r, rejected_r = dpo_loss(
                    chosen,
                    rejected,
                    ref_chosen,
                    ref_rejected,
                    beta=self.config.beta,
                    label_smoothing=self.config.label_smoothing,
                )
                torch.autograd.backward(loss / k)
            loss_total += float(loss.detach()) / k
            for key, value in (
                ("chosen_r", chosen_r),
                ("rejected_r", rejected_r),
                ("chosen", chosen),
                ("rejected", rejected),
            ):
                seen[key].append(value.detach())
        chosen_r, rejected_r, chosen, rejected = (
            torch.cat(seen[key]) for key in ("chosen_r", "rejected_r", "chosen", "rejected")
        )
        return {
            "loss": loss_total,
            "rewards/chosen": float(chosen_r.mean()),
            "rewards/rejected": float(rejected_r.mean()),
            "rewards/accuracies": float((chosen_r > rejected_r).float().mean()),
            "rewards/margins": float((chosen_r - rejected_r).mean()),
            "logps/chosen": float(chosen.mean()),
            "logps/rejected": float(rejected.mean()),
        }

    def _reference_logps(
        self, batch: SharedPromptBatch | TokenBatch, indices: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log π_ref of the batch's chosen and rejected answers: one forward without autograd, remembered per pair.

        The reference is frozen (eval mode, no dropout), so a pair's reference log-probs never change: from the
        second epoch on, a batch whose pairs were all seen costs no reference forward at all.
        """
        index = torch.tensor(indices)
        cached = self.ref_cache.index_select(0, index)
        if not bool(cached.isnan().any()):
            cached = cached.to(self.ctx.device)
            return cached[:, 0], cached[:, 1]
        with torch.inference_mode():
            if isinstance(batch, SharedPromptBatch):
                chosen, rejected = shared_prompt_logps(self.ref, batch)
            else:
                both = _sequence_logps(self.ref, batch)
                chosen, rejected = both[: len(indices)], both[len(indices) :]
        self.ref_cache.index_copy_(0, index, torch.stack([chosen, rejected], dim=1).float().cpu())
        return chosen, rejected

    @torch.no_grad()
    def sample_table(self, step: int) -> SampleTable | None:
        """The policy's greedy completion of a fixed handful of prompts, with its implicit DPO reward
        β·(log π(y|x) − log π_ref(y|x)), beside the pair it learns from."""
        if not self.can_sample_alone():
            return None
        config = self.config
        picked = self._table_examples()
        model = self.sampling_model()
        texts = greedy_completions(
            model,
            self.tokenizer,
            [e.prompt for e in picked],
            max_new_tokens=config.sample_table_max_new_tokens,
            max_prompt_tokens=config.max_length,
        )
        tokens = encode_pairs(
            self.tokenizer, [(e.prompt, t) for e, t in zip(picked, texts, strict=True)], max_length=config.max_length
        ).to(self.ctx.device)
        was_training = model.training
        model.train(False)
        rewards = config.beta * (_sequence_logps(model, tokens) - _sequence_logps(self.ref, tokens))
        model.train(was_training)
        table = SampleTable(["prompt", "completion", "reward", "chosen", "rejected"])
        for e, text, reward in zip(picked, texts, rewards.tolist(), strict=True):
            table.add(e.prompt, text, round(float(reward), 4), e.chosen, e.rejected)
        return table


def _sequence_logps(model: torch.nn.Module, tokens: TokenBatch) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) over each row's labelled (completion) tokens.

    Only positions from the batch's first labelled one go through the LM head: prompt logits are never used,
    and on a real vocabulary they are most of the head's cost. No attention mask is passed: rows are
    right-padded, so under causal attention a real token never attends to a pad (the pads' own logits are
    ignored), positions count from 0 as they should, and SDPA runs its causal kernel without a mask tensor.
    """
    labelled = (tokens.labels != IGNORE).any(0).nonzero()
    width = tokens.labels.size(1)
    first = max(1, int(labelled[0])) if labelled.numel() else width - 1
    logits = model(input_ids=tokens.input_ids, logits_to_keep=width - first + 1).logits[:, :-1]
    targets = tokens.labels[:, first:]
    return token_logprobs(logits, targets).sum(-1)
