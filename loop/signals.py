"""Signal receivers of the loop app: a new run is linked to the export its config names."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from training.models import Run


@receiver(post_save, sender=Run, dispatch_uid="loop.link_run_inputs")
def _link_new_run(sender: type[Run], instance: Run, created: bool, raw: bool = False, **kwargs: Any) -> None:
    # In the creating transaction: the run and its lineage commit (or roll back) together. A signal and not
    # a call in launch_run, because runs are created in several places (form, API, retry, resume, admin),
    # and the training app does not know the loop exists.
    if created and not raw:
        from loop.services.lineage import link_run_inputs

        link_run_inputs(run=instance)
