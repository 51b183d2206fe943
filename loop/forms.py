"""The "Sample into a study" form: which checkpoints or models, which prompts, how to sample, what study to make.

The form checks shapes and ranges (each field says what is wrong); loop.services.sampling enforces the rules
(access to every checkpoint and path, limits on the job's size) and raises ValidationError for the view.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.db.models import QuerySet

from arbiter.accounts.models import Role, User
from evaluation.models import Study, StudyKind
from loop.models import PromptSource
from loop.prompt_sets import MAX_PROMPTS
from loop.selectors import sampleable_checkpoints, visible_studies
from loop.services.sampling import MAX_POLICIES
from training.models import Checkpoint, Run
from training.selectors import visible_runs

STUDY_KINDS = [
    (StudyKind.PAIRWISE.value, "Pairwise preference (every pair of models on each prompt)"),
    (StudyKind.RATING.value, "Rating (each completion on its own)"),
    (StudyKind.RUBRIC.value, "Rubric grading (needs a rubric with every prompt)"),
    (StudyKind.VIOLATION.value, "Policy violations (agent trajectories: not made by sampling)"),
]


class CheckpointChoiceField(forms.ModelMultipleChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: Checkpoint) -> str:
        return f"#{obj.run_id} {obj.run.name} · step {obj.step}"


class SampleForm(forms.Form):
    name = forms.CharField(max_length=200, required=False, help_text="The study's name; empty names the models.")
    checkpoints = CheckpointChoiceField(
        queryset=Checkpoint.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )
    model_paths = forms.CharField(
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "organisation/model-name"}),
        help_text="Other models the worker can load (hub ids), one per line.",
    )
    prompt_source = forms.ChoiceField(choices=PromptSource.choices, widget=forms.RadioSelect, initial=PromptSource.RUN)
    prompts_file = forms.FileField(
        required=False, help_text='JSONL (or a JSON array): {"prompt": "..."} or {"prompt": [messages]} per row.'
    )
    prompt_study = forms.ModelChoiceField(queryset=Study.objects.none(), required=False)
    prompt_run = forms.ModelChoiceField(queryset=Run.objects.none(), required=False)
    max_prompts = forms.IntegerField(
        min_value=1, max_value=MAX_PROMPTS, initial=16, help_text="A seeded random subset when the set is larger."
    )
    temperature = forms.FloatField(min_value=0.0, max_value=10.0, initial=1.0, help_text="0 = greedy.")
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, initial=1.0)
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=64)
    n = forms.IntegerField(min_value=1, max_value=16, initial=1, label="Completions per prompt")
    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=0)
    backend = forms.ChoiceField(
        choices=[("auto", "auto (vLLM on a GPU, else Hugging Face)"), ("hf", "Hugging Face"), ("vllm", "vLLM")],
        initial="auto",
    )
    queue = forms.ChoiceField(choices=[])
    study_kind = forms.ChoiceField(choices=STUDY_KINDS, initial=StudyKind.PAIRWISE)
    annotators = forms.ModelMultipleChoiceField(
        queryset=User.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )
    overlap = forms.IntegerField(min_value=1, max_value=50, initial=1, help_text="Judgments per item.")
    instructions = forms.CharField(required=False, max_length=20_000, widget=forms.Textarea(attrs={"rows": 3}))
    skip_identical = forms.BooleanField(
        required=False, initial=True, label="Leave out pairs whose two completions are the same text"
    )

    def __init__(self, *args: Any, user: User, run: Run | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.run = run
        field_checkpoints: Any = self.fields["checkpoints"]
        field_checkpoints.queryset = sampleable_checkpoints(user=user, run=run)
        field_study: Any = self.fields["prompt_study"]
        field_study.queryset = visible_studies(user=user).order_by("-created_at")
        field_run: Any = self.fields["prompt_run"]
        field_run.queryset = visible_runs(user=user).order_by("-created_at")
        field_annotators: Any = self.fields["annotators"]
        field_annotators.queryset = User.objects.filter(role=Role.ANNOTATOR, is_active=True).order_by("username")
        queues: Any = self.fields["queue"]
        queues.choices = [(q, q) for q in getattr(settings, "ARBITER_RUN_QUEUES", ["gpu"])]
        if run is not None:
            self.fields["prompt_run"].initial = run.pk

    def model_path_list(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data.get("model_paths", "").splitlines() if line.strip()]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        chosen = len(data.get("checkpoints") or []) + len(self.model_path_list())
        if chosen < 2:
            self.add_error("checkpoints", "Choose at least two checkpoints or models to compare.")
        elif chosen > MAX_POLICIES:
            self.add_error("checkpoints", f"Choose at most {MAX_POLICIES} checkpoints or models.")
        source = data.get("prompt_source")
        if source == PromptSource.FILE and not data.get("prompts_file"):
            self.add_error("prompts_file", "Choose a file of prompts.")
        if source == PromptSource.STUDY and not data.get("prompt_study"):
            self.add_error("prompt_study", "Choose the study whose prompts to use.")
        if source == PromptSource.RUN and not data.get("prompt_run"):
            self.add_error("prompt_run", "Choose the run whose prompts to use.")
        if data.get("study_kind") == StudyKind.VIOLATION:
            self.add_error(
                "study_kind", "Violation studies judge agent trajectories; sampling single completions makes none."
            )
        return data

    def checkpoint_groups(self) -> list[tuple[Run, list[Any]]]:
        """The checkbox widgets grouped by run, for the template."""
        field_checkpoints: Any = self.fields["checkpoints"]
        queryset: QuerySet[Checkpoint] = field_checkpoints.queryset
        by_id = {str(c.pk): c for c in queryset}
        groups: dict[int, tuple[Run, list[Any]]] = {}
        for widget in self["checkpoints"]:
            checkpoint = by_id[str(widget.data["value"])]
            groups.setdefault(checkpoint.run_id, (checkpoint.run, []))[1].append((checkpoint, widget))
        return list(groups.values())


class SendRowsForm(forms.Form):
    """Where ticked rows of a samples table go: a new rating / pairwise study, or one of the user's own."""

    name = forms.CharField(max_length=64)
    step = forms.IntegerField(min_value=0, max_value=2**62)
    rows = forms.TypedMultipleChoiceField(coerce=int, choices=[])
    target = forms.ChoiceField(choices=[])
    new_name = forms.CharField(max_length=200, required=False, label="Name of the new study")
    annotators = forms.ModelMultipleChoiceField(
        queryset=User.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, *args: Any, user: User, row_count: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rows: Any = self.fields["rows"]
        rows.choices = [(i, str(i + 1)) for i in range(row_count)]
        owned = visible_studies(user=user).filter(kind__in=[StudyKind.RATING, StudyKind.PAIRWISE])
        if not user.is_admin_role:
            owned = owned.filter(owner=user)
        self.studies = {str(s.pk): s for s in owned.order_by("-created_at")[:100]}
        target: Any = self.fields["target"]
        target.choices = [
            ("new-rating", "a new rating study (one item per row)"),
            ("new-pairwise", "a new pairwise study (rows with the same prompt, in pairs)"),
            *((pk, f"{s.name} ({s.kind})") for pk, s in self.studies.items()),
        ]
        annotators: Any = self.fields["annotators"]
        annotators.queryset = User.objects.filter(role=Role.ANNOTATOR, is_active=True).order_by("username")
