"""What the researcher dashboard shows: recent runs and studies, read through each app's selectors."""

from __future__ import annotations

from typing import Any

from django.db.models import Sum

from evaluation.selectors import study_list_for
from training.selectors import dashboard_runs


def dashboard_context(*, user: Any) -> dict[str, Any]:
    """The dashboard stays a thin page: each app's own selector decides what the user may see."""
    studies = list(
        study_list_for(user=user, archived=False).annotate(
            judged=Sum("items__judgment_count"), target=Sum("items__overlap")
        )[:8]
    )
    rows = [
        {"study": s, "judged": s.judged or 0, "target": s.target or 0, "percent": _percent(s.judged, s.target)}
        for s in studies
    ]
    return {"recent_runs": dashboard_runs(user=user), "recent_studies": rows}


def _percent(done: int | None, target: int | None) -> float:
    return round(100 * (done or 0) / target, 1) if target else 0.0
