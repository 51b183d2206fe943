"""Forms: study design, item upload and entry, the annotator's judgment forms, exports.

Forms parse and validate shape; the services enforce the rules (overlap, leases,
all-or-nothing imports) and raise ValidationError, which views put back here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

import orjson
from django import forms
from django.core.exceptions import ValidationError

from arbiter.accounts.models import Role, User
from arbiter.labels import LabelsForm
from evaluation.judgments import VERDICTS
from evaluation.models import DEFAULT_SCALE, ExportFormat, RewardStyle, Study, StudyKind, TextFormat

MAX_UPLOAD_BYTES = 200 * 1024 * 1024

# ModelForm is generic only in django-stubs; the runtime class takes no subscript.
if TYPE_CHECKING:
    _StudyModelForm = forms.ModelForm[Study]
else:
    _StudyModelForm = forms.ModelForm


class StudyForm(_StudyModelForm):
    annotators = forms.ModelMultipleChoiceField(
        queryset=User.objects.filter(role=Role.ANNOTATOR).order_by("username"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    shared_with = forms.ModelMultipleChoiceField(
        queryset=User.objects.filter(role__in=[Role.RESEARCHER, Role.ADMIN]).order_by("username"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Researchers who may read this study's progress, quality and results.",
    )
    scale_text = forms.CharField(
        required=False,
        label="Rating scale",
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="Rating studies: one label per line, lowest first.",
        initial="\n".join(DEFAULT_SCALE),
    )

    class Meta:
        model = Study
        fields = ["name", "kind", "text_format", "instructions", "overlap", "lease_seconds", "accuracy_threshold"]
        widgets = {"instructions": forms.Textarea(attrs={"rows": 8}), "text_format": forms.RadioSelect}

    def __init__(self, *args: Any, owner: User | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if owner is not None:
            shared_with = cast("forms.ModelMultipleChoiceField[User]", self.fields["shared_with"])
            assert shared_with.queryset is not None  # declared above with one
            shared_with.queryset = shared_with.queryset.exclude(pk=owner.pk)
        # Forms and scripts that predate the text format get the default (plain text).
        self.fields["text_format"].required = False
        if self.instance.pk:
            self.fields["kind"].disabled = True  # items are shaped by the kind: it cannot change later
            self.fields["scale_text"].initial = "\n".join(self.instance.scale)

    def clean_text_format(self) -> str:
        value: str = self.cleaned_data.get("text_format") or ""
        return value or (self.instance.text_format if self.instance.pk else TextFormat.PLAIN)

    def clean_overlap(self) -> int:
        overlap: int = self.cleaned_data["overlap"]
        if not 1 <= overlap <= 50:
            raise ValidationError("Overlap must be between 1 and 50.")
        return overlap

    def clean_lease_seconds(self) -> int:
        lease: int = self.cleaned_data["lease_seconds"]
        if lease < 10:
            raise ValidationError("A lease must last at least 10 seconds.")
        return lease

    def clean_accuracy_threshold(self) -> float:
        value: float = self.cleaned_data["accuracy_threshold"]
        if not 0 <= value <= 1:
            raise ValidationError("A threshold is a fraction between 0 and 1.")
        return value

    def clean_scale_text(self) -> list[str]:
        labels = [line.strip() for line in self.cleaned_data["scale_text"].splitlines() if line.strip()]
        if labels and not 2 <= len(labels) <= 11:
            raise ValidationError("A scale has 2 to 11 points.")
        return labels


class UploadForm(forms.Form):
    file = forms.FileField(help_text="JSON Lines, a JSON array, CSV or Parquet (gzip-compressed or not).")
    import_valid_rows = forms.BooleanField(
        required=False, label="If some rows are invalid, import the valid rows anyway"
    )
    flag_unsplittable = forms.BooleanField(
        required=False,
        label="Import conversations that cannot be split cleanly (an empty reply, transcripts that differ before "
        "the last turn, identical sides) with a visible flag instead of refusing them",
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > MAX_UPLOAD_BYTES:
            raise ValidationError(f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB.")
        return upload


class ItemForm(forms.Form):
    """One item by hand. Fields are the JSONL row's; the same parser validates both."""

    prompt = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    response_a = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}), label="Response A")
    response_b = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}), label="Response B")
    model_a = forms.CharField(required=False, label="Model A (never shown to annotators)")
    model_b = forms.CharField(required=False, label="Model B (never shown to annotators)")
    response = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}))
    model = forms.CharField(required=False, label="Model (never shown to annotators)")
    goal = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    plan_1 = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}), label="Plan 1")
    plan_2 = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}), label="Plan 2 (optional)")
    rubric = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 5}), help_text="One item per line.")
    task_json = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 10}),
        label="Task and trajectory (JSON)",
        help_text="ST-WebAgentBench task: intent, policies, plus trajectory [{action, observation}].",
    )
    gold = forms.BooleanField(required=False, label="Gold item")
    expected = forms.CharField(required=False, help_text="Gold answer, as in the JSONL format (JSON).")

    def row(self, kind: str) -> dict[str, Any]:
        """The JSONL row this form describes (before validation by the importer)."""
        d = self.cleaned_data
        row: dict[str, Any]
        if kind == StudyKind.PAIRWISE:
            row = {k: d[k] for k in ("prompt", "response_a", "response_b") if d[k]}
            row.update({k: d[k] for k in ("model_a", "model_b") if d[k]})
        elif kind == StudyKind.RATING:
            row = {k: d[k] for k in ("prompt", "response", "model") if d[k]}
        elif kind == StudyKind.RUBRIC:
            plans = [p for p in (d["plan_1"], d["plan_2"]) if p]
            row = {
                "goal": d["goal"],
                "plans": plans,
                "rubric": [r.strip() for r in d["rubric"].splitlines() if r.strip()],
            }
        else:
            try:
                row = orjson.loads(d["task_json"] or "{}")  # refuses lone surrogates, as uploads do
            except json.JSONDecodeError as exc:
                raise ValidationError({"task_json": f"Not valid JSON: {exc}"}) from None
        if d["gold"]:
            row["gold"] = True
            if d["expected"]:
                try:
                    row["expected"] = orjson.loads(d["expected"])
                except json.JSONDecodeError:
                    row["expected"] = d["expected"]
        return row


