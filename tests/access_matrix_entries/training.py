"""Access entries for the training app's URLs (pages at /runs/, API at /api/)."""

from __future__ import annotations

from tests.access_matrix_entries import RESEARCHERS, Access

ENTRIES = {
    "training:run_list": Access(roles=RESEARCHERS),
}
BUILDERS: dict[str, object] = {}
