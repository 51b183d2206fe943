"""Decoding on a preallocated KV cache: a lean forward for Llama-family models, and the generic Hugging Face path.

Why a hand-written forward: on a small model each decode step is a few tiny matmuls, and Hugging Face's
per-call machinery (mask construction, cache objects growing by ``torch.cat``, output dataclasses) costs
more than the arithmetic. The lean path calls the model's own submodules (embeddings, norms, projections,
rotary embedding, MLP) in the same order with the same operations, writing keys and values into buffers
allocated once per rollout. On CPU a decode step's one-query attention is two matmuls and a softmax, and a
float32 RMSNorm torch's fused kernel (same arithmetic, fewer calls): its logits equal ``model(...)`` with a
DynamicCache to float round-off (they were bit-identical before those two), and a seeded rollout samples
the same tokens (tests/engine/test_kv_decode.py). Architectures it does not know keep the generic path.

On CPU in float32 a decode step of plain modules goes further (``LeanKVDecoder._fused_step``): weights copied
once per rollout with q|k|v and gate|up concatenated, rotary cos/sin from a per-rollout table, and about half
the tensor operations of the module-by-module step, for the same products (bench rollout: 0.72x the time,
the same tokens). A GRPO group's prompt is prefilled once and its cache copied to its G rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

# Same decoder block: pre-norm, rotary attention (grouped keys/values allowed, optional q/k/v bias), gated MLP.
_LEAN_MODEL_TYPES = frozenset({"llama", "qwen2"})


class Decoder(Protocol):
    """Prefill once, then one token per row per step; both return the logits of each row's last position."""

    def prefill(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, *, repeats: int = 1
    ) -> torch.Tensor:
        """Run the (left-padded) prompts; return (B, V) next-token logits. With ``repeats`` = n, each prompt
        stands for n consecutive rows of the batch (a GRPO group's G completions share it): (B·n, V)."""
        ...

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,) at ``positions`` (B, 1); return (B, V) next-token logits."""
        ...

    def keep_rows(self, rows: torch.Tensor) -> bool:
        """Drop every row but ``rows`` (indices into the current rows) from later steps; False if unsupported."""
        ...


def make_decoder(model: PreTrainedModel, *, batch: int, max_len: int) -> Decoder:
    """The lean decoder when ``model`` is a supported architecture, else the generic cache decoder."""
    if supports_lean(model):
        return LeanKVDecoder(model, batch=batch, max_len=max_len)
    return CacheDecoder(model, batch=batch, max_len=max_len)


def supports_lean(model: PreTrainedModel) -> bool:
    """Whether the lean forward reproduces ``model``: a known block layout, full attention, no extra heads."""
    config = model.config
    if getattr(config, "model_type", None) not in _LEAN_MODEL_TYPES:
        return False
    if getattr(config, "use_sliding_window", False):
        return False
    try:
        _Blocks.of(model)
    except (AttributeError, TypeError):
        return False
    return True


def _module(owner: object, name: str) -> torch.nn.Module:
    """A named submodule, checked: transformers' model classes expose their parts as untyped attributes."""
    value = getattr(owner, name)
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{type(owner).__name__}.{name} is not a module")
    return value


@dataclass(frozen=True)
class _Layer:
    """The modules of one decoder block, looked up once (attribute lookups on nn.Module are slow)."""

    input_norm: torch.nn.Module
    q: torch.nn.Module
    k: torch.nn.Module
    v: torch.nn.Module
    o: torch.nn.Module
    post_norm: torch.nn.Module
    mlp: torch.nn.Module


@dataclass(frozen=True)
class _Blocks:
    """A Llama-family model taken apart: embeddings, rotary embedding, decoder blocks, final norm, LM head."""

    embed: torch.nn.Module
    rotary: torch.nn.Module
    layers: list[_Layer]
    norm: torch.nn.Module
    lm_head: torch.nn.Module

    @classmethod
    def of(cls, model: PreTrainedModel) -> _Blocks:
        """Look the parts up; AttributeError or TypeError when ``model`` is laid out differently."""
        inner = _module(model, "model")
        layers = []
        for layer in _module(inner, "layers").children():
            attn = _module(layer, "self_attn")
            layers.append(
                _Layer(
                    input_norm=_module(layer, "input_layernorm"),
                    q=_module(attn, "q_proj"),
                    k=_module(attn, "k_proj"),
                    v=_module(attn, "v_proj"),
                    o=_module(attn, "o_proj"),
                    post_norm=_module(layer, "post_attention_layernorm"),
                    mlp=_module(layer, "mlp"),
                )
            )
        return cls(
            embed=_module(inner, "embed_tokens"),
            rotary=_module(inner, "rotary_emb"),
            layers=layers,
            norm=_module(inner, "norm"),
            lm_head=_module(model, "lm_head"),
        )


