"""Arbiter's Python SDK: log a training run's metrics, logs and checkpoints; read runs back; drive studies.

Stdlib only (psutil and pandas optional): importing it never pulls in Django, torch or the engine.

    run = arbiter_client.init(name="my-exp", config={"lr": 1e-4})   # ARBITER_URL, ARBITER_API_KEY
    run.log({"loss": 0.3}, step=10)
    run.finish()
    arbiter_client.Api().run(run.id).history(["loss"])               # rows (a DataFrame with pandas)
    arbiter_client.Api().create_study(name="A vs B", kind="pairwise")  # studies: see arbiter_client.api
"""

from __future__ import annotations

import os
from typing import Any

from ._http import ArbiterError, Connection, ServerError, TransientError, Unreachable
from .api import Api, Export, ImportRejected, RunRef, Study
from .run import Run

__all__ = [
    "Api",
    "ArbiterError",
    "Export",
    "ImportRejected",
    "Run",
    "RunRef",
    "ServerError",
    "Study",
    "TransientError",
    "Unreachable",
    "attach",
    "init",
]


def init(
    *,
    name: str = "",
    config: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    url: str | None = None,
    api_key: str | None = None,
    **options: Any,
) -> Run:
    """Create a run on the server with a user's API key and return its handle.

    Raises ArbiterError if the key is refused, TransientError if the server cannot be reached
    (creating the run is the one call that does not wait and retry: the script should know).
    """
    url = url or os.environ.get("ARBITER_URL", "")
    api_key = api_key or os.environ.get("ARBITER_API_KEY", "")
    if not url or not api_key:
        raise ValueError("arbiter_client.init needs url= and api_key= (or ARBITER_URL and ARBITER_API_KEY)")
    conn = Connection(url, api_key)
    try:
        answer = conn.request("POST", "/api/runs/", {"name": name, "config": config or {}, "tags": tags or []})
    finally:
        conn.close()
    return Run(
        url=url,
        run_id=int(answer["id"]),
        token=answer["token"],
        owns_status=True,
        page_url=answer.get("url"),
        api_key=api_key,
        **options,
    )


def attach(**options: Any) -> Run:
    """Attach to the run the platform started this process for (ARBITER_API_URL, ARBITER_RUN_ID, ARBITER_RUN_TOKEN)."""
    try:
        url = os.environ["ARBITER_API_URL"]
        run_id = int(os.environ["ARBITER_RUN_ID"])
        token = os.environ["ARBITER_RUN_TOKEN"]
    except KeyError as missing:
        raise RuntimeError(f"arbiter_client.attach: {missing} is not set (was this started by Arbiter?)") from None
    return Run(url=url, run_id=run_id, token=token, owns_status=False, **options)
