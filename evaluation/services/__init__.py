"""Writes of the evaluation app (the selectors module holds the reads). One module per concern:

- studies: create and edit studies
- imports: item uploads (streamed, staged, published at once; inline or in the background), trajectories
  and automatic verdicts attached to ST-WebAgentBench tasks
- items: items added by hand, edited or deleted by the researcher, their display HTML
- queue: leases, judgments and skips (the annotator loop)
- locking: the write transaction (SQLite's write lock taken at BEGIN)

Callers use `from evaluation import services` and `services.<name>`: the names below are the public ones.
"""

from evaluation.services.imports import (
    ImportRejected,
    ImportReport,
    import_in_background,
    import_items,
    run_import,
    start_import,
    submit_import,
)
from evaluation.services.items import ItemLocked, add_items, delete_item, edit_item, refresh_rendered
from evaluation.services.locking import write_transaction
from evaluation.services.queue import (
    UNREAD,
    AssignmentClosed,
    LeaseExpired,
    next_assignment,
    release_expired_leases,
    skip_assignment,
    submit_judgment,
)
from evaluation.services.studies import change_annotators, create_study, update_study

__all__ = [
    "UNREAD",
    "AssignmentClosed",
    "ImportRejected",
    "ImportReport",
    "ItemLocked",
    "LeaseExpired",
    "add_items",
    "change_annotators",
    "create_study",
    "delete_item",
    "edit_item",
    "import_in_background",
    "import_items",
    "next_assignment",
    "refresh_rendered",
    "release_expired_leases",
    "run_import",
    "skip_assignment",
    "start_import",
    "submit_import",
    "submit_judgment",
    "update_study",
    "write_transaction",
]
