"""The launch form generated from a recipe's pydantic config, its sections and labels, and the API-key form.

The form only parses shapes (numbers are numbers, choices are choices); the recipe's pydantic model,
called by services.launch_run, is the one validator of ranges and rules, and each of its errors is
put back on its own field.

Sections and labels come from two mappings keyed by config field name (FIELD_SECTIONS, FIELD_LABELS),
shared by the launch form, the run page's config table and the compare page's config diff, so a
field sits under the same heading everywhere. A field the mappings do not know (an engine added it)
still appears: under "Other settings", with a label derived from its name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from django import forms

from arbiter.labels import LabelsForm
from training.models import Run
from training.services.runs import recipe_config_cls, run_queues

# --- Sections -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionInfo:
    title: str
    collapsed: bool = False  # rarely changed: folded in the launch form unless one of its fields has an error


SECTIONS: dict[str, SectionInfo] = {
    "run": SectionInfo("Run"),
    "model": SectionInfo("Model & data"),
    "optim": SectionInfo("Optimisation"),
    "generation": SectionInfo("Generation"),
    "loss": SectionInfo("Loss"),
    "variant": SectionInfo("Variant (GTPO / GRPO-Guard)", collapsed=True),
    "rewards": SectionInfo("Rewards"),
    "warm_start": SectionInfo("Warm start (SFT before RL)"),
    "eval": SectionInfo("Evaluation (held-out data)", collapsed=True),
    "adapters": SectionInfo("LoRA / QLoRA adapters", collapsed=True),
    "demo": SectionInfo("Demo"),
    "other": SectionInfo("Other settings"),
    "checkpoints": SectionInfo("Checkpoints & logging", collapsed=True),
    "hardware": SectionInfo("Hardware", collapsed=True),
}
FALLBACK_SECTION = "other"

# Field name -> section key. Order within a section follows this mapping (the order a researcher
# reads a config in), not the order the config classes declare their fields.
FIELD_SECTIONS: dict[str, str] = {
    "name": "run",
    "queue": "run",
    "gpus": "run",
    "tags": "run",
    "shared": "run",
    "model_name_or_path": "model",
    "dataset_path": "model",
    "max_length": "model",
    "max_prompt_length": "model",
    "max_completion_length": "model",
    "tiny_hidden_size": "model",
    "tiny_num_layers": "model",
    "tiny_num_heads": "model",
    "finetuning": "model",
    "max_steps": "optim",
    "batch_size": "optim",
    "gradient_accumulation_steps": "optim",
    "learning_rate": "optim",
    "lr_scheduler": "optim",
    "warmup_steps": "optim",
    "weight_decay": "optim",
    "max_grad_norm": "optim",
    "num_generations": "generation",
    "max_new_tokens": "generation",
    "temperature": "generation",
    "top_p": "generation",
    "loss_type": "loss",
    "scale_rewards": "loss",
    "epsilon_low": "loss",
    "epsilon_high": "loss",
    "num_iterations": "loss",
    "beta": "loss",
    "ref_model_name_or_path": "loss",
    "label_smoothing": "loss",
    "completion_only_loss": "loss",
    "center_rewards_coefficient": "loss",
    "variant": "variant",
    "gtpo_conflict_boost": "variant",
    "gtpo_entropy_threshold": "variant",
    "gtpo_entropy_penalty": "variant",
    "reward_funcs": "rewards",
    "reward_weights": "rewards",
    "reward_regex": "rewards",
    "reward_model_path": "rewards",
    "rubric_judge_path": "rewards",
    "process_reward_model_path": "rewards",
    "sft_warmup_steps": "warm_start",
    "sft_learning_rate": "warm_start",
    "label_noise": "warm_start",
    "eval_steps": "eval",
    "eval_dataset_path": "eval",
    "eval_fraction": "eval",
    "eval_max_examples": "eval",
    "lora_r": "adapters",
    "lora_alpha": "adapters",
    "lora_dropout": "adapters",
    "lora_target_modules": "adapters",
    "step_delay_s": "demo",
    "save_steps": "checkpoints",
    "logging_steps": "checkpoints",
    "sample_table_steps": "checkpoints",
    "sample_table_rows": "checkpoints",
    "sample_table_max_new_tokens": "checkpoints",
    "device": "hardware",
    "dtype": "hardware",
    "num_threads": "hardware",
    "gradient_checkpointing": "hardware",
    "rollout_backend": "hardware",
    "vllm_gpu_memory_utilization": "hardware",
}
_FIELD_ORDER = {name: i for i, name in enumerate(FIELD_SECTIONS)}

FIELD_LABELS: dict[str, str] = {
    "gpus": "GPUs",
    "model_name_or_path": "Model (hub id or path)",
    "dataset_path": "Dataset path",
    "max_length": "Max length (tokens)",
    "max_prompt_length": "Max prompt length (tokens)",
    "max_completion_length": "Max completion length (tokens)",
    "tiny_hidden_size": "Tiny model: hidden size",
    "tiny_num_layers": "Tiny model: layers",
    "tiny_num_heads": "Tiny model: attention heads",
    "lr_scheduler": "LR scheduler",
    "warmup_steps": "Warm-up steps",
    "max_grad_norm": "Max grad norm (clip)",
    "num_generations": "Generations per prompt (G)",
    "top_p": "Top-p",
    "epsilon_low": "Clip ε low",
    "epsilon_high": "Clip ε high",
    "num_iterations": "Iterations per batch (μ)",
    "beta": "KL coefficient (β)",
    "ref_model_name_or_path": "Reference model",
    "label_smoothing": "Label smoothing",
    "variant": "Variant",
    "reward_funcs": "Reward functions",
    "reward_model_path": "Reward model path",
    "rubric_judge_path": "Rubric judge model",
    "process_reward_model_path": "Process reward model (CuP)",
    "sft_warmup_steps": "SFT warm-up steps",
    "sft_learning_rate": "SFT learning rate",
    "step_delay_s": "Delay per step (s)",
    "num_threads": "CPU threads",
    "finetuning": "Fine-tuning",
    "lora_r": "LoRA rank (r)",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "lora_target_modules": "LoRA target modules",
    "dtype": "Compute dtype",
    "vllm_gpu_memory_utilization": "vLLM GPU memory fraction",
    "center_rewards_coefficient": "Reward centring coefficient",
    "eval_steps": "Evaluate every (steps)",
    "eval_dataset_path": "Eval dataset path",
    "eval_fraction": "Held-out fraction",
    "eval_max_examples": "Max eval examples",
    "sample_table_steps": "Samples table every (steps)",
    "sample_table_rows": "Samples table rows",
    "sample_table_max_new_tokens": "Samples table: max new tokens",
}

# Words written their own way in a label derived from a field name.
_WORDS = {
    "lr": "LR",
    "kl": "KL",
    "grpo": "GRPO",
    "gtpo": "GTPO",
    "dpo": "DPO",
    "sft": "SFT",
    "ppo": "PPO",
    "vllm": "vLLM",
    "gpu": "GPU",
    "cpu": "CPU",
    "id": "ID",
    "url": "URL",
    "ema": "EMA",
}


def field_label(name: str) -> str:
    """The label of a config field: FIELD_LABELS, else its name in words with acronyms kept ("GTPO conflict boost")."""
    if name in FIELD_LABELS:
        return FIELD_LABELS[name]
    words = [_WORDS.get(w, w) for w in name.split("_") if w]
    if not words:
        return name
    first = words[0]
    words[0] = first if first in _WORDS.values() else first[:1].upper() + first[1:]
    return " ".join(words)


def section_of(name: str) -> str:
    return FIELD_SECTIONS.get(name, FALLBACK_SECTION)


def _ordered(names: list[str]) -> list[str]:
    """Mapped names in mapping order, then unknown ones in the order given (stable)."""
    return sorted(names, key=lambda n: (_FIELD_ORDER.get(n, len(_FIELD_ORDER)), names.index(n)))


def recipe_defaults(recipe: str) -> dict[str, Any] | None:
    """The recipe's config with every default filled in (JSON values), or None for an unknown recipe (external runs)."""
    try:
        return recipe_config_cls(recipe).model_validate({}).model_dump(mode="json")
    except Exception:  # unknown recipe (ValidationError) or a config without defaults: nothing to compare to
        return None


