"""The packed training forward gives the model's own logits and gradients while computing each distinct token once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import LlamaForCausalLM

from training.engine import packed_forward
from training.engine.batching import positions
from training.engine.modeling import enable_gradient_checkpointing, tiny_llama_config
from training.engine.packed_forward import can_pack, packed_logits

PROMPT, COMPLETION, G = 5, 7, 3


def tiny() -> LlamaForCausalLM:
    """Two layers, grouped keys/values (2 KV heads for 4 query heads)."""
    config = tiny_llama_config(
        vocab_size=20, hidden_size=32, num_layers=2, num_heads=4, max_positions=64, pad_token_id=0
    )
    config.num_key_value_heads = 2
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def grpo_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts x G completions as GRPO lays them out: left-padded prompt (repeated per completion), then the
    completion padded after its end; two completions of the first group start with the same three tokens."""
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 20, (2, PROMPT), generator=generator)
    prompt_mask = torch.ones(2, PROMPT, dtype=torch.long)
    prompt[1, :2], prompt_mask[1, :2] = 0, 0
    completion = torch.randint(3, 20, (2 * G, COMPLETION), generator=generator)
    completion[1, :3] = completion[0, :3]
    lengths = torch.tensor([7, 4, 1, 7, 3, 5])
    completion_mask = (torch.arange(COMPLETION)[None] < lengths[:, None]).long()
    completion = completion.masked_fill(completion_mask == 0, 0)
    ids = torch.cat([prompt.repeat_interleave(G, 0), completion], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(G, 0), completion_mask], 1)
    return ids, mask


def test_packed_logits_and_gradients_equal_the_models_forward() -> None:
    model = tiny()
    assert can_pack(model)
    ids, mask = grpo_batch()
    pos, keep = positions(mask), COMPLETION + 1
    real = mask[:, -keep:].bool()
    padded = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
    packed = packed_logits(model, ids, mask, pos, keep=keep)
    assert packed.shape == padded.shape
    assert torch.allclose(packed[real], padded[real], atol=1e-5)
    assert bool((packed[~real] == 0).all())  # padding: zeros, never read
    weights = torch.randn(padded.shape, generator=torch.Generator().manual_seed(2)) * real[..., None]
    (padded * weights).sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (packed * weights).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.allclose(p.grad, expected[name], atol=1e-5, rtol=1e-4), name


def test_shared_prompts_and_prefixes_are_computed_once() -> None:
    model = tiny()
    ids, mask = grpo_batch()
    seen: list[int] = []
    model.model.embed_tokens.register_forward_hook(lambda _m, args, _out: seen.append(args[0].numel()))
    packed_logits(model, ids, mask, positions(mask), keep=COMPLETION + 1)
    # real tokens: 5 + 3 prompt tokens G times each, completions 7+4+1+7+3+5; computed: each prompt once, and
    # the second completion's first three tokens (the first's) not again
    assert int(mask.sum()) == 3 * 5 + 3 * 3 + 27
    assert seen == [5 + 3 + 27 - 3]


def test_models_it_cannot_reproduce_keep_the_padded_forward() -> None:
    model = tiny()
    enable_gradient_checkpointing(model, adapters=False)
    assert not can_pack(model)
    dropout = tiny()
    dropout.config.attention_dropout = 0.1
    assert not can_pack(dropout.train())
    assert can_pack(dropout.eval())
    assert not can_pack(torch.nn.Linear(2, 2))


def test_short_rows_attend_as_matmuls_with_the_fused_kernels_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU short rows take the matmul attention: its logits and gradients are the fused kernel's."""
    results = []
    for widest in (packed_forward._MATMUL_ATTENTION_MAX_WIDTH, 0):  # the default, then the fused kernel always
        monkeypatch.setattr(packed_forward, "_MATMUL_ATTENTION_MAX_WIDTH", widest)
        model = tiny()
        ids, mask = grpo_batch()
        calls: list[int] = []
        monkeypatch.setattr(
            packed_forward, "_matmul_attention", _counted(packed_forward._matmul_attention, calls), raising=True
        )
        logits = packed_logits(model, ids, mask, positions(mask), keep=COMPLETION + 1)
        (logits * mask[:, -COMPLETION - 1 :, None]).sum().backward()
        assert len(calls) == (2 if widest else 0)  # one per layer, or none
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        monkeypatch.undo()
    (matmul, matmul_grads), (fused, fused_grads) = results
    assert torch.allclose(matmul, fused, atol=1e-5)
    for a, b in zip(matmul_grads, fused_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def _counted(function: Callable[..., torch.Tensor], calls: list[int]) -> Callable[..., torch.Tensor]:
    def counted(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return function(*args)

    return counted


def test_bf16_autocast_keeps_the_fused_attention_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast the matmul attention would round its scores to bf16 before the softmax: not used."""
    calls: list[int] = []
    monkeypatch.setattr(packed_forward, "_matmul_attention", _counted(packed_forward._matmul_attention, calls))
    model = tiny()
    ids, mask = grpo_batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        packed_logits(model, ids, mask, positions(mask), keep=COMPLETION + 1)
    assert calls == []
    packed_logits(model, ids, mask, positions(mask), keep=COMPLETION + 1)
    assert len(calls) == 2  # and used without autocast (one call per layer)
