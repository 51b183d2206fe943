"""The small tables recipes log while training (the run page's Samples, as W&B Tables): prompts, completions, rewards.

GRPO logs rows of the generation batch it just trained on (its completions and rewards come for free); SFT and
DPO sample a fixed handful of their prompts greedily, so the same prompts can be read across steps. Generation
for a table runs under ``torch.random.fork_rng``: logging a table never changes the training's random stream.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.engine.batching import encode_prompt
from training.engine.rollout.hf import HFRollout

Cell = str | float | int | None
MAX_CELL_CHARS = 10_000  # the ingest API's limit per cell


@dataclass
class SampleTable:
    """One table: column names and rows (strings are model outputs: the page shows them as plain text)."""

    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    name: str = "samples"

    def add(self, *cells: Cell) -> None:
        """Append a row; long text is cut to what the API stores."""
        self.rows.append([c[:MAX_CELL_CHARS] if isinstance(c, str) else c for c in cells])


def fixed_indices(count: int, *, k: int, seed: int) -> list[int]:
    """The same ``k`` example indices at every step (a seeded choice): a table compares one prompt across steps."""
    order = list(range(count))
    random.Random(seed * 7_919 + 17).shuffle(order)  # noqa: S311 - a seeded choice of rows, not security
    return sorted(order[:k])


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    max_prompt_tokens: int,
) -> list[str]:
    """The model's greedy continuation of each prompt (prompts cut from the left to ``max_prompt_tokens``)."""
    rows = [encode_prompt(tokenizer, p)[-max(1, max_prompt_tokens) :] for p in prompts]
    rollout = HFRollout(model, pad_token_id=int(tokenizer.pad_token_id or 0), eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        out = rollout.generate(rows, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
    lengths = out.completion_mask.sum(1).tolist()
    ids = out.completion_ids.tolist()
    texts = tokenizer.batch_decode([r[:n] for r, n in zip(ids, lengths, strict=True)], skip_special_tokens=True)
    return [str(t) for t in texts]