class _StorableJSON(json.JSONDecoder):
    """JSON as uploads read it (orjson): a lone surrogate (`"\\ud800"`) is invalid JSON, not a value that
    PostgreSQL refuses to store and the page cannot render back (a 500)."""

    def decode(self, s: str, _w: Any = None) -> Any:
        return orjson.loads(s)


class ItemEditForm(forms.Form):
    """An item as its upload row (JSON): edited, then parsed by the same importer as a file."""

    row = forms.JSONField(
        decoder=_StorableJSON,
        widget=forms.Textarea(attrs={"rows": 18, "spellcheck": "false"}),
        help_text="The item as one upload row (JSON). The same checks as an upload apply.",
    )

    def clean_row(self) -> dict[str, Any]:
        row = self.cleaned_data["row"]
        if not isinstance(row, dict):
            raise ValidationError("An item is one JSON object.")
        return row

    @staticmethod
    def row_of(item: Any) -> dict[str, Any]:
        """The stored item as an upload row: its payload (bookkeeping keys dropped), id and gold answer."""
        row = {k: v for k, v in item.payload.items() if k not in ("source", "source_text", "flags")}
        if item.external_id:
            row["id"] = item.external_id
        if item.is_gold:
            row.update(gold=True, expected=item.expected)
        return row


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=ExportFormat.choices, widget=forms.RadioSelect, initial=ExportFormat.REWARD)
    style = forms.ChoiceField(
        choices=RewardStyle.choices,
        initial=RewardStyle.AUTO,
        required=False,
        label="Reward data: prompts and responses as",
        widget=forms.RadioSelect,
    )
    keep_ties = forms.BooleanField(
        required=False, label="Pairwise reward data: keep ties (response A as chosen) instead of dropping them"
    )

    def clean_style(self) -> str:
        return self.cleaned_data.get("style") or RewardStyle.AUTO


