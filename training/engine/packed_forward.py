"""A Llama-family training forward that runs each distinct real token once: no padding, no repeated prefixes.

Why: GRPO scores G completions per prompt as rows of left-padded prompt + completion padded after EOS. On
the bench (tests of bench/bench_engine.py) about a quarter of that grid is padding and a group's G rows
repeat one prompt, so a forward over the grid spends a third of its matmul FLOPs, forward and backward, on
tokens whose outputs are never read or are computed G times. In a causal model a token's hidden states
depend only on the tokens up to it, so two rows whose (ids, mask) agree up to a column have the same hidden
states there: that token is computed once, for the first such row (a shared prompt, and any shared start of
the completions). Projections, norms, rotary embedding and MLP run on those tokens alone; attention runs on
the padded grid (queries, keys and values gathered into it, outputs gathered back), so every real query
attends to exactly the keys a padded forward shows it. A shared token's gradient is the sum over the rows
that read it (index_select's backward), as the G copies' gradients are summed into the weights.

Same modules and operations as the model's own forward (the lean decoder's _Blocks): equal to it up to float
rounding (tests/engine/test_packed_forward.py). Only for a plain module (no DDP/FSDP wrapper, whose hooks
run in the model's own forward), without gradient checkpointing or attention dropout; else None.
"""

from __future__ import annotations

from typing import TypeGuard

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from training.engine.rollout.kv_decode import _Blocks, _rotate_half, supports_lean


def can_pack(model: torch.nn.Module) -> TypeGuard[PreTrainedModel]:
    """Whether ``packed_logits`` reproduces ``model``'s forward (and autograd through it)."""
    if not isinstance(model, PreTrainedModel) or not supports_lean(model):
        return False
    checkpointing = getattr(type(model), "is_activation_checkpointing", None)  # transformers >= 5
    if bool(model.is_activation_checkpointing if checkpointing is not None else model.is_gradient_checkpointing):
        return False
    if model.training and float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0:
        return False
    try:  # FSDP2 shards the module in place; its hooks gather weights in the blocks' own forward
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return True
    return not any(isinstance(m, FSDPModule) for m in model.modules())


def packed_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    keep: int,
) -> torch.Tensor:
    """``model(input_ids, attention_mask, position_ids, logits_to_keep=keep).logits`` at every real position
    of the last ``keep`` columns; (B, keep, V) with zeros at padding (which a padded forward fills with
    values no loss reads). Call only where ``can_pack(model)``."""
    blocks = _Blocks.of(model)
    config = model.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    batch, width = input_ids.shape
    device = input_ids.device
    real = attention_mask.bool()
    with torch.no_grad():
        # source[r, c]: the first row whose ids and mask equal row r's over columns 0..c (r itself at worst)
        same = (input_ids[:, None, :] == input_ids[None, :, :]) & (real[:, None, :] == real[None, :, :])
        prefix = same.to(torch.uint8).cummin(-1).values
        source = prefix.argmax(1)  # (B, W)
        rows = torch.arange(batch, device=device)
        columns = torch.arange(width, device=device)
        own = ((source == rows[:, None]) & real).flatten()
        computed = own.nonzero().squeeze(1)  # grid cells (r * W + c) whose token is computed
        slot = torch.zeros(batch * width, dtype=torch.long, device=device)
        slot[computed] = torch.arange(computed.numel(), device=device)
        # every grid cell -> its computed token (padding -> token 0: finite values, masked as keys, never read)
        grid = torch.where(real.flatten(), slot[(source * width + columns).flatten()], 0)
        causal = columns[None, :] <= columns[:, None]
        itself = columns[None, :] == columns[:, None]  # a padding query attends to itself: no empty softmax row
        allowed = ((causal[None] & real[:, None, :]) | itself[None])[:, None]
        # On CPU in float32, short rows attend faster as matmuls than through the fused kernel (see
        # _matmul_attention); its additive mask is made once for every layer.
        scores_bias = (
            torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, float("-inf"))
            if _matmul_attention_pays(device, blocks.embed, width)
            else None
        )
        last = real[:, width - keep :].flatten()
        wanted_out = last.nonzero().squeeze(1)  # cells of the (B, keep) output that are real
        wanted = grid.view(batch, width)[:, width - keep :].flatten().index_select(0, wanted_out)
    hidden: torch.Tensor = blocks.embed(input_ids.flatten().index_select(0, computed))
    cos, sin = blocks.rotary(hidden[None], position_ids.flatten().index_select(0, computed)[None])
    cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # (N, 1, D): broadcast over heads

    def to_grid(x: torch.Tensor, n_heads: int) -> torch.Tensor:
        return x.index_select(0, grid).view(batch, width, n_heads, head_dim).transpose(1, 2)

    n = computed.numel()
    for layer in blocks.layers:
        normed = layer.input_norm(hidden)
        q = layer.q(normed).view(n, heads, head_dim)
        k = layer.k(normed).view(n, kv_heads, head_dim)
        v = layer.v(normed).view(n, kv_heads, head_dim)
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        if scores_bias is not None:
            out = _matmul_attention(to_grid(q, heads), to_grid(k, kv_heads), to_grid(v, kv_heads), scores_bias)
        else:
            out = F.scaled_dot_product_attention(
                to_grid(q, heads),
                to_grid(k, kv_heads),
                to_grid(v, kv_heads),
                attn_mask=allowed,
                enable_gqa=kv_heads != heads,
            )
        out = out.transpose(1, 2).reshape(batch * width, heads * head_dim).index_select(0, computed)
        hidden = hidden + layer.o(out)
        hidden = hidden + layer.mlp(layer.post_norm(hidden))
    logits: torch.Tensor = blocks.lm_head(blocks.norm(hidden.index_select(0, wanted)))
    full = logits.new_zeros((batch * keep, logits.size(-1))).index_copy(0, wanted_out, logits)
    return full.view(batch, keep, -1)


# The widest rows for which _matmul_attention is used: measured on the bench machine's CPU (2 threads, 32 rows,
# 4 heads of 32), forward and backward: 0.45x the fused kernel's time at width 29, 0.77x at 48, 1.33x at 64.
_MATMUL_ATTENTION_MAX_WIDTH = 48


def _matmul_attention_pays(device: torch.device, embed: torch.nn.Module, width: int) -> bool:
    """Whether to attend by ``_matmul_attention``: CPU, float32 weights and no bf16 autocast (scores are not
    rounded to bf16 before the softmax, which the fused kernel keeps in float32), rows short enough that the
    (B, H, W, W) scores are small and the matmuls faster."""
    weight = getattr(embed, "weight", None)
    return (
        device.type == "cpu"
        and isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled(device.type)
        and width <= _MATMUL_ATTENTION_MAX_WIDTH
    )


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d + bias)·v, the models' eager attention (grouped keys/values repeated to the query heads);
    equal to scaled_dot_product_attention to float round-off. Why: on CPU the fused kernel is built for long
    rows; on a GRPO batch's short ones it took twice the time, forward and backward."""
    groups = q.size(1) // k.size(1)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.size(-1) ** -0.5 + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)