# --- The launch form ----------------------------------------------------------------------------


def _field_for(name: str, prop: dict[str, Any], default: Any) -> forms.Field:
    kind = prop.get("type")
    help_text = prop.get("description", "")
    common: dict[str, Any] = {"label": field_label(name), "help_text": help_text, "required": False, "initial": default}
    if "enum" in prop:
        return forms.ChoiceField(choices=[(v, v) for v in prop["enum"]], **common)
    if "anyOf" in prop:  # Optional[...] / unions: take the first concrete type
        concrete = [p for p in prop["anyOf"] if p.get("type") != "null"]
        if concrete:
            return _field_for(name, {**concrete[0], **{k: v for k, v in prop.items() if k != "anyOf"}}, default)
    if kind == "boolean":
        return forms.BooleanField(**common)
    if kind == "integer":
        # No min/max here: out-of-range values reach pydantic, whose message names the bound.
        return forms.IntegerField(**common)
    if kind == "number":
        return forms.FloatField(widget=forms.NumberInput(attrs={"step": "any"}), **common)
    if kind == "array":
        items = prop.get("items", {})
        if "enum" in items:  # a list of choices (reward functions): tick boxes, not a text box to spell them in
            return forms.MultipleChoiceField(
                choices=[(v, v) for v in items["enum"]], widget=forms.CheckboxSelectMultiple, **common
            )
        return forms.CharField(
            **{**common, "help_text": f"{help_text} (comma-separated)", "initial": ", ".join(map(str, default or []))}
        )
    return forms.CharField(**common)


