"""Tokenise examples into padded tensors, and score tokens under a model (log-probabilities, entropies)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from training.engine.tokens import encode_completion as encode_completion  # re-exported: recipes import them here
from training.engine.tokens import encode_completions as encode_completions
from training.engine.tokens import encode_prompt as encode_prompt
from training.engine.tokens import encode_prompts as encode_prompts
from training.engine.tokens import token_ids as token_ids
from training.engine.truncation import Cut, Truncation, TruncationReport, cut

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


@dataclass(frozen=True)
class EncodedRow:
    """One tokenised, truncated prompt + completion, ready to pad: ids and where the completion starts."""

    ids: torch.Tensor  # (L,) long
    prompt_len: int


def _row(c: Cut) -> EncodedRow:
    return EncodedRow(torch.tensor(c.ids, dtype=torch.long), c.prompt_len)


def encode_supervised(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], limits: Truncation
) -> tuple[list[EncodedRow | None], TruncationReport]:
    """Every (prompt, completion) tokenised once and truncated; None where nothing of the completion is left."""
    prompts = unique_encoded(tokenizer, [p for p, _ in pairs])
    completions = encode_completions(tokenizer, [c for _, c in pairs])
    bos = tokenizer.bos_token_id
    report = TruncationReport()
    rows: list[EncodedRow | None] = []
    for index, ((prompt, _), completion) in enumerate(zip(pairs, completions, strict=True)):
        c = cut(prompts[prompt], completion, limits, bos=bos)
        rows.append(_row(c) if report.add(index, [c]) else None)
    return rows, report


def unique_encoded(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> dict[str, list[int]]:
    # Preference data repeats a prompt per pair (and a conversation prefix per turn): tokenise each once.
    unique = list(dict.fromkeys(prompts))
    return dict(zip(unique, encode_prompts(tokenizer, unique), strict=True))


def pad_rows(rows: Sequence[EncodedRow], *, pad_id: int, completion_only: bool = True) -> TokenBatch:
    """Right-pad encoded rows into a TokenBatch; labels cover the completion (or every real token)."""
    input_ids = torch.nn.utils.rnn.pad_sequence([r.ids for r in rows], batch_first=True, padding_value=pad_id)
    width = input_ids.size(1)
    lengths = torch.tensor([r.ids.numel() for r in rows])
    starts = torch.tensor([r.prompt_len if completion_only else 0 for r in rows])
    columns = torch.arange(width)
    real = columns < lengths.unsqueeze(1)
    labelled = real & (columns >= starts.unsqueeze(1))
    return TokenBatch(input_ids, real.long(), input_ids.masked_fill(~labelled, IGNORE))


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    completion_only: bool = True,
) -> TokenBatch:
    """(prompt, completion) pairs as one right-padded batch, truncated by ``truncation.cut``; labels cover the
    completion (or all tokens). For data seen once; recipes pre-encode their dataset with ``encode_supervised``."""
    limits = Truncation(max_length, max_prompt_length, max_completion_length)
    bos = tokenizer.bos_token_id
    prompts = [encode_prompt(tokenizer, p) for p, _ in pairs]
    cuts = [cut(p, encode_completion(tokenizer, c), limits, bos=bos) for p, (_, c) in zip(prompts, pairs, strict=True)]
    return pad_rows([_row(c) for c in cuts], pad_id=int(tokenizer.pad_token_id or 0), completion_only=completion_only)


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
