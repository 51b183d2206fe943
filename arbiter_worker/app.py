"""The worker's Celery app: the broker only, JSON only, one task — the platform's `training.supervise_run`.

The web tier enqueues `training.supervise_run(run_id)` on a queue; whichever process consumes that queue owns
the run: the in-process Django supervisor (embedded mode) or this Django-free worker on a GPU host. Acked
early for the same reason as the in-process task (a run outlives redelivery; the heartbeat sweep covers a
dead worker). A worker with too few free slots hands the task back to the queue, unclaimed, for another.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from arbiter_worker.config import WorkerConfig
from arbiter_worker.slots import SlotPool
from arbiter_worker.supervisor import HandBack, supervise

logger = logging.getLogger(__name__)
HAND_BACK_DELAY_S = 5


def make_app(cfg: WorkerConfig) -> Celery:
    app = Celery("arbiter_worker", broker=cfg.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,  # a run is long: never hold a second one this worker may not start
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    pool = SlotPool(cfg.slots, cfg.root / "slots")

    @app.task(bind=True, name="training.supervise_run", acks_late=False, ignore_result=True, max_retries=None)
    def supervise_run(self: Task, run_id: int) -> None:
        try:
            status = supervise(cfg=cfg, pool=pool, run_id=int(run_id))
        except HandBack as why:
            logger.info("run %s handed back: %s", run_id, why)
            queue = (self.request.delivery_info or {}).get("routing_key") or cfg.queues[0]
            raise self.retry(countdown=HAND_BACK_DELAY_S, queue=queue) from None
        logger.info("run %s ended: %s", run_id, status or "not claimed here")

    @app.task(bind=True, name="loop.run_sample_job", acks_late=True, ignore_result=True, max_retries=None)
    def run_sample_job(self: Task, job_id: int) -> None:
        # The platform's "Sample into a study" task on the same queue as runs: sampled here, on a free slot.
        from arbiter_worker.samples import supervise_sample

        try:
            status = supervise_sample(cfg=cfg, pool=pool, job_id=int(job_id))
        except HandBack as why:
            queue = (self.request.delivery_info or {}).get("routing_key") or cfg.queues[0]
            raise self.retry(countdown=HAND_BACK_DELAY_S, queue=queue) from why
        logger.info("sampling job %s ended: %s", job_id, status or "not claimed here")

    app.supervise_run = supervise_run
    app.slot_pool = pool
    return app


def hello(cfg: WorkerConfig) -> dict[str, Any]:
    from arbiter_worker.client import Api

    return Api(cfg.api_url, cfg.token).post("/api/worker/hello/", {"queues": cfg.queues, "slots": cfg.slots})