_FUSED_MLPS = frozenset({"LlamaMLP", "Qwen2MLP"})  # down(silu(gate(x)) * up(x))
_SILU = frozenset({"SiLUActivation", "SiLU"})
_STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})  # cos/sin depend on the position alone


def _linear(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A plain ``nn.Linear``'s weight and bias; TypeError for anything else (a LoRA layer adds its adapter in
    its own forward, which the fused step would skip)."""
    if type(module) is not torch.nn.Linear:
        raise TypeError(f"{type(module).__name__} is not a plain Linear")
    return module.weight.detach(), None if module.bias is None else module.bias.detach()


def _cat_bias(weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The biases of fused projections, zeros for the ones without (adding 0 changes no bit); None if none has."""
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else w.new_zeros(w.size(0)) for w, b in zip(weights, biases, strict=True)])


def _rms(norm: torch.nn.Module) -> tuple[torch.Tensor, tuple[int], float]:
    """A float32 Llama/Qwen2 RMSNorm as F.rms_norm's arguments (what ``_norm`` calls); TypeError otherwise."""
    weight = getattr(norm, "weight", None)
    if type(norm).__name__ not in _RMS_NORMS or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(norm).__name__} is not a known RMSNorm")
    return weight.detach(), (weight.size(-1),), float(getattr(norm, "variance_epsilon", 1e-6))


@dataclass(frozen=True)
class _FusedLayer:
    """One decoder block's weights as tensors, q|k|v and gate|up concatenated along their output rows."""

    input_norm: torch.Tensor
    input_norm_shape: tuple[int]
    input_eps: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    post_norm_shape: tuple[int]
    post_eps: float
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    intermediate: int
    down: torch.Tensor
    down_bias: torch.Tensor | None


