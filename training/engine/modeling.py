"""Load a policy: any local or hub path, or a tiny Llama built from a config with a locally trained tokenizer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from training.engine.config import BaseRecipeConfig
from training.engine.tokens import SPECIAL_TOKENS, char_tokenizer_core

TINY = "tiny"


def train_char_tokenizer(texts: Iterable[str], *, extra_merges: int = 0) -> PreTrainedTokenizerFast:
    """A character-level tokenizer (plus ``extra_merges`` BPE merges) trained on ``texts``; nothing downloaded.

    Characters are the right unit for a ~1M-parameter model on toy tasks: every digit is its own token.
    """
    tokenizer = char_tokenizer_core(texts, extra_merges=extra_merges)
    pad, bos, eos, unk = SPECIAL_TOKENS
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers' tokenizer __init__ is untyped
        tokenizer_object=tokenizer, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk
    )
    fast.padding_side = "left"
    return fast


def tiny_llama_config(
    *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_positions: int, pad_token_id: int
) -> LlamaConfig:
    """The config of a tiny Llama (about 1M parameters at hidden 128, 4 layers)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=pad_token_id + 1,
        eos_token_id=pad_token_id + 2,
        tie_word_embeddings=True,
    )
    config.num_labels = 1  # the reward model's single score (a property: LlamaConfig's signature lacks it)
    return config


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when present (the local rank's device under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def compute_autocast(config: BaseRecipeConfig, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on ``device`` when the config computes in bfloat16, else nothing.

    Mixed precision as ``Trainer(bf16=True)`` runs it: matmuls in bf16, weights and AdamW state in float32.
    Storing the trained weights themselves in bf16 loses small updates: at lr 1e-5 an AdamW step moves a
    weight by about 1e-5, below half of bf16's spacing (at least 2^-9 of the value) for any weight of magnitude
    above about 5e-3, so it rounds back to the same value (measured: 100 steps left a weight unchanged).
    """
    enabled = config.dtype == "bfloat16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def load_tokenizer(path: str, *, texts: Iterable[str] = ()) -> PreTrainedTokenizerBase:
    """The tokenizer of ``path``, or a freshly trained character tokenizer for 'tiny'."""
    if path == TINY:
        return train_char_tokenizer(texts)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps every prompt's last token at the same position, which batched decoding needs.
    tokenizer.padding_side = "left"
    return tokenizer


Head = Literal["causal_lm", "sequence_classifier"]


def load_causal_lm(
    path: str,
    *,
    config: BaseRecipeConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    device: torch.device,
    lora_base: bool = False,
) -> PreTrainedModel:
    """A causal LM from ``path`` (a folder, a hub id, or a LoRA run's adapter folder, merged into its base), or
    a tiny Llama initialised deterministically from ``seed``.

    Weights are float32 (the master copy: with ``dtype: bfloat16`` the compute runs under autocast, see
    ``compute_autocast``), except for ``lora_base``, the frozen base of a LoRA run, which nothing updates:
    stored in bf16 when computing in bf16, in 4-bit NF4 for QLoRA.
    """
    return _load(path, "causal_lm", config=config, tokenizer=tokenizer, seed=seed, device=device, lora_base=lora_base)


def load_sequence_classifier(
    path: str,
    *,
    config: BaseRecipeConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    device: torch.device,
    lora_base: bool = False,
) -> PreTrainedModel:
    """A one-logit sequence classifier (a reward model) from ``path`` or a tiny Llama (as ``load_causal_lm``)."""
    model = _load(
        path, "sequence_classifier", config=config, tokenizer=tokenizer, seed=seed, device=device, lora_base=lora_base
    )
    if model.config.pad_token_id is None:
        # The classifier finds each sequence's last real token through pad_token_id.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _load(
    path: str,
    head: Head,
    *,
    config: BaseRecipeConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    device: torch.device,
    lora_base: bool,
) -> PreTrainedModel:
    # Imported here: peft is only needed by runs that meet an adapter.
    from training.engine.adapters import is_adapter_folder, load_merged

    # A frozen LoRA base may be stored in bf16 (nothing updates it), except under FSDP2, which shards and gathers
    # the parameters of a layer as one flat buffer of one dtype (the adapters in it are float32).
    bf16_base = lora_base and config.dtype == "bfloat16" and config.distributed != "fsdp"
    dtype = torch.bfloat16 if bf16_base else torch.float32
    auto: Any = AutoModelForSequenceClassification if head == "sequence_classifier" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"num_labels": 1} if head == "sequence_classifier" else {}
    model: PreTrainedModel
    if path == TINY:
        cls: Any = LlamaForSequenceClassification if head == "sequence_classifier" else LlamaForCausalLM
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(_tiny_config(config, tokenizer))
        return moved(moved(model, dtype), device)
    if is_adapter_folder(path):
        return moved(load_merged(path, head=head, dtype=dtype), device)
    if lora_base and config.finetuning == "qlora":
        # 4-bit weights are placed by the loader (a quantised model cannot be moved afterwards).
        loaded: PreTrainedModel = auto.from_pretrained(
            path, quantization_config=nf4_config(config), dtype=dtype, device_map={"": device}, **kwargs
        )
        return loaded
    model = auto.from_pretrained(path, dtype=dtype, **kwargs)
    return moved(model, device)


def nf4_config(config: BaseRecipeConfig) -> BitsAndBytesConfig:
    """QLoRA's quantisation (Dettmers et al. 2023): 4-bit NormalFloat weights, double-quantised constants, matmuls
    in the compute dtype."""
    compute = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]  # untyped in transformers
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def enable_gradient_checkpointing(model: PreTrainedModel, *, adapters: bool) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant, the variant PyTorch recommends:
    it needs no input that requires grad, handles keyword arguments and nested no-grad code). Before adapters
    are attached: the embeddings' output is then made to require grad as well, as peft and TRL do, since a
    frozen base gives the first checkpointed layer no input that does."""
    if not model.supports_gradient_checkpointing:
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it; turn it off.")
    kwargs = {"use_reentrant": False}
    # transformers 5.24 renamed it (the old name warns); the GPU image's transformers 5.20 may only have the old one.
    if callable(getattr(model, "activation_checkpointing_enable", None)):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[no-untyped-call]
    if adapters:
        model.enable_input_require_grads()  # type: ignore[no-untyped-call]


def moved(model: PreTrainedModel, target: torch.device | torch.dtype) -> PreTrainedModel:
    """``model.to(target)``, typed: transformers declares ``to`` with ``functools.wraps(nn.Module.to)``, which
    hides the bound ``self`` from type checkers (the override itself guards quantised models, so keep it)."""
    out = model.to(target)  # type: ignore[arg-type]  # the wraps() signature, see above
    assert isinstance(out, PreTrainedModel)
    return out


def frozen(model: PreTrainedModel) -> PreTrainedModel:
    """A model used only for scoring (a reference or a judge): eval mode and no gradients."""
    model.train(False)
    model.requires_grad_(False)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_tiny(path: str) -> bool:
    """Whether ``path`` names the built-in tiny model rather than a folder or hub id."""
    return path == TINY and not Path(path).exists()


def _tiny_config(config: BaseRecipeConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return tiny_llama_config(
        vocab_size=len(tokenizer),
        hidden_size=config.tiny_hidden_size,
        num_layers=config.tiny_num_layers,
        num_heads=config.tiny_num_heads,
        max_positions=max(config.max_length, 64) * 2,
        pad_token_id=int(tokenizer.pad_token_id or 0),
    )
