"""GPU check: the engine's GPU paths on one lent GPU in under ten minutes, and what they measured, as a table.

Runs the engine as the worker does (``python -m training.engine SPEC``, torchrun for FSDP) on a model folder:
1. GRPO, 2 steps, rollout_backend=vllm (colocated, sleep mode, weight sync after each step, TRL's importance
   correction): step time and completion tokens/s;
2. DPO with LoRA, 1 step;
3. SFT under ``torchrun --standalone --nproc-per-node 1`` with distributed=fsdp (FSDP2 on one GPU), 1 step;
4. TRL's GRPOTrainer with vLLM (colocate) on the same model and batch: completion tokens/s, beside (1).

The device machine reaches no network: without ``GPU_CHECK_MODEL`` (a local folder, or a hub id on a host that
can download) the model is a Qwen2-shaped one built from a config with a character tokenizer (random weights:
the throughput is real, the rewards are not). ``GPU_CHECK_ALLOW_CPU=1`` runs steps 2-3 on the CPU with a small
model, to check the script itself where no GPU is lent.

    bash bench/gpu_check.sh            # or: python bench/gpu_check.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.engine.spec import RunSpec  # noqa: E402

PROMPTS = [f"{a}+{b}=" for a in range(10) for b in range(10)]
BATCH, GENERATIONS, NEW_TOKENS = 8, 8, 64


def build_model(folder: Path, *, on_gpu: bool) -> str:
    """A Qwen2-shaped causal LM from a config (about 60M parameters on a GPU, 1M on the CPU), saved with a
    character tokenizer: loadable by transformers, vLLM and TRL with no download."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training.engine.modeling import train_char_tokenizer

    tokenizer = train_char_tokenizer([*PROMPTS, "0123456789 answer"])
    size = (512, 8, 8) if on_gpu else (64, 2, 4)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=size[0],
        intermediate_size=size[0] * 3,
        num_hidden_layers=size[1],
        num_attention_heads=size[2],
        num_key_value_heads=max(1, size[2] // 4),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_data(folder: Path) -> dict[str, str]:
    """The a+b prompts in TRL's columns: prompt/answer (GRPO), prompt/completion (SFT), prompt/chosen/rejected."""
    sums = {p: sum(int(x) for x in p[:-1].split("+")) for p in PROMPTS}
    rows = {
        "prompts": [{"prompt": p, "answer": str(s)} for p, s in sums.items()],
        "supervised": [{"prompt": p, "completion": str(s)} for p, s in sums.items()],
        "pairs": [{"prompt": p, "chosen": str(s), "rejected": str(s + 1)} for p, s in sums.items()],
    }
    paths = {}
    for name, items in rows.items():
        paths[name] = str(folder / f"{name}.jsonl")
        Path(paths[name]).write_text("".join(json.dumps(item) + "\n" for item in items))
    return paths


def run_engine(work: Path, name: str, recipe: str, config: dict[str, Any], *, torchrun: int = 0) -> dict[str, Any]:
    """One engine run; its metrics events, wall time and exit code."""
    spec = RunSpec(recipe=recipe, config=config, output_dir=str(work / name), run_id=1)
    path = work / f"{name}.json"
    spec.dump(path)
    command = [sys.executable, "-m", "training.engine", str(path)]
    if torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)]
        command += ["-m", "training.engine", str(path)]
    began = time.perf_counter()
    env = {**os.environ, "ARBITER_RUN_TOKEN": ""}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400, check=False)
    wall = time.perf_counter() - began
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    metrics = [e["metrics"] for e in events if e.get("event") == "metrics"]
    if proc.returncode:
        print(f"--- {name} failed ({proc.returncode}); stderr tail:\n{proc.stderr[-3000:]}", flush=True)
    return {"code": proc.returncode, "wall": wall, "metrics": metrics}


def completion_tokens_per_s(metrics: list[dict[str, float]]) -> float:
    """Completion tokens per second of training, steps after the first (vLLM start-up and warm-up excluded)."""
    steps = metrics[1:] or metrics
    tokens = sum(m["completions/mean_length"] * BATCH * GENERATIONS for m in steps)
    seconds = sum(m["step_time"] for m in steps)
    return tokens / seconds if seconds else float("nan")


