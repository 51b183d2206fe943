"""`python -m arbiter_worker`: a GPU worker from the environment (ARBITER_BROKER_URL, ARBITER_API_URL,
ARBITER_WORKER_TOKEN, ARBITER_WORKER_SLOTS, ARBITER_WORKER_QUEUES; ARTIFACT_ROOT for scratch; AWS_* and
ARTIFACT_S3_ENDPOINT_URL when the store is a bucket)."""

from __future__ import annotations

import logging
import sys

from arbiter_worker.app import hello, make_app
from arbiter_worker.config import WorkerConfig


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = WorkerConfig.from_env()
    cfg.root.mkdir(parents=True, exist_ok=True)
    who = hello(cfg)  # fails loudly now on a wrong URL or token, not at the first run
    logging.getLogger("arbiter_worker").info(
        "worker %s: slots %s, queues %s, scratch %s", who.get("name"), cfg.slots, cfg.queues, cfg.root
    )
    app = make_app(cfg)
    # Threads: each task only supervises a subprocess; one thread per slot is the most runs this host can hold.
    argv = ["worker", "--pool=threads", f"--concurrency={len(cfg.slots)}", "-Q", ",".join(cfg.queues),
            "-n", f"{cfg.name}@%h", "--without-gossip", "--without-mingle", "--loglevel=INFO"]  # fmt: skip
    app.worker_main(argv)
    sys.exit(0)


if __name__ == "__main__":
    main()
