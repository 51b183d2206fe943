"""Two processes (gloo, CPU) train exactly what one process trains: loss, gradients, metrics and checkpoint.

The 2-process runs are real: ``torch.multiprocessing`` starts two interpreters that join one gloo process
group, wrap the model in DDP or shard it with FSDP2, and run the engine's own loop. The single-process run is
the plain engine in this test's process. Tolerances are float32 round-off (the shares are padded to
different widths, so sums are taken in a different order), far below any real difference.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from tests.engine.conftest import TINY, CollectingReporter
from training.engine.distributed import TORCHRUN_COMMAND, DistInfo, all_mean, unwrap
from training.engine.recipes import build_recipe
from training.engine.recipes.base import RunContext, run_training, seed_step
from training.engine.spec import RunSpec

SFT: dict[str, Any] = {"batch_size": 6, "max_length": 24, "max_steps": 2, "save_steps": 1, "learning_rate": 3e-3}
DPO: dict[str, Any] = {"batch_size": 4, "max_length": 24, "max_steps": 2, "save_steps": 2, "learning_rate": 3e-3}
GRPO: dict[str, Any] = {
    "batch_size": 4,
    "num_generations": 4,
    "max_new_tokens": 6,
    "max_steps": 1,
    "save_steps": 1,
    "learning_rate": 1e-2,
    "reward_funcs": ["regex"],
    "reward_regex": "(?s).*[0-4].*",  # splits this tiny model's groups: some advantages are non-zero
    "scale_rewards": "batch",  # needs every rank's rewards
}

ROOT = Path(__file__).resolve().parents[2]

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sft": ("sft", SFT),
    "dpo": ("dpo", DPO),
    "grpo": ("grpo", GRPO),
    # evaluation too: ranks evaluate strided shares of unequal size (FSDP2: from gathered weights)
    "sft_fsdp": ("sft", {**SFT, "distributed": "fsdp", "eval_steps": 2, "eval_fraction": 0.01}),
    "dpo_fsdp": ("dpo", {**DPO, "distributed": "fsdp", "eval_steps": 2, "eval_fraction": 0.01}),
    # sampling from gathered shards; gradients reduce-scattered on the last micro-batch only
    "grpo_fsdp_accum": ("grpo", {**GRPO, "distributed": "fsdp", "gradient_accumulation_steps": 2}),
}


def run_case(
    out: Path, recipe_name: str, config: dict[str, Any], info: DistInfo, *, resume_from: str | None = None
) -> dict[str, Any]:
    """Step 1's metrics and full gradients (before any update), then a whole run: what it reported and wrote."""
    spec = RunSpec(
        run_id=1,
        recipe=recipe_name,
        config={**TINY, "sample_table_steps": 0, **config},
        output_dir=str(out),
        resume_from=resume_from,
        seed=0,
    )
    reporter = CollectingReporter()
    ctx = RunContext.create(spec=spec, reporter=reporter, dist=info)
    recipe = build_recipe(ctx)
    first: dict[str, float] = {}
    grads: dict[str, torch.Tensor] = {}
    if resume_from is None:
        seed_step(0, 1)
        first = recipe.train_step(1)
        if not recipe.metrics_are_global:  # as the loop does
            first = all_mean(first, info)
        for name, param in unwrap(recipe.model).named_parameters():
            grad = param.grad
            if isinstance(grad, DTensor):
                grad = grad.full_tensor()
            grads[name] = grad.detach().clone() if grad is not None else torch.zeros(0)
            param.grad = None
    run_training(recipe)
    return {"first": first, "grads": grads, "metrics": reporter.metrics, "checkpoints": reporter.checkpoints}


Job = tuple[str, str, dict[str, Any], str | None]  # (case name, recipe, config, resume_from)


