"""Text to token ids the way every recipe does it (BOS before a prompt, EOS after a completion), without torch.

Kept free of torch and transformers so the web process can count tokens at launch (training.engine.preflight)
with the built-in tiny model's character tokenizer, built here from ``tokenizers`` alone, without importing the
deep-learning stack for a form. Any object called like a transformers tokenizer
(``tok(texts, add_special_tokens=...)["input_ids"]``, ``bos_token_id``, ``eos_token_id``) works.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def char_tokenizer_core(texts: Iterable[str], *, extra_merges: int = 0) -> Any:
    """The ``tokenizers.Tokenizer`` of the tiny model: characters (plus ``extra_merges`` BPE merges) of ``texts``."""
    from tokenizers import Tokenizer, decoders, models, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))  # noqa: S106 - a token, not a password
    # Fuse: no pre-tokenizer means tokens are raw characters, so decoding is plain concatenation.
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + extra_merges, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    # Sorted texts make the vocabulary (and so a tiny model's init) independent of data order.
    tokenizer.train_from_iterator(sorted(set(texts)), trainer=trainer)
    return tokenizer


class CountingTokenizer:
    """A raw ``tokenizers.Tokenizer`` called like a transformers one (ids only): enough to count and cut tokens."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.pad_token_id, self.bos_token_id, self.eos_token_id, self.unk_token_id = (
            core.token_to_id(t) for t in SPECIAL_TOKENS
        )
        self.chat_template = None

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.core.encode(text, add_special_tokens=add_special_tokens).ids}
        encoded = self.core.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}


@functools.lru_cache(maxsize=131_072)
def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[int, ...]:
    # Datasets repeat over epochs: tokenising each string once takes the tokenizer off the step's critical path.
    return tuple(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt token ids, starting with BOS when the tokenizer has one (tiny tokenizers do not add it themselves)."""
    ids: list[int] = list(_ids(tokenizer, prompt, True)) if prompt else []
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [int(bos), *ids]
    return ids


def encode_completion(tokenizer: Any, completion: str) -> list[int]:
    """Completion token ids followed by EOS (so the model learns to stop)."""
    ids: list[int] = list(_ids(tokenizer, completion, False))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def token_ids(tokenizer: Any, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[int]]:
    """Token ids of many texts in one tokenizer call (a fast tokenizer encodes the batch in parallel)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    return [list(ids) if text else [] for ids, text in zip(encoded, texts, strict=True)]


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """``encode_prompt`` for many prompts at once."""
    bos = tokenizer.bos_token_id
    rows = token_ids(tokenizer, prompts, add_special_tokens=True)
    if bos is None:
        return rows
    return [row if row and row[0] == bos else [int(bos), *row] for row in rows]


def encode_completions(tokenizer: Any, completions: Sequence[str]) -> list[list[int]]:
    """``encode_completion`` for many completions at once."""
    rows = token_ids(tokenizer, completions, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    return rows if eos is None else [[*row, int(eos)] for row in rows]