@dataclass
class FormSection:
    """One titled group of the launch form, as the template draws it."""

    key: str
    title: str
    fields: list[forms.BoundField]
    collapsed: bool

    @property
    def has_errors(self) -> bool:
        return any(f.errors for f in self.fields)

    @property
    def is_open(self) -> bool:
        return not self.collapsed or self.has_errors


LAUNCH_FIELDS = frozenset({"queue", "gpus"})  # launch_run errors keyed by these are the form's own fields, not config


class LaunchForm(forms.Form):
    """Name, queue, tags, then one field per config field of the chosen recipe (prefixed `cfg_`)."""

    name = forms.CharField(max_length=200, required=False, help_text="Optional; a name is generated if empty.")
    queue = forms.ChoiceField(choices=[])
    # No min/max here: the range and "a worker on the queue has that many slots" are launch_run's rules, whose
    # message this field shows (the API names the same field with the same words).
    gpus = forms.IntegerField(
        label="GPUs",
        initial=1,
        required=False,  # empty means 1, as in the API
        help_text="GPUs the run uses (one process each, under torchrun when more than 1); "
        "it starts on a worker with that many free slots.",
    )
    tags = forms.CharField(max_length=300, required=False, help_text="Comma-separated.")
    shared = forms.BooleanField(required=False, help_text="Let every researcher see this run.")

    def __init__(self, *args: Any, recipe: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recipe = recipe
        cast(forms.ChoiceField, self.fields["queue"]).choices = [(q, q) for q in run_queues()]
        cls = recipe_config_cls(recipe)
        schema = cls.model_json_schema()
        # Defaults from an instance, not the schema: default_factory fields have no schema default.
        defaults = cls.model_validate({}).model_dump(mode="json")
        self.config_fields: list[str] = []
        for name, prop in schema.get("properties", {}).items():
            self.fields[f"cfg_{name}"] = _field_for(name, prop, defaults.get(name))
            self.config_fields.append(name)
        self._schema = schema

    def sections(self) -> list[FormSection]:
        """Every field exactly once, under its section, sections in SECTIONS order; empty sections left out."""
        by_section: dict[str, dict[str, str]] = {key: {} for key in SECTIONS}  # section -> {config name: html name}
        for html_name in self.fields:
            name = html_name.removeprefix("cfg_")
            by_section[section_of(name)][name] = html_name
        out = []
        for key, names in by_section.items():
            if names:
                bound = [self[names[n]] for n in _ordered(list(names))]
                out.append(FormSection(key, SECTIONS[key].title, bound, SECTIONS[key].collapsed))
        return out

    def config(self) -> dict[str, Any]:
        """The config dict to validate: only fields the user filled (pydantic supplies the defaults)."""
        out: dict[str, Any] = {}
        props = self._schema.get("properties", {})
        for name in self.config_fields:
            value = self.cleaned_data.get(f"cfg_{name}")
            if value is None or value == "" or value == []:
                continue
            if props[name].get("type") == "array" and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            out[name] = value
        return out

    def gpu_count(self) -> int:
        gpus = self.cleaned_data.get("gpus")
        return 1 if gpus is None else int(gpus)

    def tag_list(self) -> list[str]:
        return [t.strip() for t in self.cleaned_data.get("tags", "").split(",") if t.strip()]

    def add_config_errors(self, errors: dict[str, list[str]]) -> None:
        for field_name, messages in errors.items():
            target = field_name if field_name in LAUNCH_FIELDS else f"cfg_{field_name.split('.')[0]}"
            for message in messages:
                self.add_error(target if target in self.fields else None, message)


# --- Config tables (run page, compare page) -----------------------------------------------------


def display_value(value: Any) -> str:
    """A config value as a researcher would write it: strings bare, the rest as JSON (true, 1e-06, ["a"])."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


@dataclass
class ConfigRow:
    key: str
    label: str
    values: list[str]
    differs: bool  # from the recipe default (run page) or between the runs (compare page)
    default: str | None = None


@dataclass
class ConfigSection:
    key: str
    title: str
    rows: list[ConfigRow] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(r.differs for r in self.rows)


def _sectioned(rows: list[ConfigRow]) -> list[ConfigSection]:
    groups: dict[str, ConfigSection] = {}
    for row in sorted(
        rows, key=lambda r: (list(SECTIONS).index(section_of(r.key)), _FIELD_ORDER.get(r.key, 1 << 30), r.key)
    ):
        key = section_of(row.key)
        groups.setdefault(key, ConfigSection(key, SECTIONS[key].title)).rows.append(row)
    return list(groups.values())


def config_sections(*, recipe: str, config: dict[str, Any]) -> list[ConfigSection]:
    """A run's config grouped like the launch form; each row knows whether it differs from the recipe default.

    Keys stay as written in the config (a run reads `learning_rate`, the value the engine got).
    """
    defaults = recipe_defaults(recipe) or {}  # an unknown recipe has no defaults: nothing differs
    rows = []
    for key, value in (config or {}).items():
        has_default = key in defaults
        differs = has_default and not _same(value, defaults[key])
        default = display_value(defaults[key]) if has_default else None
        rows.append(ConfigRow(key, field_label(key), [display_value(value)], differs, default))
    return _sectioned(rows)


def diff_sections(*, configs: list[dict[str, Any]], only_differences: bool) -> list[ConfigSection]:
    """The compare page's config table: one value per run; rows whose values differ are marked (or the only rows)."""
    keys = {k for c in configs for k in c}
    rows = []
    for key in keys:
        values = [c.get(key) for c in configs]
        differs = any(not _same(v, values[0]) for v in values[1:])
        if only_differences and not differs:
            continue
        rows.append(ConfigRow(key, field_label(key), ["—" if v is None else display_value(v) for v in values], differs))
    return _sectioned(rows)


def _same(a: Any, b: Any) -> bool:
    # 1 and 1.0 are the same learning rate; True and 1 are not the same setting.
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return bool(a == b)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. 'cluster scripts'.")


class RunEditForm(LabelsForm):
    """Rename and re-tag a run: shape in arbiter.labels, rules (control characters, limits) in services.run_records."""

    def __init__(self, data: Any = None, *, run: Run) -> None:
        super().__init__(data, name=run.name, tags=(t.name for t in run.tags.all()), prefix="edit")
