"""LoRA and QLoRA adapters through peft: attach, resume, the reference as the base with adapters off, and
loading a saved adapter folder as a plain model (for sampling, scoring, or the start of the next run).

A LoRA run's checkpoints are PEFT folders (adapter_config.json + adapter_model.safetensors, the tokenizer and
the trainer state); ``base_model_name_or_path`` in adapter_config.json names the frozen base. When the base
exists nowhere else (the built-in 'tiny' model, or a start from another adapter folder), the run writes it
once to ``<output_dir>/base`` and the adapter names that folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel

from training.engine.config import BaseRecipeConfig

if TYPE_CHECKING:  # peft is imported where it is used: reading a folder's kind must not pay for it
    from peft import LoraConfig, PeftModel

ADAPTER_CONFIG = "adapter_config.json"
Head = Literal["causal_lm", "sequence_classifier"]


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a PEFT adapter folder (a LoRA run's checkpoint or final model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> str:
    """The base model an adapter folder was trained on (its ``base_model_name_or_path``).

    A base the run wrote itself (``<output_dir>/base``) is named by its absolute path on the training host; when
    the run's folders were moved or copied (another host, a downloaded run), the ``base`` folder beside the
    checkpoint is the same one, and is used instead.
    """
    data = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = data.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{folder}/{ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    beside = Path(folder).resolve().parent / "base"
    if Path(base).is_absolute() and not Path(base).exists() and (beside / "config.json").is_file():
        return str(beside)
    return base


def lora_config(config: BaseRecipeConfig, *, head: Head) -> LoraConfig:
    """peft's LoraConfig from the recipe config. A reward model's score head is trained in full: peft's
    sequence-classification task adds it (``score`` / ``classifier``) to ``modules_to_save`` and keeps it out of
    the adapted layers; it starts random, so a low-rank update of it would be meaningless."""
    from peft import LoraConfig, TaskType

    targets = config.lora_target_modules.strip()
    target_modules: str | list[str] = (
        "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    )
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules,
        task_type=TaskType.SEQ_CLS if head == "sequence_classifier" else TaskType.CAUSAL_LM,
    )


def attach_lora(
    base: PreTrainedModel,
    *,
    config: BaseRecipeConfig,
    head: Head,
    base_path: str,
    resume_from: str | None = None,
    seed: int = 0,
) -> PeftModel:
    """The frozen ``base`` with LoRA adapters, fresh or (``resume_from``) the ones a checkpoint saved.

    Trainable parameters (adapters, a reward model's score head) are float32 whatever the base's dtype:
    they are the master weights AdamW updates (bf16 compute comes from autocast). A 4-bit base (QLoRA) is
    first prepared as peft does for k-bit training (norms in float32, inputs that carry gradients).
    """
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if getattr(base, "is_loaded_in_4bit", False):
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)  # type: ignore[no-untyped-call]
    model: PeftModel
    try:
        if resume_from:
            model = PeftModel.from_pretrained(base, resume_from, is_trainable=True)
        else:
            # lora_A's random init from the run's seed, not from wherever the global stream happens to be.
            devices = [base.device] if base.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                model = get_peft_model(base, lora_config(config, head=head))
    except ValueError as exc:  # peft's "Target modules {...} not found in the base model"
        raise ValueError(f"lora_target_modules: {exc}") from exc
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    model.peft_config["default"].base_model_name_or_path = base_path
    return model


def load_merged(folder: str | Path, *, head: Head, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A plain model with the adapter of ``folder`` merged into its base: what sampling, a reward function or
    the next run load (vLLM and ``from_pretrained`` never see the adapter)."""
    from peft import PeftModel

    auto: Any = AutoModelForSequenceClassification if head == "sequence_classifier" else AutoModelForCausalLM
    kwargs = {"num_labels": 1} if head == "sequence_classifier" else {}
    base = auto.from_pretrained(adapter_base(folder), dtype=dtype, **kwargs)
    merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    assert isinstance(merged, PreTrainedModel)
    return merged


class AdapterDisabled(torch.nn.Module):
    """The reference model of a LoRA run: the policy's own base, adapters switched off for the call, in eval
    mode and without autograd (no second copy of the weights; TRL does the same with ``disable_adapter``)."""

    def __init__(self, model: PeftModel) -> None:
        super().__init__()
        # Not a registered submodule: this view owns no parameters (freezing it must not freeze the policy).
        object.__setattr__(self, "peft_model", model)
        self.config = model.config  # read by callers (attention implementation, vocabulary)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        model: PeftModel = object.__getattribute__(self, "peft_model")
        was_training = model.training
        model.train(False)
        try:
            with torch.no_grad(), model.disable_adapter():
                return model(*args, **kwargs)
        finally:
            model.train(was_training)
