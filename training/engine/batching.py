"""Tokenise examples into padded tensors, and score tokens under a model (log-probabilities, entropies)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

IGNORE = -100


@dataclass
class TokenBatch:
    """Right-padded sequences; ``labels`` is IGNORE wherever no loss is taken."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> TokenBatch:
        """The same batch on ``device``."""
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


@functools.lru_cache(maxsize=131_072)
def _ids(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool) -> tuple[int, ...]:
    # Datasets repeat over epochs: tokenising each string once takes the tokenizer off the step's critical path.
    return tuple(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt token ids, starting with BOS when the tokenizer has one (tiny tokenizers do not add it themselves)."""
    ids: list[int] = list(_ids(tokenizer, prompt, True)) if prompt else []
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [int(bos), *ids]
    return ids


def encode_completion(tokenizer: PreTrainedTokenizerBase, completion: str) -> list[int]:
    """Completion token ids followed by EOS (so the model learns to stop)."""
    ids: list[int] = list(_ids(tokenizer, completion, False))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    max_length: int,
    completion_only: bool = True,
) -> TokenBatch:
    """(prompt, completion) pairs as one right-padded batch; labels cover the completion (or all tokens)."""
    rows: list[tuple[list[int], list[int]]] = []
    for prompt, completion in pairs:
        p, c = encode_prompt(tokenizer, prompt), encode_completion(tokenizer, completion)
        ids = (p + c)[:max_length]
        labels = ([IGNORE] * len(p) if completion_only else p) + c
        rows.append((ids, labels[: len(ids)]))
    return pad_right(rows, pad_id=int(tokenizer.pad_token_id or 0))


def pad_right(rows: Sequence[tuple[list[int], list[int]]], *, pad_id: int) -> TokenBatch:
    """Right-pad (ids, labels) rows into a TokenBatch."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return TokenBatch(input_ids, mask, labels)


def pad_left(rows: Sequence[list[int]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts so every row's next token lands in the same column (what batched decoding needs)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding (HF would otherwise count pads as positions)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position: logits (B, T, V), targets (B, T) -> (B, T). Targets of IGNORE score 0."""
    safe = targets.clamp(min=0)
    logps = torch.gather(F.log_softmax(logits.float(), dim=-1), -1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(targets == IGNORE, torch.zeros_like(logps), logps)


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` and ``token_entropy`` from one log-softmax (the entropy carries no gradient)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    safe = targets.clamp(min=0)
    picked = torch.gather(logp, -1, safe.unsqueeze(-1)).squeeze(-1)
    logps = torch.where(targets == IGNORE, torch.zeros_like(picked), picked)
    with torch.no_grad():
        plain = logp.detach()
        entropy = -(plain.exp() * plain).sum(-1)
    return logps, entropy


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution per position, in nats: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def shifted(batch_labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with logits: position t predicts token t+1."""
    return batch_labels[:, 1:]