@dataclass(frozen=True)
class _FusedStep:
    """What LeanKVDecoder._fused_step reads: the model's weights (fused copies where concatenated) and the
    rotary cos/sin of every position of the rollout, computed once by the model's own rotary module."""

    embed: torch.Tensor
    layers: list[_FusedLayer]
    norm: torch.Tensor
    norm_shape: tuple[int]
    norm_eps: float
    lm_head: torch.Tensor
    lm_head_bias: torch.Tensor | None
    cos: torch.Tensor  # (max_len, head_dim)
    sin: torch.Tensor
    signed_sin: torch.Tensor  # sin with its first half negated (see _fused_step)

    @classmethod
    def of(cls, blocks: _Blocks, model: PreTrainedModel, *, max_len: int) -> _FusedStep | None:
        """The fused step's tensors, or None where it would not reproduce ``_forward``: off CPU, off float32 or
        under bf16 autocast (the one-query attention's conditions; on a GPU the copies would also cost memory),
        any module not the plain one the step replaces (LoRA layers, other MLPs or activations), a rotary that
        changes with the sequence length (dynamic RoPE)."""
        param = next(model.parameters())
        if param.device.type != "cpu" or any(p.dtype != torch.float32 for p in model.parameters()):
            return None
        if torch.is_autocast_enabled("cpu"):  # bf16 matmuls: the module-by-module step scales scores in float32
            return None
        if getattr(blocks.rotary, "rope_type", "default") not in _STATIC_ROPE or type(blocks.embed) is not (
            torch.nn.Embedding
        ):
            return None
        try:
            with torch.no_grad():
                layers = [_fused_layer(layer) for layer in blocks.layers]
                norm, norm_shape, norm_eps = _rms(blocks.norm)
                lm_head, lm_head_bias = _linear(blocks.lm_head)
                where = torch.arange(max_len, device=param.device)[None]
                cos, sin = blocks.rotary(param.new_zeros(1), where)
        except (AttributeError, TypeError):
            return None
        return cls(
            embed=blocks.embed.weight.detach(),
            layers=layers,
            norm=norm,
            norm_shape=norm_shape,
            norm_eps=norm_eps,
            lm_head=lm_head,
            lm_head_bias=lm_head_bias,
            cos=cos[0],
            sin=sin[0],
            signed_sin=torch.cat([-sin[0, :, : sin.size(-1) // 2], sin[0, :, sin.size(-1) // 2 :]], -1),
        )


def _fused_layer(layer: _Layer) -> _FusedLayer:
    """One block's fused tensors; AttributeError or TypeError when a part is not what the fused step assumes."""
    mlp = layer.mlp
    if type(mlp).__name__ not in _FUSED_MLPS or type(_module(mlp, "act_fn")).__name__ not in _SILU:
        raise TypeError(f"{type(mlp).__name__} is not a SiLU-gated MLP")
    (q, q_bias), (k, k_bias), (v, v_bias) = _linear(layer.q), _linear(layer.k), _linear(layer.v)
    (gate, gate_bias), (up, up_bias) = _linear(_module(mlp, "gate_proj")), _linear(_module(mlp, "up_proj"))
    o, o_bias = _linear(layer.o)
    down, down_bias = _linear(_module(mlp, "down_proj"))
    input_norm, input_norm_shape, input_eps = _rms(layer.input_norm)
    post_norm, post_norm_shape, post_eps = _rms(layer.post_norm)
    return _FusedLayer(
        input_norm=input_norm,
        input_norm_shape=input_norm_shape,
        input_eps=input_eps,
        qkv=torch.cat([q, k, v]),
        qkv_bias=_cat_bias([q, k, v], [q_bias, k_bias, v_bias]),
        o=o,
        o_bias=o_bias,
        post_norm=post_norm,
        post_norm_shape=post_norm_shape,
        post_eps=post_eps,
        gate_up=torch.cat([gate, up]),
        gate_up_bias=_cat_bias([gate, up], [gate_bias, up_bias]),
        intermediate=gate.size(0),
        down=down,
        down_bias=down_bias,
    )


class LeanKVDecoder:
    """A Llama-family forward over a KV cache preallocated for ``max_len`` positions."""

    def __init__(self, model: PreTrainedModel, *, batch: int, max_len: int) -> None:
        config = model.config
        self.blocks = _Blocks.of(model)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        param = next(model.parameters())
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        self.keys = [torch.empty(shape, dtype=param.dtype, device=param.device) for _ in self.blocks.layers]
        self.values = [torch.empty(shape, dtype=param.dtype, device=param.device) for _ in self.blocks.layers]
        self.key_mask = torch.ones((batch, max_len), dtype=torch.bool, device=param.device)
        # the same mask as an additive bias (0 or -inf), for the one-query attention of a decode step
        self.key_bias = torch.zeros((batch, max_len), dtype=torch.float32, device=param.device)
        self.length = 0
        self.padded = True  # whether some prompt is left-padded (a key to mask), known after the prefill
        # The decode step's fast path (CPU, float32, plain modules); built per rollout, so after every
        # optimiser step: its fused q|k|v and gate|up weights are copies made here, never stale within the
        # rollout they serve; the other weights are views of the live parameters (not for FSDP-sharded ones,
        # whose storage a reshard frees: the fast path is CPU-only and not used under FSDP).
        self.fused = _FusedStep.of(self.blocks, model, max_len=max_len)

    def prefill(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, *, repeats: int = 1
    ) -> torch.Tensor:
        """Causal attention over the prompts; a left-pad query attends to itself alone (its output is unused,
        but a fully masked row would give NaN keys and values to later layers). With ``repeats`` > 1 each
        prompt runs once and its keys and values are copied to its ``repeats`` rows of the cache."""
        width, rows = ids.size(1), ids.size(0) * repeats
        real = mask.bool()
        self.key_mask[:rows, :width] = real.repeat_interleave(repeats, 0) if repeats > 1 else real
        self.key_bias[:rows, :width].masked_fill_(~self.key_mask[:rows, :width], float("-inf"))
        self.padded = not bool(real.all())
        arange = torch.arange(width, device=ids.device)
        causal = arange[None, :] <= arange[:, None]
        itself = arange[None, :] == arange[:, None]
        allowed = (causal[None] & real[:, None, :]) | itself[None]
        logits = self._forward(ids, positions, allowed[:, None])
        if repeats > 1:
            for cache in (*self.keys, *self.values):
                cache[:rows, :, :width] = cache[: ids.size(0), :, :width].repeat_interleave(repeats, 0)
            logits = logits.repeat_interleave(repeats, 0)
        return logits

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One new token per row attends to every real key so far (the cache holds no future positions)."""
        if self.fused is not None:
            return self._fused_step(self.fused, tokens, positions)
        return self._forward(tokens[:, None], positions, self.key_mask[:, None, None, : self.length + 1], decode=True)

    def keep_rows(self, rows: torch.Tensor) -> bool:
        """Shrink the cache to ``rows``: finished completions stop costing compute in later steps."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.key_mask = self.key_mask.index_select(0, rows)
        self.key_bias = self.key_bias.index_select(0, rows)
        return True

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor, *, decode: bool = False
    ) -> torch.Tensor:
        blocks = self.blocks
        # The matmul attention only for decode steps (a one-token-wide prefill has left-pad rows that must attend
        # to themselves, which prefill's mask does and key_bias does not), and only in float32 on CPU: in bf16/fp16
        # the scores would be rounded before the softmax, where the fused kernel accumulates in float32.
        one_query = decode and ids.device.type == "cpu" and self.keys[0].dtype == torch.float32
        batch, width = ids.shape
        start, end = self.length, self.length + width
        shape = (batch, width, -1, self.head_dim)
        fused = self.fused  # the fused step's tensors serve the prefill too: the same products, fewer calls
        if fused is not None:
            hidden = F.embedding(ids, fused.embed)
            cos, sin = fused.cos[positions], fused.sin[positions]
        else:
            hidden = blocks.embed(ids)
            cos, sin = blocks.rotary(hidden, positions)
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for index, layer in enumerate(blocks.layers):
            normed = _norm(layer.input_norm, hidden)
            if fused is not None:
                qkv = F.linear(normed, fused.layers[index].qkv, fused.layers[index].qkv_bias)
                q, k, v = qkv.split_with_sizes([q_width, kv_width, kv_width], dim=-1)
            else:
                q, k, v = layer.q(normed), layer.k(normed), layer.v(normed)
            q, k, v = q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)
            q, k = _rotary(q, k, cos, sin)
            # the first ``batch`` rows: a shared-prompt prefill fills them before copying them to their groups
            keys, values = self.keys[index][:batch], self.values[index][:batch]
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            if one_query:
                out = self._one_query_attention(q, keys[:, :, :end], values[:, :, :end])
            else:
                out = F.scaled_dot_product_attention(
                    q,
                    keys[:, :, :end],
                    values[:, :, :end],
                    attn_mask=attn_mask,
                    enable_gqa=self.kv_heads != self.heads,
                )
            hidden = hidden + layer.o(out.transpose(1, 2).reshape(batch, width, -1))
            normed = _norm(layer.post_norm, hidden)
            if fused is not None:
                fl = fused.layers[index]
                gate_up = F.linear(normed, fl.gate_up, fl.gate_up_bias)
                gated = F.silu(gate_up[..., : fl.intermediate]) * gate_up[..., fl.intermediate :]
                hidden = hidden + F.linear(gated, fl.down, fl.down_bias)
            else:
                hidden = hidden + layer.mlp(normed)
        self.length = end
        logits: torch.Tensor = blocks.lm_head(_norm(blocks.norm, hidden[:, -1]))
        return logits

    def _one_query_attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """softmax(q·kᵀ/√d + mask)·v for one query per row, as matmuls: on a decode step's (B, H, 1, D) query
        this took 0.57x the time of scaled_dot_product_attention on CPU (whose kernel is built for many
        queries). Softmax in float32, as the models' eager attention; the query heads that share a key/value
        head (grouped attention) are stacked as its rows. CPU only: not measured on GPUs."""
        batch, end = q.size(0), keys.size(2)
        grouped = q.reshape(batch, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).float() * self.head_dim**-0.5
        scores = scores + self.key_bias[:, None, None, :end]
        out = torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)
        return out.reshape(batch, self.heads, 1, self.head_dim)

    def _fused_step(self, fused: _FusedStep, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``_forward``'s decode step with fewer, larger operations and the same arithmetic: q|k|v and gate|up as
        one matmul each (a fused output row is the separate rows side by side), rotary on q and k at once with
        cos/sin looked up in a table, weights as tensors rather than modules (a module call costs more than a
        32-row matmul here), and ``_one_query_attention`` on (B, H, D) rows. The logits are those of the
        module-by-module step to the bit where the BLAS accumulates a fused row as it does a separate one
        (measured with MKL on the bench's model: a seeded rollout samples the same tokens), else to round-off
        (tests/engine/test_kv_decode.py)."""
        batch, start, end = tokens.size(0), self.length, self.length + 1
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        rotated_heads = heads + kv_heads
        where = positions.reshape(-1)
        cos, signed_sin = fused.cos.index_select(0, where)[:, None], fused.signed_sin.index_select(0, where)[:, None]
        # adding a bias of zeros changes no bit: skipped when no prompt was padded
        bias = self.key_bias[:, None, :end] if self.padded else None
        scale, groups, length = head_dim**-0.5, heads // kv_heads, self.keys[0].size(2)
        hidden = F.embedding(tokens, fused.embed)
        for index, layer in enumerate(fused.layers):
            normed = F.rms_norm(hidden, layer.input_norm_shape, layer.input_norm, layer.input_eps)
            qkv = F.linear(normed, layer.qkv, layer.qkv_bias).view(batch, rotated_heads + kv_heads, head_dim)
            qk = qkv[:, :rotated_heads]
            # rotate_half(x)·sin = roll(x)·(sin with its first half negated): the same products (a sign flip is
            # exact), two operations fewer
            rotated = torch.mul(qk, cos).add_(qk.roll(head_dim // 2, -1).mul_(signed_sin))
            keys, values = self.keys[index], self.values[index]
            keys[:, :, start] = rotated[:, heads:]
            values[:, :, start] = qkv[:, rotated_heads:]
            # the batched matmuls torch.matmul makes of (B, KV, G, D) x (B, KV, D, T), called directly
            grouped = rotated[:, :heads].reshape(batch * kv_heads, groups, head_dim)
            scores = torch.bmm(grouped, keys.view(batch * kv_heads, length, head_dim)[:, :end].transpose(1, 2))
            scores = scores.mul_(scale).view(batch, heads, end)
            if bias is not None:
                scores = scores.add_(bias)
            probs = torch.softmax(scores, dim=-1).view(batch * kv_heads, groups, end)
            out = torch.bmm(probs, values.view(batch * kv_heads, length, head_dim)[:, :end]).view(batch, -1)
            hidden = hidden.add_(F.linear(out, layer.o, layer.o_bias))
            normed = F.rms_norm(hidden, layer.post_norm_shape, layer.post_norm, layer.post_eps)
            gate_up = F.linear(normed, layer.gate_up, layer.gate_up_bias)
            gate, up = gate_up[:, : layer.intermediate], gate_up[:, layer.intermediate :]
            hidden = hidden.add_(F.linear(F.silu(gate).mul_(up), layer.down, layer.down_bias))
        self.length = end
        normed = F.rms_norm(hidden, fused.norm_shape, fused.norm, fused.norm_eps)
        return F.linear(normed, fused.lm_head, fused.lm_head_bias)


_RMS_NORMS = frozenset({"LlamaRMSNorm", "Qwen2RMSNorm"})  # weight * (x / rms(x)), in float32


def _norm(norm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``norm(hidden)``; for a float32 Llama/Qwen2 RMSNorm, torch's fused rms_norm (one kernel for the seven
    operations of the module's forward, the same arithmetic)."""
    weight = getattr(norm, "weight", None)
    if (
        type(norm).__name__ in _RMS_NORMS
        and hidden.dtype == torch.float32
        and isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
    ):
        return F.rms_norm(hidden, (hidden.size(-1),), weight, float(getattr(norm, "variance_epsilon", 1e-6)))
    out: torch.Tensor = norm(hidden)
    return out


def _rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding, the same operations as transformers' ``apply_rotary_pos_emb``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class CacheDecoder:
    """Any causal LM through its own forward and a DynamicCache (the attention mask grows in a preallocated row)."""

    def __init__(self, model: PreTrainedModel, *, batch: int, max_len: int) -> None:
        self.model = model
        self.cache = DynamicCache()
        param = next(model.parameters())
        self.mask = torch.ones((batch, max_len), dtype=torch.long, device=param.device)
        self.length = 0

    def prefill(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, *, repeats: int = 1
    ) -> torch.Tensor:
        """The prompts in one call, keeping only the last position's logits (repeated prompts run as rows of
        their own: cache classes differ in how, and whether, they copy rows)."""
        if repeats > 1:
            ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
            positions = positions.repeat_interleave(repeats, 0)
        self.length = ids.size(1)
        self.mask[:, : self.length] = mask
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask[:, : self.length],
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per row on the cache."""
        self.length += 1
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask[:, : self.length],
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    def keep_rows(self, rows: torch.Tensor) -> bool:
        """Not done here: cache classes differ in how (and whether) they select rows."""
        return False
