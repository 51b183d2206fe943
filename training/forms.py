"""The launch form, generated from a recipe's pydantic config (its JSON schema), plus the API-key form.

The form only parses shapes (numbers are numbers, choices are choices); the recipe's pydantic model,
called by services.launch_run, is the one validator of ranges and rules, and each of its errors is
put back on its own field.
"""

from __future__ import annotations

from typing import Any

from django import forms

from training.services.runs import recipe_config_cls, run_queues


def _field_for(name: str, prop: dict[str, Any], required: bool) -> forms.Field:
    kind = prop.get("type")
    help_text = prop.get("description", "")
    label = prop.get("title") or name.replace("_", " ").capitalize()
    common: dict[str, Any] = {"label": label, "help_text": help_text, "required": False, "initial": prop.get("default")}
    if "enum" in prop:
        return forms.ChoiceField(choices=[(v, v) for v in prop["enum"]], **common)
    if "anyOf" in prop:  # Optional[...] / unions: take the first concrete type
        concrete = [p for p in prop["anyOf"] if p.get("type") != "null"]
        if concrete:
            return _field_for(name, {**concrete[0], **{k: v for k, v in prop.items() if k != "anyOf"}}, required)
    if kind == "boolean":
        return forms.BooleanField(**common)
    if kind == "integer":
        # No min/max here: out-of-range values reach pydantic, whose message names the bound.
        return forms.IntegerField(**common)
    if kind == "number":
        return forms.FloatField(widget=forms.NumberInput(attrs={"step": "any"}), **common)
    if kind == "array":
        return forms.CharField(
            **{
                **common,
                "help_text": f"{help_text} (comma-separated)",
                "initial": ", ".join(map(str, prop.get("default") or [])),
            }
        )
    return forms.CharField(**common)


class LaunchForm(forms.Form):
    """Name, queue, tags, then one field per config field of the chosen recipe (prefixed `cfg_`)."""

    name = forms.CharField(max_length=200, required=False, help_text="Optional; a name is generated if empty.")
    queue = forms.ChoiceField(choices=[])
    tags = forms.CharField(max_length=300, required=False, help_text="Comma-separated.")
    shared = forms.BooleanField(required=False, help_text="Let every researcher see this run.")

    def __init__(self, *args: Any, recipe: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recipe = recipe
        self.fields["queue"].choices = [(q, q) for q in run_queues()]
        schema = recipe_config_cls(recipe).model_json_schema()
        required = set(schema.get("required", []))
        self.config_fields: list[str] = []
        for name, prop in schema.get("properties", {}).items():
            self.fields[f"cfg_{name}"] = _field_for(name, prop, name in required)
            self.config_fields.append(name)
        self._schema = schema

    def config(self) -> dict[str, Any]:
        """The config dict to validate: only fields the user filled (pydantic supplies the defaults)."""
        out: dict[str, Any] = {}
        props = self._schema.get("properties", {})
        for name in self.config_fields:
            value = self.cleaned_data.get(f"cfg_{name}")
            if value is None or value == "":
                continue
            if props[name].get("type") == "array":
                value = [v.strip() for v in str(value).split(",") if v.strip()]
            out[name] = value
        return out

    def tag_list(self) -> list[str]:
        return [t.strip() for t in self.cleaned_data.get("tags", "").split(",") if t.strip()]

    def add_config_errors(self, errors: dict[str, list[str]]) -> None:
        for field, messages in errors.items():
            target = f"cfg_{field.split('.')[0]}"
            for message in messages:
                self.add_error(target if target in self.fields else None, message)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. 'cluster scripts'.")
