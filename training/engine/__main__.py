"""``python -m training.engine SPEC.json``: run one recipe to the end; exit 0 on success, 143 on SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

from training.engine.reporting import Reporter

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 143  # 128 + SIGTERM, what a shell reports for a process the signal ended


class RunCancelled(BaseException):
    """Raised in the main thread when SIGTERM arrives."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raise at once rather than set a flag: a long step (a big generation) would otherwise delay the exit.
    raise RunCancelled


def main(argv: list[str] | None = None) -> int:
    """Parse the spec, join torchrun's group if any, train, and map the outcome to an exit code."""
    parser = argparse.ArgumentParser(prog="python -m training.engine", description=__doc__)
    parser.add_argument("spec", help="path of the run spec JSON written by the supervisor")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    # Heavy imports after the handler is installed, so a cancel during start-up is prompt too.
    from transformers.utils import logging as hf_logging

    from training.engine.data import DatasetError
    from training.engine.distributed import init_distributed, shutdown_distributed
    from training.engine.truncation import UnusableDataError

    data_errors = (DatasetError, UnusableDataError)
    from training.engine.reporting import open_reporter
    from training.engine.spec import RunSpec

    try:
        spec = RunSpec.load(args.spec)
    except (OSError, ValueError) as error:
        print(f"invalid run spec {args.spec}: {error}", file=sys.stderr)
        return EXIT_FAILED
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers; bars are log noise
    dist = init_distributed()
    reporter: Reporter = open_reporter(rank=dist.rank)
    if spec.output_uri and dist.rank == 0:
        from training.engine.uploads import UploadingReporter

        reporter = UploadingReporter(reporter, output_dir=Path(spec.output_dir), output_uri=spec.output_uri)
    code = EXIT_FAILED
    try:
        from training.engine.recipes import build_recipe
        from training.engine.recipes.base import RunContext, run_training

        ctx = RunContext.create(spec=spec, reporter=reporter, dist=dist)
        run_training(build_recipe(ctx))
        code = EXIT_OK
    except data_errors as error:
        # Bad or unusable data is the researcher's to fix: the message says what and how, a traceback adds noise.
        print(f"data error: {error}", file=sys.stderr, flush=True)
        code = EXIT_FAILED
    except (RunCancelled, KeyboardInterrupt):
        print("cancelled", file=sys.stderr, flush=True)
        code = EXIT_CANCELLED
    except Exception:
        traceback.print_exc()
        code = EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the flush ends us outright
        reporter.finish(exit_code=code)
        shutdown_distributed(dist)
    return code


if __name__ == "__main__":
    sys.exit(main())