def trl_grpo(work: Path, model: str, prompts: list[str]) -> dict[str, Any]:
    """TRL's GRPOTrainer with colocated vLLM on the same model, batch and lengths: seconds per step and
    completion tokens/s (steps after the first)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.began = 0.0
            self.times: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self.began)

    def digit_reward(completions: list[str], **kwargs: Any) -> list[float]:
        return [float(any(c.isdigit() for c in text)) for text in completions]

    clock = StepClock()
    args = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=BATCH * GENERATIONS,
        num_generations=GENERATIONS,
        max_completion_length=NEW_TOKENS,
        max_steps=3,
        learning_rate=1e-5,
        beta=0.0,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3,
        vllm_enable_sleep_mode=True,
        bf16=True,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
    )
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    trainer = GRPOTrainer(model=model, reward_funcs=digit_reward, args=args, train_dataset=dataset, callbacks=[clock])
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    steps = clock.times[1:]
    tokens = sum(lengths[1 : 1 + len(steps)]) * BATCH * GENERATIONS
    return {"step_s": sum(steps) / max(len(steps), 1), "tokens_per_s": tokens / sum(steps) if steps else float("nan")}


def main() -> int:
    on_gpu = torch.cuda.is_available()
    allow_cpu = os.environ.get("GPU_CHECK_ALLOW_CPU") == "1"
    has_vllm = importlib.util.find_spec("vllm") is not None
    has_trl = importlib.util.find_spec("trl") is not None
    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    print(f"device: {device}; vllm installed: {has_vllm}; trl installed: {has_trl}; torch {torch.__version__}")
    if not on_gpu and not allow_cpu:
        print("no CUDA GPU: nothing to check (GPU_CHECK_ALLOW_CPU=1 checks the script's CPU parts)")
        return 2
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        model = os.environ.get("GPU_CHECK_MODEL") or build_model(work / "model", on_gpu=on_gpu)
        data = write_data(work)
        common: dict[str, Any] = {"model_name_or_path": model, "save_steps": 1000, "sample_table_steps": 0}
        if on_gpu:
            common["dtype"] = "bfloat16"
        if on_gpu and has_vllm:
            grpo = run_engine(
                work,
                "grpo_vllm",
                "grpo",
                {
                    **common,
                    "dataset_path": data["prompts"],
                    "max_steps": 2,
                    "batch_size": BATCH,
                    "num_generations": GENERATIONS,
                    "max_new_tokens": NEW_TOKENS,
                    "max_length": 32,
                    "rollout_backend": "vllm",
                    "reward_funcs": ["regex"],
                    "reward_regex": "(?s).*[0-9].*",
                },
            )
            m = grpo["metrics"]
            ok = grpo["code"] == 0 and len(m) == 2
            detail = (
                f"step_time {m[-1]['step_time']:.3f}s, {completion_tokens_per_s(m):.0f} completion tok/s, "
                f"IS ratio mean {m[-1].get('sampling/importance_sampling_ratio/mean', float('nan')):.4f}, "
                f"logp gap max {m[-1].get('sampling/sampling_logp_difference/max', float('nan')):.4f}"
                if ok
                else f"exit {grpo['code']}"
            )
            rows.append(("GRPO 2 steps, vLLM + weight sync", "ok" if ok else "FAILED", detail))
            if has_trl:
                try:
                    trl = trl_grpo(work, model, PROMPTS)
                    measured = f"{trl['step_s']:.3f}s/step, {trl['tokens_per_s']:.0f} completion tok/s"
                    rows.append(("TRL GRPOTrainer, vLLM colocate", "ok", measured))
                except Exception as error:
                    rows.append(("TRL GRPOTrainer, vLLM colocate", "FAILED", repr(error)[:200]))
        else:
            needs = "needs a CUDA GPU and vllm (docker/Dockerfile.gpu)"
            rows.append(("GRPO 2 steps, vLLM + weight sync", "skipped", needs))
        short = {"max_steps": 1, "batch_size": 8, "max_length": 32}
        dpo = run_engine(
            work, "dpo_lora", "dpo", {**common, **short, "dataset_path": data["pairs"], "finetuning": "lora"}
        )
        rows.append(("DPO 1 step, LoRA", "ok" if dpo["code"] == 0 else "FAILED", f"wall {dpo['wall']:.1f}s"))
        fsdp = run_engine(
            work,
            "sft_fsdp",
            "sft",
            {**common, **short, "dataset_path": data["supervised"], "distributed": "fsdp"},
            torchrun=1,
        )
        status = "ok" if fsdp["code"] == 0 else "FAILED"
        rows.append(("SFT 1 step, FSDP2 on 1 GPU (torchrun)", status, f"wall {fsdp['wall']:.1f}s"))
    width = max(len(r[0]) for r in rows)
    for name, status, detail in rows:
        print(f"{name:<{width}}  {status:<7}  {detail}")
    return 0 if all(r[1] != "FAILED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
