"""Engine tests: pure torch, no database; one CPU thread so they share the machine politely."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from training.engine.distributed import DistInfo
from training.engine.recipes.base import RunContext
from training.engine.spec import RunSpec

torch.set_num_threads(1)


class CollectingReporter:
    """Keeps every call, so a test can read the metrics a run reported."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.checkpoints: list[tuple[int, str]] = []
        self.tables: list[tuple[str, int, list[str], list[list[object]]]] = []
        self.exit_code: int | None = None

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_checkpoint(self, step: int, path: str) -> None:
        self.checkpoints.append((step, path))

    def log_table(self, name: str, step: int, columns: list[str], rows: list[list[object]]) -> None:
        self.tables.append((name, step, columns, rows))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code

    def series(self, key: str) -> list[float]:
        return [m[key] for _, m in self.metrics if key in m]


TINY = {"tiny_hidden_size": 32, "tiny_num_layers": 1, "tiny_num_heads": 2, "num_threads": 1}


def make_context(
    tmp_path: Path, recipe: str, config: dict[str, Any], *, resume_from: str | None = None, out: str = "out"
) -> tuple[RunContext, CollectingReporter]:
    """A RunContext for an in-process run of ``recipe`` with a tiny model."""
    spec = RunSpec(
        run_id=1,
        recipe=recipe,
        config={**TINY, **config},
        output_dir=str(tmp_path / out),
        resume_from=resume_from,
        seed=0,
    )
    reporter = CollectingReporter()
    return RunContext.create(spec=spec, reporter=reporter, dist=DistInfo()), reporter


@pytest.fixture
def context_factory(tmp_path: Path) -> Any:
    """Build (RunContext, CollectingReporter) pairs in this test's temporary folder."""

    def build(recipe: str, config: dict[str, Any], **kwargs: Any) -> tuple[RunContext, CollectingReporter]:
        return make_context(tmp_path, recipe, config, **kwargs)

    return build
