"""The worker's configuration, from the environment (or the command line): broker, API, token, slots, queues."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WorkerConfig:
    broker_url: str
    api_url: str
    token: str
    slots: list[str]  # GPU ids: each run gets CUDA_VISIBLE_DEVICES from the slots it holds
    queues: list[str] = field(default_factory=lambda: ["gpu"])
    root: Path = Path("arbiter-worker")  # scratch: localized inputs, checkpoints before upload, slot locks
    name: str = field(default_factory=socket.gethostname)
    python: str = ""  # interpreter of the engine (defaults to this one)

    @classmethod
    def from_env(cls) -> WorkerConfig:
        def need(name: str) -> str:
            value = os.environ.get(name, "").strip()
            if not value:
                raise SystemExit(f"arbiter_worker: {name} is required")
            return value

        slots = [s.strip() for s in os.environ.get("ARBITER_WORKER_SLOTS", "").split(",") if s.strip()]
        queues = [q.strip() for q in os.environ.get("ARBITER_WORKER_QUEUES", "gpu").split(",") if q.strip()]
        return cls(
            broker_url=need("ARBITER_BROKER_URL"),
            api_url=need("ARBITER_API_URL").rstrip("/"),
            token=need("ARBITER_WORKER_TOKEN"),
            slots=slots or ["cpu0"],  # a CPU-only host still runs one run at a time
            queues=queues,
            root=Path(os.environ.get("ARTIFACT_ROOT", "arbiter-worker")).absolute(),
            name=os.environ.get("ARBITER_WORKER_NAME", socket.gethostname()),
            python=os.environ.get("ARBITER_ENGINE_PYTHON", ""),
        )
