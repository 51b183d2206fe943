"""Own one run on this worker: claim it, hold its GPU slots, start the engine, report, beat, cancel, finish.

The same duties as training.services.supervisor, through HTTP instead of the database. The engine starts in
its own session (cancel signals the whole group: torchrun and its ranks), in the run's own scratch folder,
with PR_SET_PDEATHSIG so it dies with this worker instead of training on, unsupervised, after a crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from arbiter_worker.client import Api, Refused
from arbiter_worker.config import WorkerConfig
from arbiter_worker.engine_watch import watch_engine
from arbiter_worker.slots import SlotPool
from artifacts import uris
from artifacts.localize import localize, localize_config
from artifacts.store import S3Store, open_store

logger = logging.getLogger(__name__)
CODE_ROOT = Path(__file__).resolve().parent.parent  # where training/engine lives (the engine's PYTHONPATH)
MAX_LINES_PER_POST = 1000


class HandBack(Exception):
    """This worker cannot take the run now (too few free slots): put the task back on the queue."""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the worker process dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def engine_command(*, python: str, gpus: int, spec: Path) -> list[str]:
    """`python -m training.engine SPEC`, or torchrun with one process per GPU when the run asks for several."""
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", "training.engine", str(spec)]  # fmt: skip
    return [python, "-m", "training.engine", str(spec)]


class Logs:
    """Captured lines, numbered per stream (the ingest API's idempotency key), posted in batches."""

    def __init__(self, api: Api, run_id: int, token: str) -> None:
        self.api, self.run_id, self.token = api, run_id, token
        self.next_seq = {"stdout": 0, "stderr": 0}
        self.pending: list[tuple[str, str]] = []

    def add(self, stream: str, text: str) -> None:
        self.pending.append((stream, text))

    def flush(self) -> None:
        while self.pending:
            batch, lines = self.pending[:MAX_LINES_PER_POST], []
            seqs = dict(self.next_seq)
            for stream, text in batch:
                lines.append({"seq": seqs[stream], "stream": stream, "text": text, "time": time.time()})
                seqs[stream] += 1
            try:
                self.api.post(f"/api/runs/{self.run_id}/logs/", {"lines": lines}, token=self.token)
            except (ConnectionError, Refused):
                logger.warning("run %s: could not deliver %d log lines", self.run_id, len(lines))
                return  # kept: the next flush tries again
            self.next_seq = seqs
            del self.pending[: len(batch)]


def _output(cfg: WorkerConfig, spec: dict[str, Any]) -> tuple[Path, str]:
    """The engine's output folder and the s3:// location it uploads to ("" when it writes into the store itself)."""
    location = uris.parse(spec["output_uri"])
    if location.scheme == "s3":
        return cfg.root / "runs" / str(spec["run_id"]), str(location)
    # A file:// store is a filesystem this host shares with the web host (NFS); write there directly.
    return location.local_path, ""


def supervise(*, cfg: WorkerConfig, pool: SlotPool, run_id: int, poll_s: float = 0.5, grace_s: float = 10) -> str:
    """Run one queued run to its end on this worker; returns its final status ("" when nothing was claimed)."""
    api = Api(cfg.api_url, cfg.token)
    with pool.mutex:
        free = pool.free()
        try:
            spec = api.post(f"/api/worker/runs/{run_id}/claim/", {"free_slots": free})
        except Refused as refused:
            if refused.body.get("field") == "free_slots":
                raise HandBack(refused.body.get("error", "")) from None
            return ""  # not queued any more: a duplicate delivery or a cancel
        held = pool.acquire(int(spec["gpus"]))
    if held is None:  # cannot happen under the mutex unless another process took them between the probes
        api.post(f"/api/worker/runs/{run_id}/finish/", {"exit_code": None, "note": "GPU slots taken meanwhile"})
        return "failed"
    try:
        return _run(cfg=cfg, api=api, spec=spec, slots=held, poll_s=poll_s, grace_s=grace_s)
    finally:
        pool.release(held)


def _run(*, cfg: WorkerConfig, api: Api, spec: dict[str, Any], slots: list[str], poll_s: float, grace_s: float) -> str:
    run_id, token = int(spec["run_id"]), str(spec["token"])
    logs = Logs(api, run_id, token)
    beat_s = float(spec.get("heartbeat_s", 5))
    try:
        out, output_uri = _output(cfg, spec)
        out.mkdir(parents=True, exist_ok=True)
        store = _store(spec["store_url"])
        cache = cfg.root / "cache"
        engine_spec = {
            "run_id": run_id,
            "recipe": spec["recipe"],
            "config": localize_config(spec["config"], store=store, cache=cache),
            "output_dir": str(out),
            "output_uri": output_uri,
            "resume_from": localize(spec["resume_from"], store=store, cache=cache) if spec.get("resume_from") else None,
            "seed": int(spec.get("seed", 0)),
        }
        spec_path = out / "spec.json"
        spec_path.write_text(json.dumps(engine_spec, indent=2), encoding="utf-8")
        env = _engine_env(cfg, spec, slots)
        proc = subprocess.Popen(
            engine_command(python=cfg.python or sys.executable, gpus=len(slots), spec=spec_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(out),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    except Exception as exc:
        logs.add("stderr", f"[arbiter-worker {cfg.name}] could not start the engine: {exc}")
        logs.flush()
        answer = api.post(
            f"/api/worker/runs/{run_id}/finish/", {"exit_code": None, "note": f"could not start: {exc}"[:300]}
        )
        return str(answer.get("status", "failed"))

    def beat() -> bool:
        try:
            return bool(api.post(f"/api/worker/runs/{run_id}/heartbeat/", {"pid": proc.pid}).get("cancel"))
        except (ConnectionError, Refused):
            return False  # the web tier blinked: keep training; the sweep decides if it lasts

    watched = watch_engine(
        proc, add_line=logs.add, flush=logs.flush, heartbeat=beat, poll_s=poll_s, heartbeat_s=beat_s, grace_s=grace_s
    )
    exit_code = watched.exit_code
    if output_uri:
        shutil.rmtree(out, ignore_errors=True)  # the engine uploaded every checkpoint: scratch is not a store
    answer = api.post(
        f"/api/worker/runs/{run_id}/finish/",
        {"exit_code": exit_code, "cancelled": watched.cancelled, "note": f"exit code {exit_code}"},
    )
    return str(answer.get("status", ""))


def _store(store_url: str) -> S3Store | None:
    return open_store(store_url) if store_url.startswith("s3://") else None  # type: ignore[return-value]


def _engine_env(cfg: WorkerConfig, spec: dict[str, Any], slots: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"ARBITER_WORKER_TOKEN", "ARBITER_BROKER_URL"}}
    gpu_ids = [s for s in slots if not s.startswith("cpu")]
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids),
            "ARBITER_API_URL": cfg.api_url,  # the address this host reaches the web tier by
            "ARBITER_RUN_ID": str(spec["run_id"]),
            "ARBITER_RUN_TOKEN": str(spec["token"]),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        }
    )
    return env
