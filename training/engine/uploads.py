"""Checkpoints into an S3-compatible artifact store as they are written (the run's store location, from its spec).

The engine uploads, not the worker after the run: a checkpoint is in the bucket before the run goes on, so
a worker that dies mid-run (a preempted cloud GPU) loses no checkpoint the run reported. The reported path is
the checkpoint's s3:// URI; the web tier checks it lies inside the run's own location.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from artifacts import uris
from artifacts.store import open_store
from training.engine.reporting import Reporter


class UploadingReporter:
    """Wraps the run's reporter: `log_checkpoint` uploads the folder and reports its URI; `finish` uploads final/."""

    def __init__(self, inner: Reporter, *, output_dir: Path, output_uri: str) -> None:
        self.inner = inner
        self.output_dir = output_dir
        self.base = uris.parse(output_uri)
        self.store = open_store(str(self.base))

    def _upload(self, folder: Path) -> str:
        relative = folder.resolve().relative_to(self.output_dir.resolve())
        target = self.base.child(*relative.parts)
        if folder.is_dir():
            self.store.put_tree(folder, target)
        else:
            self.store.put_file(folder, target)
        return str(target)

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Pass the metrics on."""
        self.inner.log(metrics, step=step)

    def log_checkpoint(self, step: int, path: str) -> None:
        """Upload the checkpoint folder, then report its URI."""
        self.inner.log_checkpoint(step, self._upload(Path(path)))

    def log_table(self, name: str, step: int, columns: list[str], rows: list[list[object]]) -> None:
        """Pass the table on."""
        self.inner.log_table(name, step, columns, rows)

    def finish(self, exit_code: int = 0) -> object:
        """Upload the final model folder (when the run wrote one), then finish the inner reporter."""
        final = self.output_dir / "final"
        if exit_code == 0 and final.is_dir():
            try:
                self._upload(final)
            except Exception as exc:  # the run's report must still go out, saying what failed
                print(f"could not upload the final model to {self.base}: {exc}", flush=True)  # noqa: T201
                exit_code = 1
        return self.inner.finish(exit_code=exit_code)
