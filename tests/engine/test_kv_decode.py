"""The lean preallocated-KV-cache decoder reproduces the model's own forward, and rollouts stay what they were."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from training.engine.batching import encode_prompt, pad_left, positions, token_logprobs
from training.engine.modeling import tiny_llama_config, train_char_tokenizer
from training.engine.rollout.hf import HFRollout
from training.engine.rollout.kv_decode import CacheDecoder, LeanKVDecoder, supports_lean


def tiny() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Two layers and grouped keys/values (2 KV heads for 4 query heads): the lean path must handle both."""
    tokenizer = train_char_tokenizer(["0123456789+= abcdefghijklmnopqrstuvwxyz?:\n."])
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        max_positions=64,
        pad_token_id=int(tokenizer.pad_token_id),
    )
    config.num_key_value_heads = 2
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def prompts(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    # different lengths, so the batch is left-padded
    return [encode_prompt(tokenizer, p) for p in ("1+2=", "12+30=", "7=", "hello 4+4=")]


def test_lean_decoder_logits_equal_the_models_cache_path() -> None:
    model, tokenizer = tiny()
    assert supports_lean(model)
    ids, mask = pad_left(prompts(tokenizer), pad_id=int(tokenizer.pad_token_id))
    pos = positions(mask)
    lean = LeanKVDecoder(model, batch=ids.size(0), max_len=ids.size(1) + 6)
    generic = CacheDecoder(model, batch=ids.size(0), max_len=ids.size(1) + 6)
    with torch.no_grad():
        a, b = lean.prefill(ids, mask, pos), generic.prefill(ids, mask, pos)
        assert torch.allclose(a, b, atol=1e-5)
        next_pos = pos[:, -1:] + 1
        for _ in range(6):
            token = a.argmax(-1)
            a, b = lean.step(token, next_pos), generic.step(token, next_pos)
            assert torch.allclose(a, b, atol=1e-5)
            next_pos = next_pos + 1


def test_lean_decoder_drops_finished_rows_without_changing_the_others() -> None:
    model, tokenizer = tiny()
    ids, mask = pad_left(prompts(tokenizer), pad_id=int(tokenizer.pad_token_id))
    pos = positions(mask)
    full = LeanKVDecoder(model, batch=4, max_len=ids.size(1) + 3)
    shrunk = LeanKVDecoder(model, batch=4, max_len=ids.size(1) + 3)
    with torch.no_grad():
        first = full.prefill(ids, mask, pos)
        shrunk.prefill(ids, mask, pos)
        token = first.argmax(-1)
        rows = torch.tensor([1, 3])
        assert shrunk.keep_rows(rows)
        a = full.step(token, pos[:, -1:] + 1)
        b = shrunk.step(token[rows], pos[rows, -1:] + 1)
    assert torch.allclose(a[rows], b, atol=1e-5)


def test_rollout_logprobs_equal_the_trainers_scores_on_every_padded_row() -> None:
    """What the sampler believed it sampled is what the trainer scores: left padding, early EOS and the
    shrinking batch included (the GRPO ratio is 1 on the first pass only if this holds)."""
    model, tokenizer = tiny()
    backend = HFRollout(model, pad_token_id=int(tokenizer.pad_token_id), eos_token_id=tokenizer.eos_token_id)
    rows = prompts(tokenizer)
    torch.manual_seed(0)
    out = backend.generate(rows, n=3, max_new_tokens=40, return_logprobs=True)
    assert int(out.finished.sum()) >= 2  # enough rows end early for the decoder to drop them
    assert out.logprobs is not None
    prompt_ids, prompt_mask = pad_left(rows, pad_id=int(tokenizer.pad_token_id))
    ids = torch.cat([prompt_ids.repeat_interleave(3, 0), out.completion_ids], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(3, 0), out.completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    width = prompt_ids.size(1)
    targets = out.completion_ids.masked_fill(out.completion_mask == 0, -100)
    expected = token_logprobs(logits[:, width - 1 : -1], targets)
    assert torch.allclose(out.logprobs, expected, atol=1e-4)


def test_rollout_is_the_same_sample_on_the_lean_and_the_generic_path() -> None:
    model, tokenizer = tiny()
    backend = HFRollout(model, pad_token_id=int(tokenizer.pad_token_id), eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(3)
    lean = backend.generate(prompts(tokenizer), n=4, max_new_tokens=10)
    model.config.model_type = "not-a-llama"  # same weights, served by the generic cache path
    assert not supports_lean(model)
    torch.manual_seed(3)
    generic = backend.generate(prompts(tokenizer), n=4, max_new_tokens=10)
    assert torch.equal(lean.completion_ids, generic.completion_ids)
    assert torch.equal(lean.finished, generic.finished)


def test_a_one_token_wide_prefill_with_an_all_padding_row_stays_finite() -> None:
    """Prompts one token wide where one row is all padding (an empty prompt): the prefill must let that row attend
    to itself, as the fused path does, or its NaN keys and values poison every later step of the row."""
    model, tokenizer = tiny()
    pad = int(tokenizer.pad_token_id)
    ids = torch.tensor([[encode_prompt(tokenizer, "7")[-1]], [pad]])
    mask = torch.tensor([[1], [0]])
    pos = positions(mask)
    lean = LeanKVDecoder(model, batch=2, max_len=5)
    generic = CacheDecoder(model, batch=2, max_len=5)
    with torch.no_grad():
        a, b = lean.prefill(ids, mask, pos), generic.prefill(ids, mask, pos)
        assert torch.isfinite(a).all()
        assert torch.allclose(a[0], b[0], atol=1e-5)
        next_pos = pos[:, -1:] + 1
        for _ in range(3):
            token = a.argmax(-1)
            a, b = lean.step(token, next_pos), generic.step(token, next_pos)
            assert torch.isfinite(a).all()
            assert torch.allclose(a[0], b[0], atol=1e-5)
            next_pos = next_pos + 1


def _decode(lean: LeanKVDecoder, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The prefill's logits, then those of ``steps`` greedy decode steps."""
    pos = positions(mask)
    with torch.no_grad():
        out = [lean.prefill(ids, mask, pos)]
        next_pos = pos[:, -1:] + 1
        for _ in range(steps):
            out.append(lean.step(out[-1].argmax(-1), next_pos))
            next_pos = next_pos + 1
    return out


def test_fused_decode_step_equals_the_module_by_module_step() -> None:
    """q|k|v and gate|up as one matmul, rotary from a table: the same arithmetic, so the same logits (to the bit
    where the BLAS accumulates a fused row as it does the separate ones, as for these sizes on this machine's
    MKL; to float round-off elsewhere), and the model's own forward to round-off."""
    model, tokenizer = tiny()
    unpadded = pad_left([encode_prompt(tokenizer, p) for p in ("1+2=", "3+4=")], pad_id=int(tokenizer.pad_token_id))
    for batch in (unpadded, pad_left(prompts(tokenizer), pad_id=int(tokenizer.pad_token_id))):
        ids, mask = batch
        fused = LeanKVDecoder(model, batch=ids.size(0), max_len=ids.size(1) + 6)
        assert fused.fused is not None  # a silent fallback would make the comparison below vacuous
        plain = LeanKVDecoder(model, batch=ids.size(0), max_len=ids.size(1) + 6)
        plain.fused = None
        a, b = _decode(fused, ids, mask, 6), _decode(plain, ids, mask, 6)
        assert fused.padded == (not bool(mask.all()))
        for x, y in zip(a, b, strict=True):
            assert torch.allclose(x, y, rtol=0, atol=1e-6)
    # the plain Hugging Face forward over prompt + the greedy tokens
    tokens = torch.stack([x.argmax(-1) for x in a[:-1]], 1)
    full_ids, full_mask = torch.cat([ids, tokens], 1), torch.cat([mask, torch.ones_like(tokens)], 1)
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions(full_mask)).logits
    expected = logits[:, ids.size(1) - 1 :]
    assert torch.allclose(torch.stack(a, 1), expected, atol=1e-5)


def test_fused_decode_step_adds_qwen2_projection_biases() -> None:
    """Qwen2 has q/k/v biases: the fused matmul carries them (concatenated)."""
    tokenizer = train_char_tokenizer(["0123456789+= abcdefghijklmnopqrstuvwxyz?:\n."])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=int(tokenizer.pad_token_id),
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.bias.normal_()  # initialised to zero: make them matter
    ids, mask = pad_left(prompts(tokenizer), pad_id=int(tokenizer.pad_token_id))
    fused = LeanKVDecoder(model, batch=4, max_len=ids.size(1) + 4)
    assert fused.fused is not None and fused.fused.layers[0].qkv_bias is not None
    plain = LeanKVDecoder(model, batch=4, max_len=ids.size(1) + 4)
    plain.fused = None
    for x, y in zip(_decode(fused, ids, mask, 4), _decode(plain, ids, mask, 4), strict=True):
        assert torch.allclose(x, y, rtol=0, atol=1e-6)


def test_fused_decode_step_is_not_used_over_an_adapter_layer() -> None:
    """A projection that is not a plain Linear (a LoRA layer adds its adapter in its own forward) keeps the
    module-by-module step, which calls it."""

    class Adapted(torch.nn.Linear):
        pass

    model, _ = tiny()
    old = model.model.layers[1].self_attn.v_proj
    adapted = Adapted(old.in_features, old.out_features, bias=False)
    adapted.load_state_dict(old.state_dict())
    model.model.layers[1].self_attn.v_proj = adapted
    assert LeanKVDecoder(model, batch=1, max_len=4).fused is None


def test_shared_prompt_prefill_equals_a_prefill_of_every_row() -> None:
    """Prefilling each prompt once and copying its cache to its n rows gives what prefilling n copies gives."""
    model, tokenizer = tiny()
    ids, mask = pad_left(prompts(tokenizer), pad_id=int(tokenizer.pad_token_id))
    pos = positions(mask)
    shared = LeanKVDecoder(model, batch=12, max_len=ids.size(1) + 3)
    each = LeanKVDecoder(model, batch=12, max_len=ids.size(1) + 3)
    with torch.no_grad():
        a = shared.prefill(ids, mask, pos, repeats=3)
        b = each.prefill(ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), pos.repeat_interleave(3, 0))
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.equal(shared.key_bias, each.key_bias)
        for x, y in zip([*shared.keys, *shared.values], [*each.keys, *each.values], strict=True):
            assert torch.allclose(x[:, :, : ids.size(1)], y[:, :, : ids.size(1)], atol=1e-6)
        next_pos = pos.repeat_interleave(3, 0)[:, -1:] + 1
        token = a.argmax(-1)
        assert torch.allclose(shared.step(token, next_pos), each.step(token, next_pos), atol=1e-6)


def test_fused_decode_step_is_not_used_under_bf16_autocast() -> None:
    """Under CPU bf16 autocast the module-by-module step (scores scaled in float32) keeps serving the rollout."""
    model, _ = tiny()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert LeanKVDecoder(model, batch=1, max_len=4).fused is None
    assert LeanKVDecoder(model, batch=1, max_len=4).fused is not None
