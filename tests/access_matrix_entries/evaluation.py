"""Access entries for the evaluation app's URLs (studies, annotator queue, API)."""

from __future__ import annotations

from tests.access_matrix_entries import ANNOTATORS, RESEARCHERS, Access

ENTRIES = {
    "evaluation:study_list": Access(roles=RESEARCHERS),
    "annotate:queue": Access(roles=ANNOTATORS),
}
BUILDERS: dict[str, object] = {}
