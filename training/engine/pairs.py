"""Preference pairs as tensors: one row per pair with the prompt shared by both answers, or plain padded rows.

DPO scores chosen and rejected under the same prompt. Laid out as two padded rows per pair (TRL's collator),
the prompt goes through the model twice and every row is padded to the batch's longest prompt + answer.
Laid out as one row per pair, ``prompt | chosen | rejected``, the prompt is computed once and the padding
is that of one longer row: on preference data with a short answer per prompt, about a third fewer token
slots per forward and backward. A 4-D attention mask keeps the two answers apart (each attends to the
prompt and to itself, causally) and position ids restart the rejected answer where the prompt ends, so every
answer token sees exactly the context it has in its own sequence: the log-probabilities equal the plain
layout's (tests/engine/test_pairs.py), only fewer tokens are computed.

A custom 4-D mask needs PyTorch SDPA attention; a model on another attention kernel (FlashAttention takes no
mask) is scored in the plain layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from training.engine.batching import (
    IGNORE,
    EncodedRow,
    TokenBatch,
    encode_completions,
    pad_rows,
    token_logprobs,
    unique_encoded,
)
from training.engine.truncation import Truncation, TruncationReport, cut

PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3


@dataclass(frozen=True)
class EncodedPair:
    """One truncated preference pair: the prompt ids shared by both sides, and each side's completion ids."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def rows(self) -> tuple[EncodedRow, EncodedRow]:
        """The pair as two plain rows, prompt + chosen and prompt + rejected."""
        p = self.prompt.numel()
        return EncodedRow(torch.cat([self.prompt, self.chosen]), p), EncodedRow(
            torch.cat([self.prompt, self.rejected]), p
        )


def encode_preferences(
    tokenizer: PreTrainedTokenizerBase, triples: Sequence[tuple[str, str, str]], limits: Truncation
) -> tuple[list[EncodedPair | None], TruncationReport]:
    """Every (prompt, chosen, rejected) tokenised once (the prompt shared) and truncated per side, as TRL does;
    None where a side lost every completion token or the two sides became identical."""
    prompts = unique_encoded(tokenizer, [p for p, _, _ in triples])
    chosen = encode_completions(tokenizer, [c for _, c, _ in triples])
    rejected = encode_completions(tokenizer, [r for _, _, r in triples])
    bos = tokenizer.bos_token_id
    report = TruncationReport()
    encoded: list[EncodedPair | None] = []
    for index, (prompt, _, _) in enumerate(triples):
        p = prompts[prompt]
        sides = [cut(p, chosen[index], limits, bos=bos), cut(p, rejected[index], limits, bos=bos)]
        if not report.add(index, sides, pair=True):
            encoded.append(None)
            continue
        # max_prompt_length < max_length, so the cap only ever shortens answers: both sides keep one prompt.
        n = sides[0].prompt_len
        assert n == sides[1].prompt_len and sides[0].ids[:n] == sides[1].ids[:n]
        encoded.append(
            EncodedPair(
                torch.tensor(sides[0].ids[:n], dtype=torch.long),
                torch.tensor(sides[0].ids[n:], dtype=torch.long),
                torch.tensor(sides[1].ids[n:], dtype=torch.long),
            )
        )
    return encoded, report


@dataclass
class SharedPromptBatch:
    """Pairs laid out one row each as prompt | chosen | rejected, right-padded, with what scoring needs."""

    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True = may attend
    first: int  # the first position whose logits are needed (the shortest prompt's last token)
    chosen_index: torch.Tensor  # (B, Tc) position whose logits predict each chosen token
    chosen_targets: torch.Tensor  # (B, Tc) the chosen tokens, IGNORE-padded
    rejected_index: torch.Tensor  # (B, Tr)
    rejected_targets: torch.Tensor  # (B, Tr)

    def to(self, device: torch.device) -> SharedPromptBatch:
        """The same batch on ``device``."""
        return SharedPromptBatch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.attention_mask.to(device),
            self.first,
            self.chosen_index.to(device),
            self.chosen_targets.to(device),
            self.rejected_index.to(device),
            self.rejected_targets.to(device),
        )


