"""What the researcher dashboard shows: recent runs and studies, read through each app's selectors."""

from __future__ import annotations

from typing import Any

from django.db.models import Sum

from evaluation.selectors import study_list_for
from training.selectors import dashboard_runs


def dashboard_context(*, user: Any) -> dict[str, Any]:
    """The dashboard stays a thin page: each app's own selector decides what the user may see."""
    studies = list(
        study_list_for(user=user).annotate(judged=Sum("items__judgment_count"), target=Sum("items__overlap"))[:8]
    )
    for study in studies:
        study.percent = round(100 * (study.judged or 0) / study.target, 1) if study.target else 0.0
    return {"recent_runs": dashboard_runs(user=user), "recent_studies": studies}
