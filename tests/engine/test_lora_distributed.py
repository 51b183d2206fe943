"""LoRA on two processes (gloo, CPU) trains what it trains on one: DDP and FSDP2, adapters and checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_distributed import run_case, run_two_processes
from training.engine.distributed import DistInfo

LORA_SFT: dict[str, Any] = {
    "batch_size": 4,
    "max_length": 24,
    "max_steps": 2,
    "save_steps": 2,
    "learning_rate": 3e-2,
    "finetuning": "lora",
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "gradient_accumulation_steps": 2,
}
CASES = {"lora_ddp": {**LORA_SFT, "distributed": "ddp"}, "lora_fsdp": {**LORA_SFT, "distributed": "fsdp"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lora-dist")
    one = run_case(root / "one", "sft", LORA_SFT, DistInfo())
    two = run_two_processes(root / "two", [(name, "sft", config, None) for name, config in CASES.items()])
    return {"root": root, "one": one, "two": two}


@pytest.mark.parametrize("case", list(CASES))
def test_lora_on_two_processes_equals_one(runs: dict[str, Any], case: str) -> None:
    one, two = runs["one"], runs["two"][case]
    trained = {name: g for name, g in one["grads"].items() if "lora_" in name}
    assert trained and any(float(g.abs().max()) > 0 for g in trained.values())
    for name, grad in trained.items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    assert [s for s, _ in two["checkpoints"]] == [s for s, _ in one["checkpoints"]] == [2]
    root: Path = runs["root"]
    for folder in ("checkpoint-2", "final"):
        got = load_file(str(root / "two" / case / folder / "adapter_model.safetensors"))
        want = load_file(str(root / "one" / folder / "adapter_model.safetensors"))
        assert got.keys() == want.keys() and want
        for key in want:
            # Two AdamW steps: its normalisation amplifies the round-off of a near-zero gradient element.
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")
