"""Decoding on a preallocated KV cache: a lean forward for Llama-family models, and the generic Hugging Face path.

Why a hand-written forward: on a small model each decode step is a few tiny matmuls, and Hugging Face's
per-call machinery (mask construction, cache objects growing by ``torch.cat``, output dataclasses) costs
more than the arithmetic. The lean path calls the model's own submodules (embeddings, norms, projections,
rotary embedding, MLP) in the same order with the same operations, writing keys and values into buffers
allocated once per rollout. On CPU a decode step's one-query attention is two matmuls and a softmax, and a
float32 RMSNorm torch's fused kernel (same arithmetic, fewer calls): its logits equal ``model(...)`` with a
DynamicCache to float round-off (they were bit-identical before those two), and a seeded rollout samples
the same tokens (tests/engine/test_kv_decode.py). Architectures it does not know keep the generic path.
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

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run the (left-padded) prompts; return (B, V) next-token logits."""
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

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Causal attention over the prompts; a left-pad query attends to itself alone (its output is unused,
        but a fully masked row would give NaN keys and values to later layers)."""
        width = ids.size(1)
        self.key_mask[:, :width] = mask.bool()
        self.key_bias[:, :width].masked_fill_(~mask.bool(), float("-inf"))
        arange = torch.arange(width, device=ids.device)
        causal = arange[None, :] <= arange[:, None]
        itself = arange[None, :] == arange[:, None]
        allowed = (causal[None] & self.key_mask[:, None, :width]) | itself[None]
        return self._forward(ids, positions, allowed[:, None])

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One new token per row attends to every real key so far (the cache holds no future positions)."""
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
        hidden: torch.Tensor = blocks.embed(ids)
        cos, sin = blocks.rotary(hidden, positions)
        for index, layer in enumerate(blocks.layers):
            normed = _norm(layer.input_norm, hidden)
            q = layer.q(normed).view(shape).transpose(1, 2)
            k = layer.k(normed).view(shape).transpose(1, 2)
            v = layer.v(normed).view(shape).transpose(1, 2)
            q, k = _rotary(q, k, cos, sin)
            self.keys[index][:, :, start:end] = k
            self.values[index][:, :, start:end] = v
            if one_query:
                out = self._one_query_attention(q, self.keys[index][:, :, :end], self.values[index][:, :, :end])
            else:
                out = F.scaled_dot_product_attention(
                    q,
                    self.keys[index][:, :, :end],
                    self.values[index][:, :, :end],
                    attn_mask=attn_mask,
                    enable_gqa=self.kv_heads != self.heads,
                )
            hidden = hidden + layer.o(out.transpose(1, 2).reshape(batch, width, -1))
            hidden = hidden + layer.mlp(_norm(layer.post_norm, hidden))
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

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The prompts in one call, keeping only the last position's logits."""
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
