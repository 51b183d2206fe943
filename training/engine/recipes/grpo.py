"""GRPO and its variants: sample G completions per prompt, score them, push up the better ones of each group.

One optimiser step = one generation batch (``batch_size`` prompts x G) consumed ``num_iterations`` times;
the loss aggregation, advantage scaling, clipping, KL, GTPO and GRPO-Guard options live in losses.py.
An optional SFT warm start (``sft_warmup_steps``) runs first: a random-init model cannot discover an
answer it never samples (measured on a+b=: GRPO from scratch only learned formatting).

π_old costs no forward pass of its own: the weights that sampled a batch are the weights of its first
optimiser pass, so that pass's log-probs (detached) are π_old for the later ones. A checkpoint taken
inside a generation batch (num_iterations > 1) stores the batch in the trainer state, so a resumed run
finishes it exactly as the uninterrupted run would instead of sampling a new one with moved weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import cast

import torch

from training.engine.batching import encode_pairs, encode_prompt, pad_left, positions, token_logprobs_and_entropy
from training.engine.config import DemoGRPOConfig, GRPOConfig
from training.engine.data import PromptExample, SupervisedExample, load_dataset, step_batch
from training.engine.demo_tasks import addition_prompts, addition_supervised
from training.engine.distributed import (
    DistInfo,
    all_gather_rows,
    all_max,
    all_min,
    all_sum,
    barrier,
    full_model_state,
    gathered,
    unwrap,
    wrap_model,
)
from training.engine.losses import (
    GTPOConflicts,
    aggregate_token_loss,
    clip_ratio_metrics,
    clipped_token_loss,
    group_advantages,
    gtpo_conflict_weights,
    gtpo_loss,
    gtpo_shaped_advantages,
    gtpo_token_entropy,
    guard_normalised_log_ratio,
    k3_kl,
    sft_loss,
    vllm_importance_sampling_ratio,
)
from training.engine.modeling import TINY
from training.engine.packed_forward import can_pack, packed_logits
from training.engine.recipes.base import Recipe, RunContext, chat_renderer
from training.engine.recipes.sft import global_token_metrics
from training.engine.rewards import RewardBreakdown
from training.engine.rewards.registry import build_reward
from training.engine.rollout import Rollout, RolloutBackend, choose_backend, rollout_seed
from training.engine.rollout.hf import HFRollout
from training.engine.sample_tables import SampleTable, fixed_indices


@dataclass
class GenerationBatch:
    """One batch of rollouts with everything the loss needs, reused for ``num_iterations`` steps."""

    input_ids: torch.Tensor  # (N, P + T) prompt (left-padded) then completion
    attention_mask: torch.Tensor
    prompt_width: int
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T)
    advantages: torch.Tensor  # (N,)
    old_logps: torch.Tensor | None  # (N, T), set by the first pass when num_iterations > 1
    ref_logps: torch.Tensor | None  # (N, T), only when beta > 0
    metrics: dict[str, float]
    # (N, T) vLLM's processed log-probs of the sampled tokens, for the importance-sampling correction
    sampling_logps: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> GenerationBatch:
        """The completions at ``index`` (the same columns): a micro-batch, or part of one for a forward pass."""
        return GenerationBatch(
            input_ids=self.input_ids.index_select(0, index),
            attention_mask=self.attention_mask.index_select(0, index),
            prompt_width=self.prompt_width,
            completion_ids=self.completion_ids.index_select(0, index),
            completion_mask=self.completion_mask.index_select(0, index),
            advantages=self.advantages.index_select(0, index),
            old_logps=None if self.old_logps is None else self.old_logps.index_select(0, index),
            ref_logps=None if self.ref_logps is None else self.ref_logps.index_select(0, index),
            metrics={},
            sampling_logps=None if self.sampling_logps is None else self.sampling_logps.index_select(0, index),
        )

    def state(self) -> dict[str, object]:
        """The batch as plain values on the CPU, for a checkpoint's trainer state."""
        return {f.name: _to_cpu(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_state(cls, state: Mapping[str, object], *, device: torch.device) -> GenerationBatch:
        """The inverse of ``state``, tensors moved to ``device``."""

        def optional(name: str) -> torch.Tensor | None:
            value = state.get(name)  # sampling_logps: absent from checkpoints older than it
            assert value is None or isinstance(value, torch.Tensor), name
            return None if value is None else value.to(device)

        def tensor(name: str) -> torch.Tensor:
            value = optional(name)
            assert value is not None, name
            return value

        width, metrics = state["prompt_width"], state["metrics"]
        assert isinstance(width, int)
        assert isinstance(metrics, dict)
        return cls(
            input_ids=tensor("input_ids"),
            attention_mask=tensor("attention_mask"),
            prompt_width=width,
            completion_ids=tensor("completion_ids"),
            completion_mask=tensor("completion_mask"),
            advantages=tensor("advantages"),
            old_logps=optional("old_logps"),
            ref_logps=optional("ref_logps"),
            metrics={str(k): float(v) for k, v in metrics.items()},
            sampling_logps=optional("sampling_logps"),
        )


def _to_cpu(value: object) -> object:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


class GRPORecipe(Recipe):
    """Group Relative Policy Optimisation (Shao et al. 2024) with Dr. GRPO, DAPO, GTPO and GRPO-Guard options.

    Under torchrun each rank samples and trains on its share of the step's prompts; rewards are gathered so
    advantages and every logged metric are those of the whole generation batch (as TRL gathers them).
    """

    metrics_are_global = True  # reduced over ranks in _sft_step, _generate and _policy_step

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.config = config = cast(GRPOConfig, ctx.config)
        self.prompts, self.warm_data = self._data(config)
        self.tokenizer = ctx.tokenizer_for([*self.prompts, *self.warm_data], kind="prompt")
        render = chat_renderer(self.tokenizer)
        if config.dataset_path and getattr(self.tokenizer, "chat_template", None):
            self.prompts = cast(list[PromptExample], load_dataset(config.dataset_path, kind="prompt", render=render))
        train, held = ctx.held_out(self.prompts, kind="prompt", render=render)
        self.prompts, self.eval_examples = cast(list[PromptExample], train), held
        if held:  # the warm start must not teach the held-out prompts' answers either
            held_prompts = {e.prompt for e in cast(list[PromptExample], held)}
            self.warm_data = [w for w in self.warm_data if w.prompt not in held_prompts]
        policy = ctx.load_policy(self.tokenizer)
        self.model = wrap_model(policy, ctx.dist)
        self.policy = self.sampling_model()  # what the HF rollout runs (for LoRA: adapter layers in place)
        self.use_kl = config.beta > 0  # the config refuses beta > 0 with GTPO, which has no KL term
        self.ref = None
        if self.use_kl:
            # With LoRA: the policy's own frozen base, adapters off (no second copy).
            self.ref = self.reference_model(policy, config.ref_model_name_or_path or config.model_name_or_path)
        self.reward = build_reward(config, device=ctx.device)
        self.backend_name = choose_backend(config.rollout_backend)
        if self.backend_name == "vllm" and config.finetuning != "full":
            # The config refuses an explicit vllm with adapters; 'auto' falls back, and says so.
            ctx.say("LoRA: sampling with the Hugging Face backend (weight sync into vLLM does not merge adapters)")
            self.backend_name = "hf"
        self.rollout = self._rollout_backend()
        # TRL's vllm_importance_sampling_correction: only when vLLM samples, and not for GTPO (its authors' loss
        # has no such term; the config refuses the pair when vllm is asked for by name).
        self.importance_sampling = (
            self.backend_name == "vllm" and config.vllm_importance_sampling_correction and config.variant != "gtpo"
        )
        self.batch: GenerationBatch | None = None
        # Skip autograd for rows whose gradient is exactly zero (see _policy_logps); the bench turns it off
        # to time the full pass, as TRL runs it.
        self.zero_advantage_shortcut = True
        self.last_samples: _LatestSamples | None = None  # the latest generation batch, for the samples table
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
            from training.engine.rollout.vllm import VLLMRollout, cap_max_model_len, model_max_positions

            path, info, config = self.ctx.policy_path, self.ctx.dist, self.config
            if path == TINY:  # vLLM loads from a folder: hand it the freshly built weights (rank 0 writes)
                from training.engine.checkpoints import save_model_folder

                folder = self.ctx.output_dir / "rollout-init"
                full = full_model_state(self.model, info)
                if info.is_main:
                    save_model_folder(folder, model=self.policy, tokenizer=self.tokenizer, state_dict=full)
                barrier(info)
                path = str(folder)
            max_model_len = cap_max_model_len(
                config.vllm_max_model_len,
                needed=config.max_length + config.max_new_tokens,
                model_max_positions=model_max_positions(path),
            )
            return VLLMRollout(
                path,
                pad_token_id=int(self.tokenizer.pad_token_id or 0),
                gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                max_model_len=max_model_len,
                seed=self.ctx.spec.seed + info.rank,  # the engine's own stream; each request has its seed
                external_launcher=info.enabled,
                enable_sleep_mode=config.vllm_enable_sleep_mode,
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

    def state_dict(self) -> dict[str, object]:
        """The generation batch being reused (with num_iterations > 1) and the count of tokens seen."""
        reused = self.batch is not None and self.config.num_iterations > 1
        return {"batch": self.batch.state() if reused and self.batch else None, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Put back what ``state_dict`` saved; the next step then finishes that batch, as it would have."""
        batch, tokens = state.get("batch"), state.get("tokens_seen", 0.0)
        assert isinstance(tokens, float | int)
        self.tokens_seen = float(tokens)
        if isinstance(batch, Mapping):
            self.batch = GenerationBatch.from_state(batch, device=self.ctx.device)

    def _sft_step(self, step: int) -> dict[str, float]:
        """A warm-start step on 4 x batch_size examples, accumulated as SFT is (token sum over the step's tokens)."""
        batch = step_batch(
            self.warm_data,
            batch_size=self.ctx.rank_batch_size * 4,
            step=step,
            seed=self.ctx.spec.seed,
            rank=self.ctx.dist.rank,
            world_size=self.ctx.dist.world_size,
        )
        pairs = [(e.prompt, e.completion) for e in cast(list[SupervisedExample], batch)]
        micro = [
            encode_pairs(self.tokenizer, list(part), max_length=self.config.max_length).to(self.ctx.device)
            for part in self.micro_batches(pairs)
        ]
        counts = [int((tokens.labels[:, 1:] != -100).sum()) for tokens in micro]
        normaliser = self.token_normaliser(float(sum(counts)))
        loss_total, correct = 0.0, 0.0
        for i, tokens in enumerate(micro):
            with self.gradient_sync(last=i == len(micro) - 1):
                logits = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits
                loss, accuracy = sft_loss(logits, tokens.labels, num_items_in_batch=normaliser)
                torch.autograd.backward(loss)
            loss_total += float(loss.detach())
            correct += accuracy * counts[i]
        found = global_token_metrics(loss_total, correct, float(sum(counts)), self.ctx.dist)
        return {"sft/loss": found["loss"], "sft/mean_token_accuracy": found["mean_token_accuracy"]}

    @torch.no_grad()
    def _generate(self, rl_step: int) -> GenerationBatch:
        config, g = self.config, self.config.num_generations
        generation_index = (rl_step - 1) // config.num_iterations + 1
        examples = cast(
            list[PromptExample],
            step_batch(
                self.prompts,
                batch_size=self.ctx.rank_batch_size,
                step=generation_index,
                seed=self.ctx.spec.seed,
                rank=self.ctx.dist.rank,
                world_size=self.ctx.dist.world_size,
            ),
        )
        info = self.ctx.dist
        prompt_rows, rollout, scored = self._sample_and_score(
            examples,
            seed=rollout_seed(self.ctx.spec.seed, generation_index),
            first_prompt=info.rank * len(examples),
            total_prompts=config.batch_size,
        )
        device = self.ctx.device
        completion_ids = rollout.completion_ids.to(device)
        completion_mask = rollout.completion_mask.to(device)
        lengths = completion_mask.sum(1)
        # The whole generation batch's rewards (every rank's rows in rank order = the single-process order):
        # advantages (batch scaling needs every reward) and metrics come from them; this rank keeps its rows.
        local_rewards = scored.total
        rewards = all_gather_rows(local_rewards, info)
        mine = slice(info.rank * local_rewards.numel(), (info.rank + 1) * local_rewards.numel())
        advantages = group_advantages(rewards, group_size=g, scale=config.scale_rewards)[mine].to(device)
        prompt_ids, prompt_mask = pad_left(prompt_rows, pad_id=self.pad_id)
        input_ids = torch.cat([prompt_ids.repeat_interleave(g, dim=0).to(device), completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask.repeat_interleave(g, dim=0).to(device), completion_mask], dim=1)
        batch = GenerationBatch(
            input_ids, attention_mask, prompt_ids.size(1), completion_ids, completion_mask, advantages, None, None, {}
        )
        if self.ref is not None:
            batch.ref_logps = self._logps(self.ref, batch)[0]
        if self.importance_sampling and rollout.logprobs is not None:
            batch.sampling_logps = rollout.logprobs.to(device)
        lengths_f = all_gather_rows(lengths.float(), info)
        finished = all_gather_rows(rollout.finished.float(), info)
        batch.metrics = {
            "reward": float(rewards.mean()),
            **reward_spread_metrics(rewards, group_size=g, scale=config.scale_rewards),
            "completions/mean_length": float(lengths_f.mean()),
            "completions/min_length": float(lengths_f.min()),
            "completions/max_length": float(lengths_f.max()),
            "completions/clipped_ratio": float((1.0 - finished).mean()),
        }
        for name in sorted(scored.per_func):
            values = all_gather_rows(scored.per_func[name], info)
            batch.metrics[f"rewards/{name}/mean"] = float(values.mean())
            batch.metrics[f"rewards/{name}/std"] = float(values.std()) if values.numel() > 1 else 0.0
        self.tokens_seen += all_sum({"tokens": float(attention_mask.sum())}, info)["tokens"]
        if self.ctx.dist.is_main and self.config.sample_table_steps:
            # kept, and made into a table only on the steps that log one (sample_table)
            self.last_samples = _LatestSamples(examples, rollout.completion_ids, lengths, scored, advantages)
        return batch

    def _sample_and_score(
        self,
        examples: list[PromptExample],
        *,
        seed: int | None = None,
        first_prompt: int = 0,
        total_prompts: int | None = None,
    ) -> tuple[list[list[int]], Rollout, RewardBreakdown]:
        """G completions per prompt from the rollout backend, decoded and scored by the reward functions
        (``seed`` and the prompt shard: see RolloutBackend.generate)."""
        config = self.config
        prompt_rows = [encode_prompt(self.tokenizer, e.prompt)[-config.max_length :] for e in examples]
        # Under FSDP2 the HF backend samples from full weights, each rank at its own pace (see gathered); vLLM
        # holds its own full copy (synced after each step), so the trainer's shards stay as they are.
        gather = gathered(self.model, self.ctx.dist) if self.backend_name == "hf" else contextlib.nullcontext()
        with gather:
            rollout = self.rollout.generate(
                prompt_rows,
                n=config.num_generations,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=seed,
                first_prompt=first_prompt,
                total_prompts=total_prompts,
                return_logprobs=self.importance_sampling,
            )
        lengths = rollout.completion_mask.sum(1)
        texts = self.tokenizer.batch_decode(
            [ids[:n] for ids, n in zip(rollout.completion_ids.tolist(), lengths.tolist(), strict=True)],
            skip_special_tokens=True,
        )
        repeated = [e for e in examples for _ in range(config.num_generations)]
        return prompt_rows, rollout, self.reward(texts, repeated)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out prompts, G samples each (the training sampler and settings), scored by the same reward
        functions: TRL's reward metrics (reward, reward_std, rewards/<func>/mean|std) and completion lengths.
        The weights are not touched; with vLLM, the engine already holds them (synced after each step)."""
        sums: dict[str, float] = {}

        def add(key: str, values: torch.Tensor) -> None:
            values = values.double().cpu()
            sums[f"{key}|n"] = sums.get(f"{key}|n", 0.0) + values.numel()
            sums[f"{key}|s"] = sums.get(f"{key}|s", 0.0) + float(values.sum())
            sums[f"{key}|ss"] = sums.get(f"{key}|ss", 0.0) + float((values * values).sum())

        g = self.config.num_generations
        for shard in self.eval_shards():
            _, rollout, scored = self._sample_and_score(cast(list[PromptExample], shard))
            add("reward", scored.total)
            for name, values in scored.per_func.items():
                add(f"rewards/{name}", values)
            add("completions/length", rollout.completion_mask.sum(1).float())
            tied = scored.total.view(-1, g).std(dim=1) if g > 1 else torch.zeros(len(shard))
            add("zero_std", torch.isclose(tied, torch.zeros_like(tied)).float())
        total = self.reduce_sums(sums) if sums else {}

        def mean(key: str) -> float:
            return total[f"{key}|s"] / max(total[f"{key}|n"], 1.0)

        def std(key: str) -> float:  # unbiased, as TRL's nanstd
            n, s, ss = total[f"{key}|n"], total[f"{key}|s"], total[f"{key}|ss"]
            return math.sqrt(max(ss - s * s / n, 0.0) / (n - 1)) if n > 1 else float("nan")

        if not total:
            return {}
        metrics = {
            "reward": mean("reward"),
            "reward_std": std("reward"),
            "frac_reward_zero_std": mean("zero_std"),
            "completions/mean_length": mean("completions/length"),
        }
        for key in sorted(k.removesuffix("|n") for k in total if k.startswith("rewards/") and k.endswith("|n")):
            metrics[f"{key}/mean"] = mean(key)
            metrics[f"{key}/std"] = std(key)
        return metrics

    def _table(
        self,
        examples: list[PromptExample],
        texts: list[str],
        rewards: torch.Tensor,
        per_func: Mapping[str, torch.Tensor],
        advantages: torch.Tensor | None,
    ) -> SampleTable:
        """The first rows of a generation batch (whole groups first): prompt, completion, rewards, advantage."""
        k = self.config.sample_table_rows
        funcs = list(per_func)
        columns = ["prompt", "completion", "reward", *(f"rewards/{f}" for f in funcs)]
        columns += ["advantage"] if advantages is not None else []
        table = SampleTable([*columns, "answer"])
        for i in range(min(k, len(texts))):
            cells: list[str | float | int | None] = [examples[i].prompt, texts[i], round(float(rewards[i]), 4)]
            cells += [round(float(per_func[f][i]), 4) for f in funcs]
            cells += [round(float(advantages[i]), 4)] if advantages is not None else []
            table.add(*cells, examples[i].answer)
        return table

    def sample_table(self, step: int) -> SampleTable | None:
        """The latest generation batch's rows; during the SFT warm start, fresh samples of a few fixed prompts."""
        if step > self.config.sft_warmup_steps:
            if self.last_samples is None:
                return None
            latest, g = self.last_samples, self.config.num_generations
            k = min(self.config.sample_table_rows, latest.completion_ids.size(0))
            texts = self.tokenizer.batch_decode(
                [
                    ids[:n]
                    for ids, n in zip(latest.completion_ids[:k].tolist(), latest.lengths[:k].tolist(), strict=True)
                ],
                skip_special_tokens=True,
            )
            repeated = [e for e in latest.examples for _ in range(g)][:k]
            scored = latest.scored
            return self._table(repeated, texts, scored.total, scored.per_func, latest.advantages)
        if not self.can_sample_alone():
            return None
        config = self.config
        picked = [self.prompts[i] for i in fixed_indices(len(self.prompts), k=config.sample_table_rows, seed=0)]
        rows = [encode_prompt(self.tokenizer, e.prompt)[-config.max_length :] for e in picked]
        sampler = HFRollout(self.policy, pad_token_id=self.pad_id, eos_token_id=self.tokenizer.eos_token_id)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.ctx.spec.seed * 1_000_003 + step)
            out = sampler.generate(
                rows, n=1, max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
            )
        lengths = out.completion_mask.sum(1).tolist()
        texts = self.tokenizer.batch_decode(
            [r[:n] for r, n in zip(out.completion_ids.tolist(), lengths, strict=True)], skip_special_tokens=True
        )
        scored = self.reward(texts, picked)
        return self._table(picked, texts, scored.total, scored.per_func, None)

    def _logps(self, model: torch.nn.Module, batch: GenerationBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs and entropies of the completion tokens (logits divided by the temperature, as TRL;
        for GTPO undivided, with its authors' entropy, as their code does).

        Only the T + 1 last positions go through the LM head (the prompt's logits are never used); the very
        last one predicts past the batch and is dropped.
        """
        t = batch.completion_ids.size(1)
        position_ids = positions(batch.attention_mask)
        if can_pack(model):  # each distinct real token once (packed_forward.py); the padded logits are never read
            logits = packed_logits(model, batch.input_ids, batch.attention_mask, position_ids, keep=t + 1)
        else:
            logits = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=position_ids,
                logits_to_keep=t + 1,
            ).logits
        targets = batch.completion_ids.masked_fill(batch.completion_mask == 0, -100)
        if self.config.variant == "gtpo":
            # The GTPO authors score untempered logits and take their own entropy form (losses.gtpo_token_entropy).
            logits = logits[:, :-1]
            return token_logprobs_and_entropy(logits, targets)[0], gtpo_token_entropy(logits)
        logits = logits[:, :-1] / self.config.temperature
        return token_logprobs_and_entropy(logits, targets)

    def _policy_logps(self, batch: GenerationBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``_logps`` of the whole batch under the policy, with autograd only where a gradient can arise.

        Without a KL term, a completion whose advantage is exactly 0 adds 0 to the token loss (ℓ = -min(r·0,
        clip(r)·0); GRPO-Guard's centring shifts inside it) and so nothing to the gradient. Such rows (every
        row of a group whose rewards tie, often most of a batch) get a forward pass without autograd, for the
        entropies and ratios that still read them; only the others pay for backward. Loss, gradient and
        metrics are those of the full-batch pass. Not for GTPO with an entropy penalty: there a kept
        completion with A = 0 still gets A' = -γ H̄ (losses.gtpo_shaped_advantages), known only after the pass.
        """
        idle = batch.advantages == 0
        gtpo_moves_idle = self.config.variant == "gtpo" and self.config.gtpo_entropy_penalty > 0
        if (
            not self.zero_advantage_shortcut
            or self.ctx.dist.fsdp  # sharded forwards are collectives: every rank must run the same passes
            or gtpo_moves_idle
            or batch.ref_logps is not None
            or not bool(idle.any())
            or bool(idle.all())
        ):
            return self._logps(self.model, batch)
        active, rest = (~idle).nonzero().squeeze(1), idle.nonzero().squeeze(1)
        logps_active, entropy_active = self._logps(self.model, batch.rows(active))
        with torch.no_grad():
            logps_rest, entropy_rest = self._logps(unwrap(self.model), batch.rows(rest))
        logps = logps_rest.new_zeros(batch.completion_ids.shape).index_copy(0, rest, logps_rest)
        entropy = entropy_rest.new_zeros(batch.completion_ids.shape).index_copy(0, rest, entropy_rest)
        return logps.index_copy(0, active, logps_active), entropy.index_copy(0, active, entropy_active)

    def _policy_step(self, batch: GenerationBatch) -> dict[str, float]:
        """One optimiser pass over the generation batch, in ``gradient_accumulation_steps`` micro-batches of
        whole groups, normalised as TRL's GRPOTrainer._compute_loss does: grpo, bnpo and dr_grpo divide each
        micro-batch's loss by the number of micro-batches; dapo divides token sums by the whole generation
        batch's token count (num_items_in_batch) and takes no further factor. GTPO's loss is a sum over
        completions, so its micro-batch sums add up to it."""
        config = self.config
        k = config.gradient_accumulation_steps
        mask = batch.completion_mask.float()
        info = self.ctx.dist
        # DAPO's N_gen: tokens of the whole generation batch; ÷ world_size because gradients are averaged.
        num_items = self.token_normaliser(float(mask.sum()))
        gtpo = config.variant == "gtpo"
        conflicts = (
            gtpo_conflict_weights(
                batch.completion_ids,
                batch.completion_mask,
                batch.advantages,
                group_size=config.num_generations,
                boost=config.gtpo_conflict_boost,
            )
            if gtpo
            else None
        )
        scale = 1.0 if gtpo or config.loss_type == "dapo" else 1.0 / k
        # GTPO sums over completions: the batch's loss is the sum of the ranks' (gradients are averaged).
        grad_scale = scale * info.world_size if gtpo else scale
        n = batch.completion_ids.size(0)
        pieces: dict[str, list[torch.Tensor]] = {}
        loss_total = 0.0
        for i, rows in enumerate(self.micro_batches(range(n))):
            index = torch.tensor(list(rows), device=batch.input_ids.device)
            micro = batch.rows(index)
            with self.gradient_sync(last=i == k - 1):
                logps, entropy = self._policy_logps(micro)
                if conflicts is not None:
                    loss, found = self._gtpo_loss(micro, logps, entropy, _conflict_rows(conflicts, index))
                else:
                    loss, found = self._clipped_loss(micro, logps, num_items)
                torch.autograd.backward(loss * grad_scale)
            loss_total += float(loss.detach()) * scale
            for key, value in {"logps": logps.detach(), "entropy": entropy, **found}.items():
                pieces.setdefault(key, []).append(value)
        joined = {key: torch.cat(values) for key, values in pieces.items()}
        if batch.old_logps is None and config.num_iterations > 1:
            # First pass over the batch: these weights sampled it, so π_old is this very forward (detached).
            batch.old_logps = joined["logps"]
        metrics = dict(batch.metrics)
        # Sums over every rank's tokens and completions, so each metric is the whole batch's.
        sums = {
            "loss": loss_total,
            "tokens": float(mask.sum()),
            "entropy": float((joined["entropy"] * mask).sum()),
            "kl": float((joined["kl"] * mask).sum()) if "kl" in joined else 0.0,
            "kept": float(joined["keep"].float().sum()) if "keep" in joined else 0.0,
            "rows": float(mask.size(0)),
            "conflict": float((conflicts.conflict.float() * mask).sum()) if conflicts is not None else 0.0,
        }
        clip: dict[str, float] = {}
        if "ratio" in joined:
            clip = clip_ratio_metrics(
                joined["ratio"],
                batch.advantages,
                batch.completion_mask,
                epsilon_low=config.epsilon_low,
                epsilon_high=config.epsilon_high,
            )
            for key in ("low", "high", "region"):  # back to counts, so the fractions are over every rank's tokens
                sums[f"clip/{key}"] = clip[f"clip_ratio/{key}_mean"] * max(sums["tokens"], 1.0)
        total = all_sum(sums, info)
        tokens_all = max(total["tokens"], 1.0)
        # The loss: GTPO's is a sum over completions (so over ranks); the others' per-rank values are shares of
        # a mean whose gradients are averaged (so their mean over ranks).
        metrics["loss"] = total["loss"] if gtpo else total["loss"] / info.world_size
        metrics["entropy"] = total["entropy"] / tokens_all
        metrics["num_tokens"] = self.tokens_seen
        if conflicts is not None:
            kept = total["kept"] / max(total["rows"], 1.0)
            if kept == 0.0 and self.ctx.dist.is_main:
                seq_entropy = joined["seq_entropy"]
                print(  # noqa: T201 - stdout is the run's log
                    f"GTPO dropped every completion: mean entropies {float(seq_entropy.min()):.3g}-"
                    f"{float(seq_entropy.max()):.3g} nats exceed "
                    f"gtpo_entropy_threshold={config.gtpo_entropy_threshold}",
                    flush=True,
                )
            metrics["gtpo/conflict_frac"] = total["conflict"] / tokens_all
            metrics["gtpo/kept_frac"] = kept
            metrics["gtpo/filtered_ratio"] = 1.0 - kept
            return metrics
        if "kl" in joined:
            metrics["kl"] = total["kl"] / tokens_all
        if "is_weight" in joined:
            metrics.update(self._importance_sampling_metrics(joined, mask))
        for key in ("low", "high", "region"):
            metrics[f"clip_ratio/{key}_mean"] = total[f"clip/{key}"] / tokens_all
        metrics["clip_ratio/low_min"] = _nan_reduced(clip["clip_ratio/low_min"], info, minimum=True)
        metrics["clip_ratio/high_max"] = _nan_reduced(clip["clip_ratio/high_max"], info, minimum=False)
        return metrics

    def _importance_sampling_metrics(self, joined: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, float]:
        """TRL's sampling/* metrics over every rank's tokens: |log π_trainer - log π_vLLM| (mean, max) and the
        importance weight (min, mean, max; per sequence in the sequence modes, per real token otherwise)."""
        info, real = self.ctx.dist, mask.bool()
        gap = joined["logp_gap"][real]
        per_sequence = self.config.vllm_importance_sampling_mode.startswith("sequence_")
        weight = joined["is_weight"][:, 0] if per_sequence else joined["is_weight"][real]
        sums = all_sum(
            {"gap": float(gap.sum()), "gaps": gap.numel(), "w": float(weight.sum()), "ws": weight.numel()}, info
        )
        low = all_min({"w": float(weight.min()) if weight.numel() else math.inf}, info)["w"]
        most = {"w": float(weight.max()) if weight.numel() else -math.inf}
        most["gap"] = float(gap.max()) if gap.numel() else 0.0
        high = all_max(most, info)
        return {
            "sampling/sampling_logp_difference/mean": sums["gap"] / max(sums["gaps"], 1.0),
            "sampling/sampling_logp_difference/max": high["gap"],
            "sampling/importance_sampling_ratio/min": low if math.isfinite(low) else float("nan"),
            "sampling/importance_sampling_ratio/mean": sums["w"] / max(sums["ws"], 1.0),
            "sampling/importance_sampling_ratio/max": high["w"] if math.isfinite(high["w"]) else float("nan"),
        }

    def _clipped_loss(
        self, micro: GenerationBatch, logps: torch.Tensor, num_items: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The clipped surrogate (+ β·KL) of one micro-batch, aggregated by ``loss_type``; with the detached
        ratios (and KL) the step's metrics read."""
        config = self.config
        # π_old: stored by the batch's first pass; in that pass itself, these very log-probs (detached).
        old = micro.old_logps if micro.old_logps is not None else logps.detach()
        mask = micro.completion_mask.float()
        log_ratio = guard_normalised_log_ratio(logps, old, mask) if config.variant == "grpo_guard" else None
        per_token, ratio = clipped_token_loss(
            logps,
            old,
            micro.advantages,
            epsilon_low=config.epsilon_low,
            epsilon_high=config.epsilon_high,
            log_ratio=log_ratio,
        )
        found = {"ratio": ratio.detach()}
        if micro.sampling_logps is not None:
            # TRL: the per-token loss times the vLLM importance weight, before the KL term is added.
            weight = vllm_importance_sampling_ratio(
                old,
                micro.sampling_logps,
                mask,
                mode=config.vllm_importance_sampling_mode,
                clip_min=config.vllm_importance_sampling_clip_min,
                clip_max=config.vllm_importance_sampling_clip_max,
            )
            per_token = per_token * weight
            found["is_weight"] = weight.expand_as(per_token).detach()
            found["logp_gap"] = (old - micro.sampling_logps).abs().detach()
        if micro.ref_logps is not None:
            kl = k3_kl(logps, micro.ref_logps)
            per_token = per_token + config.beta * kl
            found["kl"] = kl.detach()
        loss = aggregate_token_loss(
            per_token,
            mask,
            loss_type=config.loss_type,
            max_completion_length=config.max_new_tokens,
            num_items_in_batch=num_items,
        )
        return loss, found

    def _gtpo_loss(
        self, micro: GenerationBatch, logps: torch.Tensor, entropy: torch.Tensor, conflicts: GTPOConflicts
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """GTPO as its authors' code computes it (losses.gtpo_*): entropy-shaped advantages, conflict-token
        weights (found on the whole batch: they compare the completions of a group), per-completion
        normalisation, summed over completions. One pass per batch: r = 1 in value."""
        config, mask = self.config, micro.completion_mask.float()
        seq_entropy = (entropy * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        shaped, keep = gtpo_shaped_advantages(
            micro.advantages,
            seq_entropy,
            threshold=config.gtpo_entropy_threshold,
            penalty=config.gtpo_entropy_penalty,
        )
        ratio = torch.exp(logps - logps.detach())
        per_token = -ratio * shaped.unsqueeze(-1)
        return gtpo_loss(per_token, mask, conflicts), {"keep": keep, "seq_entropy": seq_entropy}


@dataclass(frozen=True)
class _LatestSamples:
    """What the samples table of the latest generation batch is made from (this rank's rows)."""

    examples: list[PromptExample]
    completion_ids: torch.Tensor
    lengths: torch.Tensor
    scored: RewardBreakdown
    advantages: torch.Tensor


def _conflict_rows(conflicts: GTPOConflicts, index: torch.Tensor) -> GTPOConflicts:
    """The conflict weights of the completions at ``index``."""
    return GTPOConflicts(
        weights=conflicts.weights.index_select(0, index),
        conflict=conflicts.conflict.index_select(0, index),
        count=conflicts.count.index_select(0, index),
    )


def _nan_reduced(value: float, info: DistInfo, *, minimum: bool) -> float:
    """The minimum (or maximum) over ranks of a value that is NaN where a rank had nothing to take it over."""
    if not info.enabled:
        return value
    blank = math.inf if minimum else -math.inf
    local = {"v": blank if math.isnan(value) else value}
    found = (all_min(local, info) if minimum else all_max(local, info))["v"]
    return float("nan") if math.isinf(found) else found


def reward_spread_metrics(rewards: torch.Tensor, *, group_size: int, scale: str) -> dict[str, float]:
    """TRL 1.16's reward_std and frac_reward_zero_std (GRPOTrainer._generate_and_score_completions).

    reward_std is the std of every reward in the batch (unbiased, TRL's nanstd), not a mean of group stds.
    frac_reward_zero_std is the share of completions whose advantage scale is 0 (torch.isclose to 0): with
    scale_rewards group or none, the group's std (so the share of groups whose rewards tie); with batch, the
    batch's std (0 or 1).
    """
    if scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        std = rewards.view(-1, group_size).std(dim=1).repeat_interleave(group_size)
    zero = torch.isclose(std, torch.zeros_like(std))
    return {
        "reward_std": float(rewards.std()) if rewards.numel() > 1 else float("nan"),
        "frac_reward_zero_std": float(zero.float().mean()),
    }
