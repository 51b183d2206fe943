"""What the researcher dashboard shows: recent runs and studies, read through each app's selectors."""

from __future__ import annotations

from typing import Any


def dashboard_context(*, user: Any) -> dict[str, Any]:
    """Each app contributes a section if its selectors offer one; the dashboard stays a thin page."""
    context: dict[str, Any] = {"recent_runs": [], "recent_studies": []}
    try:
        from training.selectors import dashboard_runs
    except ImportError:
        pass
    else:
        context["recent_runs"] = dashboard_runs(user=user)
    try:
        from evaluation.selectors import dashboard_studies
    except ImportError:
        pass
    else:
        context["recent_studies"] = dashboard_studies(user=user)
    return context
