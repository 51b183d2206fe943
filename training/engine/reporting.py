"""Where metrics go: the platform through arbiter_client when the supervisor started us, else stdout."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Protocol


class Reporter(Protocol):
    """The calls the engine makes; ``arbiter_client``'s run object satisfies it."""

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values at a step."""

    def log_checkpoint(self, step: int, path: str) -> None:
        """Announce a checkpoint folder written at a step."""

    def log_table(self, name: str, step: int, columns: list[str], rows: list[list[object]]) -> None:
        """Record a small table (prompts, completions, rewards) at a step."""

    def finish(self, exit_code: int = 0) -> object:
        """Flush and stop (what it returns is ignored: arbiter_client's run says whether the flush finished)."""


class StdoutReporter:
    """Prints one JSON line per call: a run started by hand still leaves a machine-readable trace."""

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Print the metrics as one JSON line."""
        print(json.dumps({"event": "metrics", "step": step, "metrics": dict(metrics)}), flush=True)  # noqa: T201

    def log_checkpoint(self, step: int, path: str) -> None:
        """Print the checkpoint as one JSON line."""
        print(json.dumps({"event": "checkpoint", "step": step, "path": path}), flush=True)  # noqa: T201

    def log_table(self, name: str, step: int, columns: list[str], rows: list[list[object]]) -> None:
        """Print the table as one JSON line."""
        event = {"event": "table", "name": name, "step": step, "columns": columns, "rows": rows}
        print(json.dumps(event), flush=True)  # noqa: T201

    def finish(self, exit_code: int = 0) -> None:
        """Print the end of the run as one JSON line."""
        print(json.dumps({"event": "finish", "exit_code": exit_code}), flush=True)  # noqa: T201


class NullReporter:
    """Reports nothing: ranks other than 0 under torchrun."""

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Drop the metrics."""

    def log_checkpoint(self, step: int, path: str) -> None:
        """Drop the checkpoint event."""

    def log_table(self, name: str, step: int, columns: list[str], rows: list[list[object]]) -> None:
        """Drop the table."""

    def finish(self, exit_code: int = 0) -> None:
        """Nothing to flush."""


def open_reporter(*, rank: int = 0) -> Reporter:
    """The platform's client when ARBITER_RUN_TOKEN is set (imported lazily: the engine never needs it), else stdout."""
    if rank != 0:
        return NullReporter()
    if os.environ.get("ARBITER_RUN_TOKEN"):
        try:
            import arbiter_client
        except ImportError:
            print("ARBITER_RUN_TOKEN is set but arbiter_client is not importable; reporting to stdout", file=sys.stderr)  # noqa: T201
            return StdoutReporter()
        run: Reporter = arbiter_client.attach()
        return run
    return StdoutReporter()