# --------------------------------------------------------------------------- judgment forms

STRENGTHS = [("", "—"), ("1", "Slightly"), ("2", "Clearly"), ("3", "Much")]


class JudgmentForm(forms.Form):
    """Built per item: the rubric and violation forms have one field per rubric item / step × policy."""

    assignment = forms.IntegerField(widget=forms.HiddenInput)
    time_ms = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)

    def __init__(self, *args: Any, study: Study, item_payload: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = study.kind
        self.item_payload = item_payload
        f = self.fields
        if self.kind == StudyKind.PAIRWISE:
            f["choice"] = forms.ChoiceField(choices=[("left", "A"), ("right", "B"), ("tie", "Tie")])
            f["strength"] = forms.ChoiceField(choices=STRENGTHS, required=False)
            f["rationale"] = forms.CharField(required=False, max_length=5000)
        elif self.kind == StudyKind.RATING:
            choices = [(str(i), label) for i, label in enumerate(study.scale, start=1)]
            f["rating"] = forms.TypedChoiceField(choices=choices, coerce=int)
            f["rationale"] = forms.CharField(required=False, max_length=5000)
        elif self.kind == StudyKind.RUBRIC:
            for p in range(len(item_payload["plans"])):
                for i in range(len(item_payload["rubric"])):
                    f[f"v_{p}_{i}"] = forms.ChoiceField(choices=[(v, v) for v in VERDICTS])
            for i in range(len(item_payload["rubric"])):
                f[f"flag_{i}"] = forms.BooleanField(required=False)
            if len(item_payload["plans"]) == 2:
                f["preference"] = forms.ChoiceField(choices=[("left", "1"), ("right", "2"), ("tie", "Tie")])
            f["comment"] = forms.CharField(required=False, max_length=5000)
        elif self.kind == StudyKind.VIOLATION:
            for s in range(len(item_payload["trajectory"])):
                for p in range(len(item_payload["policies"])):
                    f[f"v_{s}_{p}"] = forms.BooleanField(required=False)
            for p in range(len(item_payload["policies"])):
                f[f"dormant_{p}"] = forms.BooleanField(required=False)
            f["completion"] = forms.ChoiceField(choices=[("full", "Fully"), ("partial", "Partly"), ("none", "No")])
            f["fraction"] = forms.FloatField(required=False, min_value=0, max_value=1)

    def judgment_data(self) -> dict[str, Any]:
        """The cleaned data in the shape evaluation.judgments.canonical_judgment expects (shown order)."""
        d = self.cleaned_data
        payload = self.item_payload
        if self.kind in (StudyKind.PAIRWISE, StudyKind.RATING):
            return {k: v for k, v in d.items() if k not in ("assignment", "time_ms")}
        if self.kind == StudyKind.RUBRIC:
            n_plans, n_items = len(payload["plans"]), len(payload["rubric"])
            return {
                "verdicts": [[d[f"v_{p}_{i}"] for i in range(n_items)] for p in range(n_plans)],
                "preference": d.get("preference"),
                "flagged_rubric": [i for i in range(n_items) if d[f"flag_{i}"]],
                "comment": d.get("comment", ""),
            }
        n_steps, n_policies = len(payload["trajectory"]), len(payload["policies"])
        return {
            "completion": d["completion"],
            "fraction": d.get("fraction"),
            "violations": [(s, p) for s in range(n_steps) for p in range(n_policies) if d[f"v_{s}_{p}"]],
            "dormant": [p for p in range(n_policies) if d[f"dormant_{p}"]],
        }


class SkipForm(forms.Form):
    assignment = forms.IntegerField(widget=forms.HiddenInput)
    flag = forms.BooleanField(required=False)
    reason = forms.CharField(required=False, max_length=500)


class StudyLabelsForm(LabelsForm):
    """Rename and re-tag a study from its page: shape in arbiter.labels, rules applied by study_records."""

    def __init__(self, data: Any = None, *, study: Study) -> None:
        super().__init__(data, name=study.name, tags=(t.name for t in study.tags.all()), prefix="labels")
