"""LoRA against full fine-tuning: peak memory and step time of our SFT and DPO steps on the tiny model.

Run: .venv/bin/python bench/bench_lora.py [--steps 6] [--threads 1] [--quick]
Each configuration trains in a fresh subprocess, so its memory is its own: the recipe is built (model, data,
tokenizer; every weight touched, so none is still an unread file page), the peak resident set (Linux VmHWM) is
reset, then ``run_training`` runs the steps. "built" is what building the run added to the resident set
(models — for full-FT DPO the policy and its reference copy, for LoRA one base —, data, tokenizer). "peak over
start" is how far the resident set rose above the built run during training (gradients, AdamW state,
activations; for full-FT DPO the reference copy is built before, LoRA has none); on a GPU it is
torch.cuda.max_memory_allocated. "grads+AdamW" is computed from the trained parameters (float32: 4 bytes of
gradient and 8 of AdamW state each). Step time is the median, over the steps after two warm-up steps, of the
process's CPU time per step (one torch thread by default: no spin-waiting threads in it; on a shared machine
wall time mostly measures the neighbours), with the wall-clock median beside it. Config: the tiny Llama
(hidden 128, 4 layers) and, without --quick, a wider one (hidden 384, 6 layers), built from a config with a
character tokenizer; batch 16, fp32; LoRA r=16, alpha 32, dropout 0.05 (the config's default) on every linear
layer. No budget: reported, not judged.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "tiny": {"tiny_hidden_size": 128, "tiny_num_layers": 4, "tiny_num_heads": 4},
    "wide": {"tiny_hidden_size": 384, "tiny_num_layers": 6, "tiny_num_heads": 6},
}
RECIPES = ("sft", "dpo")
MODES = {"full": {"finetuning": "full"}, "lora": {"finetuning": "lora", "lora_r": 16, "lora_alpha": 32}}


def _status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Build one configuration, train it, and return what it measured (runs in its own process)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from training.engine.distributed import DistInfo
    from training.engine.recipes import build_recipe
    from training.engine.recipes.base import RunContext, run_training
    from training.engine.spec import RunSpec

    torch.set_num_threads(job["threads"])
    steps = job["steps"] + 2
    config = {
        **MODELS[job["model"]],
        **MODES[job["mode"]],
        "batch_size": 16,
        "max_steps": steps,
        "save_steps": 10**6,
        "sample_table_steps": 0,
        "learning_rate": 1e-4,
        "num_threads": job["threads"],
    }
    cuda = torch.cuda.is_available()

    class Meter:
        """The Reporter protocol: step times, and the memory peak as of each step's report."""

        def __init__(self) -> None:
            self.step_times: list[float] = []
            self.cpu_times: list[float] = []
            self.peak = 0
            self._cpu = time.process_time()

        def log(self, metrics: Any, step: int | None = None) -> None:
            if "step_time" in metrics:
                self.step_times.append(float(metrics["step_time"]))
                now = time.process_time()  # CPU seconds of the step: less moved by other load than wall time
                self.cpu_times.append(now - self._cpu)
                self._cpu = now
                peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
                self.peak = max(self.peak, peak)

        def log_checkpoint(self, step: int, path: str) -> None:
            return None

        def log_table(self, *args: Any) -> None:
            return None

        def finish(self, exit_code: int = 0) -> None:
            return None

    meter = Meter()
    with tempfile.TemporaryDirectory() as out:
        spec = RunSpec(recipe=job["recipe"], config=config, output_dir=out)
        ctx = RunContext.create(spec=spec, reporter=meter, dist=DistInfo())  # type: ignore[arg-type]
        import peft  # noqa: F401 - loaded before the measure in every configuration: its code is not a model's

        gc.collect()
        before_build = torch.cuda.memory_allocated() if cuda else _status_kib("VmRSS") * 1024
        recipe = build_recipe(ctx)
        trained = [p for p in recipe.model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in recipe.model.parameters())
        # Touch every weight (the reference's too): a model loaded from safetensors may still be file pages
        # mapped but not yet resident, which the first forward would count as training memory.
        for module in (recipe.model, getattr(recipe, "ref", None)):
            if isinstance(module, torch.nn.Module):
                for tensor in [*module.parameters(), *module.buffers()]:
                    float(tensor.detach().float().sum())
        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            start = _status_kib("VmRSS") * 1024
        stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the run's log lines are not this bench's output
        try:
            meter._cpu = time.process_time()
            run_training(recipe)
        finally:
            sys.stdout.close()
            sys.stdout = stdout
    trained_n = sum(p.numel() for p in trained)
    return {
        **job,
        "params": total,
        "trained": trained_n,
        "state_bytes": trained_n * 12,
        "built": start - before_build,
        "peak_over_start": meter.peak - start,
        "step_ms": statistics.median(meter.step_times[2:]) * 1000,
        "cpu_ms": statistics.median(meter.cpu_times[2:]) * 1000,
        "memory": "cuda allocated" if cuda else "resident set",
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - began
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time without spin-waits)")
    parser.add_argument("--quick", action="store_true", help="the tiny model only, 6 steps")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    models = ["tiny"] if args.quick else list(MODELS)
    steps = 6 if args.quick else args.steps
    results = []
    for model in models:
        for recipe in RECIPES:
            for mode in MODES:
                job = {"model": model, "recipe": recipe, "mode": mode, "steps": steps, "threads": args.threads}
                results.append(run_job(job))
    print()
    print(
        f"{'model':<6}{'recipe':<8}{'tuning':<8}{'params':>9}{'trained':>10}{'built':>10}{'grads+AdamW':>13}"
        f"{'peak over start':>17}{'vs full':>9}{'step CPU ms':>13}{'vs full':>9}{'wall ms':>9}"
    )
    full: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        key = (r["model"], r["recipe"])
        if r["mode"] == "full":
            full[key] = r
        base = full.get(key, r)
        mem_ratio = r["peak_over_start"] / base["peak_over_start"] if base["peak_over_start"] > 0 else float("nan")
        time_ratio = r["cpu_ms"] / base["cpu_ms"]
        print(
            f"{r['model']:<6}{r['recipe']:<8}{r['mode']:<8}{r['params'] / 1e6:>8.2f}M{r['trained'] / 1e6:>9.3f}M"
            f"{r['built'] / 2**20:>7.1f} MB"
            f"{r['state_bytes'] / 2**20:>10.1f} MB{r['peak_over_start'] / 2**20:>14.1f} MB{mem_ratio:>8.2f}x"
            f"{r['cpu_ms']:>13.1f}{time_ratio:>8.2f}x{r['step_ms']:>9.0f}"
        )
    kind = results[0]["memory"]
    print(f"memory: {kind}; {args.threads} threads; {steps} timed steps per row; no budget (reported)")
    print(f"command: .venv/bin/python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
