"""One row per preference pair with a shared prompt scores each answer exactly as its own sequence would."""

from __future__ import annotations

import pytest
import torch

from training.engine.batching import token_logprobs
from training.engine.config import DPOConfig
from training.engine.losses import dpo_loss
from training.engine.modeling import load_causal_lm, train_char_tokenizer
from training.engine.pairs import (
    EncodedPair,
    encode_preferences,
    plain_pair_batch,
    shared_prompt_batch,
    shared_prompt_logps,
    supports_shared_prompt,
)
from training.engine.recipes.preference import _sequence_logps
from training.engine.truncation import Truncation

CPU = torch.device("cpu")
TRIPLES = [
    ("abc>", "abc", "cbax"),
    ("hello there, how>", "ok", "no thanks at all"),
    ("x>", "a much longer chosen answer", "b"),
    ("a fairly long prompt with words>", "yes", "yes!"),
]


def tiny() -> tuple[torch.nn.Module, list[EncodedPair], int]:
    tokenizer = train_char_tokenizer([t for triple in TRIPLES for t in triple])
    config = DPOConfig(tiny_hidden_size=32, tiny_num_layers=2, tiny_num_heads=2)
    model = load_causal_lm("tiny", config=config, tokenizer=tokenizer, seed=3, device=CPU)
    encoded, report = encode_preferences(tokenizer, TRIPLES, Truncation(max_length=64, max_prompt_length=40))
    assert report.usable == len(TRIPLES)
    return model, [p for p in encoded if p is not None], int(tokenizer.pad_token_id)


def alone(model: torch.nn.Module, prompt: torch.Tensor, answer: torch.Tensor) -> float:
    """log π(answer | prompt) from the sequence on its own: no padding, no mask, no neighbour."""
    ids = torch.cat([prompt, answer]).unsqueeze(0)
    logits = model(input_ids=ids).logits[0, prompt.numel() - 1 : -1]
    return float(token_logprobs(logits.unsqueeze(0), answer.unsqueeze(0)).sum())


def test_shared_prompt_logps_equal_each_sequence_scored_alone() -> None:
    model, pairs, pad = tiny()
    assert supports_shared_prompt(model)
    with torch.no_grad():
        chosen, rejected = shared_prompt_logps(model, shared_prompt_batch(pairs, pad_id=pad))
        plain = _sequence_logps(model, plain_pair_batch(pairs, pad_id=pad))
        for i, pair in enumerate(pairs):
            assert float(chosen[i]) == approx(alone(model, pair.prompt, pair.chosen))
            assert float(rejected[i]) == approx(alone(model, pair.prompt, pair.rejected))
    assert torch.allclose(chosen, plain[: len(pairs)], atol=1e-5)
    assert torch.allclose(rejected, plain[len(pairs) :], atol=1e-5)


def test_shared_prompt_gradient_equals_the_plain_layouts() -> None:
    """The DPO loss, and so the update, is the same whichever layout computed it."""
    model, pairs, pad = tiny()
    ref = torch.full((len(pairs),), -20.0)

    def grads(layout: str) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        if layout == "shared":
            chosen, rejected = shared_prompt_logps(model, shared_prompt_batch(pairs, pad_id=pad))
        else:
            both = _sequence_logps(model, plain_pair_batch(pairs, pad_id=pad))
            chosen, rejected = both[: len(pairs)], both[len(pairs) :]
        loss, _, _ = dpo_loss(chosen, rejected, ref, ref - 1.0, beta=0.1)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    shared_loss, shared_grad = grads("shared")
    plain_loss, plain_grad = grads("plain")
    assert shared_loss == approx(plain_loss)
    assert float(plain_grad.abs().sum()) > 0
    assert torch.allclose(shared_grad, plain_grad, atol=1e-6, rtol=1e-4)


def test_shared_prompt_rows_are_shorter_than_two_plain_rows() -> None:
    _, pairs, pad = tiny()
    shared = shared_prompt_batch(pairs, pad_id=pad).input_ids.numel()
    plain = plain_pair_batch(pairs, pad_id=pad).input_ids.numel()
    assert shared < plain


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-4, rel=1e-5)