def _worker(rank: int, world: int, port: int, root: str, jobs: list[Job]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        info = DistInfo(rank=rank, world_size=world, joined=True)
        results = {
            name: run_case(Path(root) / name, recipe, config, info, resume_from=resume)
            for name, recipe, config, resume in jobs
        }
        if rank == 0:
            torch.save(results, Path(root) / "results.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_two_processes(root: Path, jobs: list[Job]) -> dict[str, Any]:
    mp.spawn(_worker, args=(2, _free_port(), str(root), jobs), nprocs=2, join=True)
    results: dict[str, Any] = torch.load(root / "results.pt", weights_only=False)
    return results


def assert_metrics_close(got: Mapping[str, float], want: Mapping[str, float], *, what: str) -> None:
    skip = {"step_time", "eval/runtime"}
    assert set(got) == set(want), what
    for key in sorted(set(want) - skip):
        a, b = got[key], want[key]
        if math.isnan(b):
            assert math.isnan(a), f"{what} {key}: {a} vs nan"
        else:
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6), f"{what} {key}: {a} vs {b}"


def assert_weights_close(got: Path, want: Path) -> None:
    a, b = load_file(str(got / "model.safetensors")), load_file(str(want / "model.safetensors"))
    assert a.keys() == b.keys()
    # atol 2e-5, two thousandths of the largest learning rate here: AdamW divides each gradient by its own size,
    # so where a gradient is near its eps (1e-8) the update carries that gradient's float round-off at the scale
    # of the learning rate. The single process scores GRPO with the packed forward (packed_forward.py, which on
    # CPU attends as matmuls; DDP keeps the padded one and the fused attention kernel), which sums in another
    # order: its gradients agree to round-off (asserted above); one weight of 3,072 moved 1.2e-5 apart.
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case on one process, then on two (one spawn for all, to spare the shared CPU)."""
    root = tmp_path_factory.mktemp("dist")
    single = {name: run_case(root / "one" / name, r, c, DistInfo()) for name, (r, c) in CASES.items()}
    jobs: list[Job] = [(n, r, c, None) for n, (r, c) in CASES.items()]
    # Resume on two processes from a one-process checkpoint (SFT's step 1), under DDP and FSDP2.
    step1 = str(root / "one" / "sft" / "checkpoint-1")
    jobs += [("sft_resumed", "sft", SFT, step1), ("sft_fsdp_resumed", "sft", {**SFT, "distributed": "fsdp"}, step1)]
    two = run_two_processes(root / "two", jobs)
    return {"root": root, "one": single, "two": two}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_loss_gradients_metrics_and_checkpoint(runs: dict[str, Any], case: str) -> None:
    one, two = runs["one"][case], runs["two"][case]
    assert_metrics_close(two["first"], one["first"], what=f"{case} step 1")
    moved = [name for name, g in one["grads"].items() if g.abs().max() > 0]
    assert moved, "the single-process step has no gradient: the comparison would prove nothing"
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    assert [s for s, _ in two["metrics"]] == [s for s, _ in one["metrics"]]
    if "eval_steps" in CASES[case][1]:
        assert any("eval/loss" in m for _, m in one["metrics"])
    for (step, got), (_, want) in zip(two["metrics"], one["metrics"], strict=True):
        assert_metrics_close(got, want, what=f"{case} logged at {step}")
    assert [s for s, _ in two["checkpoints"]] == [s for s, _ in one["checkpoints"]]  # written once, by rank 0
    root = runs["root"]
    for step, _ in one["checkpoints"]:
        assert_weights_close(root / "two" / case / f"checkpoint-{step}", root / "one" / case / f"checkpoint-{step}")
    assert_weights_close(root / "two" / case / "final", root / "one" / case / "final")


def test_grpo_batch_really_splits_groups(runs: dict[str, Any]) -> None:
    """The GRPO comparison means something only if some advantage is non-zero (else every gradient is 0)."""
    first = runs["one"]["grpo"]["first"]
    assert 0.0 < first["reward"] < 1.0
    assert first["frac_reward_zero_std"] < 1.0


@pytest.mark.parametrize("case", ["sft_resumed", "sft_fsdp_resumed"])
def test_two_processes_resume_a_one_process_checkpoint(runs: dict[str, Any], case: str) -> None:
    root = runs["root"]
    resumed, straight = runs["two"][case], runs["one"]["sft"]
    assert [s for s, _ in resumed["metrics"]] == [2]
    assert_metrics_close(resumed["metrics"][0][1], straight["metrics"][1][1], what=f"{case} step 2")
    assert_weights_close(root / "two" / case / "final", root / "one" / "sft" / "final")
    saved = torch.load(root / "two" / case / "checkpoint-2" / "trainer_state.pt", weights_only=False)
    want = torch.load(root / "one" / "sft" / "checkpoint-2" / "trainer_state.pt", weights_only=False)
    for index, entry in want["optimizer"]["state"].items():
        for key, value in entry.items():  # full tensors, the single-process layout: loadable anywhere
            torch.testing.assert_close(saved["optimizer"]["state"][index][key], value, rtol=1e-5, atol=1e-8)


def test_torchrun_command_line_runs_the_engine_on_two_processes(tmp_path: Path) -> None:
    """The contract the GPU worker uses (distributed.TORCHRUN_COMMAND): rank 0 alone reports and writes."""
    spec = RunSpec(
        recipe="demo",
        config={**TINY, "step_delay_s": 0, "max_steps": 3, "save_steps": 2, "batch_size": 4},
        output_dir=str(tmp_path / "out"),
        run_id=5,
    )
    spec.dump(tmp_path / "spec.json")
    # torchrun is torch.distributed.run's console script; the module form needs no PATH entry.
    command = [sys.executable, "-m", "torch.distributed.run", *TORCHRUN_COMMAND[1:], "2"]
    command += ["-m", "training.engine", str(tmp_path / "spec.json")]
    env = {**os.environ, "ARBITER_RUN_TOKEN": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "metrics"] == [1, 2, 3]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 3]
    assert [e for e in events if e["event"] == "finish"] == [{"event": "finish", "exit_code": 0}]
    assert proc.stdout.count("final model written to") == 1
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path: Path) -> None:
    spec = RunSpec(run_id=1, recipe="sft", config={**TINY, "batch_size": 5}, output_dir=str(tmp_path / "out"))
    two = DistInfo(rank=0, world_size=2, joined=True)
    with pytest.raises(ValueError, match="batch_size 5 does not split into 2 process"):
        RunContext.create(spec=spec, reporter=CollectingReporter(), dist=two)