def shared_prompt_batch(pairs: Sequence[EncodedPair], *, pad_id: int) -> SharedPromptBatch:
    """Lay ``pairs`` out one row each; see the module docstring for the mask and positions. Vectorised: a step
    spends its time in the model, not here."""
    p = torch.tensor([pair.prompt.numel() for pair in pairs]).unsqueeze(1)
    c = torch.tensor([pair.chosen.numel() for pair in pairs]).unsqueeze(1)
    r = torch.tensor([pair.rejected.numel() for pair in pairs]).unsqueeze(1)
    input_ids = torch.nn.utils.rnn.pad_sequence(
        [torch.cat([pair.prompt, pair.chosen, pair.rejected]) for pair in pairs],
        batch_first=True,
        padding_value=pad_id,
    )
    width = input_ids.size(1)
    columns = torch.arange(width).unsqueeze(0)
    in_chosen_end, end = p + c, p + c + r
    segment = torch.full_like(input_ids, PAD)
    segment = torch.where(columns < end, REJECTED, segment)
    segment = torch.where(columns < in_chosen_end, CHOSEN, segment)
    segment = torch.where(columns < p, PROMPT, segment)
    # The rejected answer continues the prompt's positions, as if the chosen one were not there.
    position_ids = torch.where(columns < in_chosen_end, columns, torch.where(columns < end, columns - c, 0))
    causal = torch.ones(width, width, dtype=torch.bool).tril().unsqueeze(0)
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)
    mask = causal & ((key == PROMPT) | (key == query)) & (query != PAD) & (key != PAD)
    # A pad attends to itself only: a query with no key at all would make SDPA return NaN, and a NaN in a
    # pad's activations can leak into the gradient even where the loss ignores it.
    mask |= torch.eye(width, dtype=torch.bool).unsqueeze(0)
    first = int(p.min()) - 1
    # Token j of an answer is predicted by the logits of the token before it; the first token of either
    # answer by the prompt's last token (one set of logits, two targets).
    j_c = torch.arange(int(c.max())).unsqueeze(0)
    chosen_index = (p - 1 + j_c).clamp(max=width - 1)
    chosen_targets = torch.where(j_c < c, input_ids.gather(1, (p + j_c).clamp(max=width - 1)), IGNORE)
    j_r = torch.arange(int(r.max())).unsqueeze(0)
    rejected_index = torch.where(j_r == 0, p - 1, p + c + j_r - 1).clamp(max=width - 1)
    rejected_targets = torch.where(j_r < r, input_ids.gather(1, (p + c + j_r).clamp(max=width - 1)), IGNORE)
    return SharedPromptBatch(
        input_ids,
        position_ids,
        mask.unsqueeze(1),
        first,
        chosen_index,
        chosen_targets,
        rejected_index,
        rejected_targets,
    )


def plain_pair_batch(pairs: Sequence[EncodedPair], *, pad_id: int, completion_only: bool = True) -> TokenBatch:
    """Chosen rows then rejected rows, right-padded (TRL's collator layout): one forward scores both halves."""
    rows = [pair.rows() for pair in pairs]
    return pad_rows([c for c, _ in rows] + [r for _, r in rows], pad_id=pad_id, completion_only=completion_only)


def supports_shared_prompt(model: torch.nn.Module) -> bool:
    """Whether ``model`` takes a custom 4-D attention mask (PyTorch SDPA does; FlashAttention does not)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == "sdpa"


def shared_prompt_logps(model: torch.nn.Module, batch: SharedPromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t log π(y_t | x, y_<t) of each pair's chosen and rejected answer, from one forward of the shared rows."""
    width = batch.input_ids.size(1)
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=width - batch.first,  # the prompt logits before the shortest prompt's end are never used
    ).logits
    vocab = logits.size(-1)

    def side(index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        picked = logits.gather(1, (index - batch.first).unsqueeze(-1).expand(-1, -1, vocab))
        return token_logprobs(picked, targets).sum(-1)

    return side(batch.chosen_index, batch.chosen_targets), side(batch.rejected_index, batch.rejected_targets)
