"""Our GRPO and DPO steps against TRL's GRPOTrainer and DPOTrainer: same model, data and batch, one process.

Run: .venv/bin/pip install -r requirements/bench.txt && .venv/bin/python bench/bench_engine.py [--rounds 3] [--quick]
Fixed config: a ~1M-parameter Llama built from a config, a character tokenizer trained on the task, fp32 on
CPU with 2 threads; GRPO 8 prompts x 4 generations x 24 new tokens, no KL (TRL's default beta=0, loss dapo);
DPO 16 pairs per step with an explicit frozen reference (TRL cannot build one from a config-built model).

Our GRPO is timed twice: as TRL runs it (backward through every completion) and with its zero-advantage
shortcut (rows whose advantage is 0 carry no gradient and skip autograd; recipes/grpo.py _policy_logps).
The shortcut's gain depends on the data: the table prints the share of groups whose rewards tie (zero reward
std, TRL's frac_reward_zero_std) seen by each engine, the share of rows the shortcut could skip.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.engine.checkpoints import save_model_folder  # noqa: E402
from training.engine.config import SFTConfig  # noqa: E402
from training.engine.demo_tasks import addition_prompts, sorting_preferences, task_texts  # noqa: E402
from training.engine.distributed import DistInfo  # noqa: E402
from training.engine.modeling import load_causal_lm, train_char_tokenizer  # noqa: E402
from training.engine.recipes import build_recipe  # noqa: E402
from training.engine.recipes.base import RunContext, run_training  # noqa: E402
from training.engine.rewards.verifiers import numeric_answer  # noqa: E402
from training.engine.spec import RunSpec  # noqa: E402

PROMPTS, GENERATIONS, NEW_TOKENS, DPO_BATCH = 8, 4, 24, 16
TINY = {"tiny_hidden_size": 128, "tiny_num_layers": 4, "tiny_num_heads": 4}


class Timings:
    """Collects our engine's per-step metrics (the Reporter protocol)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._cpu = time.process_time()

    def log(self, metrics: Any, step: int | None = None) -> None:
        # CPU seconds since the previous step's report: on a shared machine, less moved by other load than wall time
        now = time.process_time()
        self.rows.append({**metrics, "cpu_time": now - self._cpu})
        self._cpu = now

    def log_checkpoint(self, step: int, path: str) -> None:
        return None

    def log_table(self, name: str, step: int, columns: list[str], rows: list[list[object]]) -> None:
        return None  # samples tables: not timed

    def finish(self, exit_code: int = 0) -> None:
        return None


def build_model_folder(root: Path) -> Path:
    """One tiny model + tokenizer on disk, loaded by both engines."""
    texts = task_texts(addition_prompts()) + task_texts(sorting_preferences(n=2000, seed=99))
    tokenizer = train_char_tokenizer(texts)
    config = SFTConfig(**TINY, max_length=64)
    model = load_causal_lm("tiny", config=config, tokenizer=tokenizer, seed=0, device=torch.device("cpu"))
    folder = root / "model"
    save_model_folder(folder, model=model, tokenizer=tokenizer)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}, {torch.get_num_threads()} threads")
    return folder


def ours(
    recipe: str,
    folder: Path,
    root: Path,
    steps: int,
    config: dict[str, Any],
    *,
    shortcut: bool = True,
    shared_prompt: bool = True,
) -> list[dict[str, float]]:
    spec = RunSpec(
        recipe=recipe,
        config={"model_name_or_path": str(folder), "max_steps": steps, "save_steps": 10_000, **config},
        output_dir=str(root / f"ours-{recipe}-{'shortcut' if shortcut else 'full'}-{int(shared_prompt)}"),
    )
    timings = Timings()
    ctx = RunContext.create(spec=spec, reporter=timings, dist=DistInfo())
    built = build_recipe(ctx)
    if hasattr(built, "zero_advantage_shortcut"):
        built.zero_advantage_shortcut = shortcut
    if hasattr(built, "shared_prompt"):  # DPO: one row per pair with a 4-D mask, or TRL's two rows per pair
        built.shared_prompt = built.shared_prompt and shared_prompt
    run_training(built)
    return timings.rows


class StepClock:
    """A TRL callback that times each optimiser step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self._start = self._cpu = 0.0

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self._start)
        self.cpu_times.append(time.process_time() - self._cpu)


def trl_grpo(folder: Path, root: Path, steps: int) -> tuple[list[float], list[float], list[float], list[float]]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    rows = [{"prompt": e.prompt, "answer": e.answer} for e in addition_prompts()]

    def reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        from training.engine.data import PromptExample

        return numeric_answer(completions, [PromptExample("", a) for a in answer])

    args = GRPOConfig(
        output_dir=str(root / "trl-grpo"),
        per_device_train_batch_size=PROMPTS * GENERATIONS,
        num_generations=GENERATIONS,
        max_completion_length=NEW_TOKENS,
        max_steps=steps,
        learning_rate=1e-5,
        beta=0.0,
        loss_type="dapo",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    clock = StepClock()
    callback = type(
        "Clock", (TrainerCallback,), {"on_step_begin": clock.on_step_begin, "on_step_end": clock.on_step_end}
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows * 4),
        processing_class=tokenizer,
        callbacks=[callback()],
    )
    trainer.train()
    history = trainer.state.log_history
    lengths = [h["completions/mean_length"] for h in history if "completions/mean_length" in h]
    zero_std = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
    return clock.times, clock.cpu_times, lengths, zero_std


def trl_dpo(folder: Path, root: Path, steps: int) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [
        {"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in sorting_preferences(n=2000, seed=99)
    ]
    args = DPOConfig(
        output_dir=str(root / "trl-dpo"),
        per_device_train_batch_size=DPO_BATCH,
        max_steps=steps,
        learning_rate=1e-4,
        beta=0.1,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    clock = StepClock()
    callback = type(
        "Clock", (TrainerCallback,), {"on_step_begin": clock.on_step_begin, "on_step_end": clock.on_step_end}
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        ref_model=AutoModelForCausalLM.from_pretrained(folder),  # explicit: TRL crashes building one itself
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[callback()],
    )
    trainer.train()
    return clock.times, clock.cpu_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per engine and round (after 3 warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of Arbiter-then-TRL runs, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["all", "grpo", "dpo"], default="all", help="measure one recipe only")
    parser.add_argument("--quick", action="store_true", help="1 round of 5 measured steps")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = min(args.steps, 5), 1
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    warm, n = 3, args.steps
    # Each round runs every engine once; a shared machine's load bursts then fall on both engines alike,
    # and the medians below pool the measured steps of all rounds.
    our_grpo_t: list[float] = []  # full backward, as TRL
    our_grpo_cpu: list[float] = []
    our_short_t: list[float] = []  # zero-advantage rows skip autograd
    our_lengths: list[float] = []
    our_short_lengths: list[float] = []
    our_zero: list[float] = []
    trl_grpo_t: list[float] = []
    trl_grpo_cpu: list[float] = []
    trl_lengths: list[float] = []
    trl_zero: list[float] = []
    our_dpo_t: list[float] = []
    trl_dpo_t: list[float] = []
    our_dpo_cpu: list[float] = []
    trl_dpo_cpu: list[float] = []
    plain_dpo_t: list[float] = []
    plain_dpo_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = build_model_folder(root)
        grpo_cfg = {
            "batch_size": PROMPTS,
            "num_generations": GENERATIONS,
            "max_new_tokens": NEW_TOKENS,
            "learning_rate": 1e-5,
            "loss_type": "dapo",
            "max_length": 64,
            "num_threads": args.threads,
        }
        dpo_cfg = {"batch_size": DPO_BATCH, "max_length": 64, "num_threads": args.threads}
        for index in range(args.rounds):
            run_root = root / f"round-{index}"
            if args.only in ("all", "grpo"):
                rows = ours("grpo", folder, run_root, warm + n, grpo_cfg, shortcut=False)[warm:]
                our_grpo_t += [r["step_time"] for r in rows]
                our_grpo_cpu += [r["cpu_time"] for r in rows]
                our_lengths += [r["completions/mean_length"] for r in rows]
                our_zero += [r["frac_reward_zero_std"] for r in rows]
                rows = ours("grpo", folder, run_root, warm + n, grpo_cfg, shortcut=True)[warm:]
                our_short_t += [r["step_time"] for r in rows]
                our_short_lengths += [r["completions/mean_length"] for r in rows]
                times, cpu_times, lengths, zero_std = trl_grpo(folder, run_root, warm + n)
                trl_grpo_t += times[warm:]
                trl_grpo_cpu += cpu_times[warm:]
                trl_lengths += lengths[warm:]
                trl_zero += zero_std[warm:]
            if args.only in ("all", "dpo"):
                rows = ours("dpo", folder, run_root, warm + n, dpo_cfg)[warm:]
                our_dpo_t += [r["step_time"] for r in rows]
                our_dpo_cpu += [r["cpu_time"] for r in rows]
                rows = ours("dpo", folder, run_root, warm + n, dpo_cfg, shared_prompt=False)[warm:]
                plain_dpo_t += [r["step_time"] for r in rows]
                plain_dpo_cpu += [r["cpu_time"] for r in rows]
                times, cpu_times = trl_dpo(folder, run_root, warm + n)
                trl_dpo_t += times[warm:]
                trl_dpo_cpu += cpu_times[warm:]
    median = statistics.median
    print()
    heading = f"measure (median, {args.rounds} x {n} steps)"
    print(f"{heading:<40}{'Arbiter':>12}{'TRL 1.16':>12}{'ratio':>8}  budget (ratio)")
    table: list[tuple[str, float, float, float | None]] = []
    if our_grpo_t:
        our_grpo, our_short, trl_grpo_s = median(our_grpo_t), median(our_short_t), median(trl_grpo_t)
        our_tokens = statistics.mean(our_lengths) * PROMPTS * GENERATIONS
        short_tokens = statistics.mean(our_short_lengths) * PROMPTS * GENERATIONS
        trl_tokens = statistics.mean(trl_lengths) * PROMPTS * GENERATIONS
        table += [
            ("GRPO step time (s), full backward", our_grpo, trl_grpo_s, our_grpo / trl_grpo_s),
            ("GRPO step time (s), zero-adv shortcut", our_short, trl_grpo_s, our_short / trl_grpo_s),
            # process CPU seconds per step (all threads): less moved by other load on a shared machine
            (
                "GRPO step CPU (s), full backward",
                median(our_grpo_cpu),
                median(trl_grpo_cpu),
                median(our_grpo_cpu) / median(trl_grpo_cpu),
            ),
            (
                "GRPO tokens/s, full backward",
                our_tokens / our_grpo,
                trl_tokens / trl_grpo_s,
                (our_tokens / our_grpo) / (trl_tokens / trl_grpo_s),
            ),
            (
                "GRPO tokens/s, zero-adv shortcut",
                short_tokens / our_short,
                trl_tokens / trl_grpo_s,
                (short_tokens / our_short) / (trl_tokens / trl_grpo_s),
            ),
            # The share of groups whose rewards tie: the rows the shortcut may skip (TRL's frac_reward_zero_std).
            (
                "GRPO groups with zero reward std (%)",
                100 * statistics.mean(our_zero),
                100 * statistics.mean(trl_zero),
                None,
            ),
        ]
    if our_dpo_t:
        our_dpo, trl_dpo_s = median(our_dpo_t), median(trl_dpo_t)
        table += [
            ("DPO step time (s)", our_dpo, trl_dpo_s, our_dpo / trl_dpo_s),
            ("DPO pairs/s", DPO_BATCH / our_dpo, DPO_BATCH / trl_dpo_s, trl_dpo_s / our_dpo),
            (
                "DPO pairs per CPU-second",
                DPO_BATCH / median(our_dpo_cpu),
                DPO_BATCH / median(trl_dpo_cpu),
                median(trl_dpo_cpu) / median(our_dpo_cpu),
            ),
            # The same recipe scoring each pair as two plain rows (TRL's layout): does the 4-D mask pay on CPU?
            (
                "DPO pairs/s, two rows per pair",
                DPO_BATCH / median(plain_dpo_t),
                DPO_BATCH / trl_dpo_s,
                trl_dpo_s / median(plain_dpo_t),
            ),
            (
                "DPO pairs per CPU-s, two rows per pair",
                DPO_BATCH / median(plain_dpo_cpu),
                DPO_BATCH / median(trl_dpo_cpu),
                median(trl_dpo_cpu) / median(plain_dpo_cpu),
            ),
        ]
    budgets = {  # DESIGN.md; the shortcut is reported beside, not judged
        "GRPO step time (s), full backward": (lambda r: r <= 0.5, "<= 0.5"),
        "DPO pairs/s": (lambda r: r >= 1.4, ">= 1.4"),
    }
    for name, a, b, ratio in table:
        shown = f"{ratio:>8.2f}" if ratio is not None else f"{'':>8}"
        judged = ""
        if name in budgets and ratio is not None:
            ok, text = budgets[name]
            judged = f"  {text}: {'yes' if ok(ratio) else 'NO'}"
        print(f"{name:<40}{a:>12.4g}{b:>12.4g}{shown}{judged}")
    if our_grpo_t:
        rows_per_step = PROMPTS * GENERATIONS
        print(
            f"mean completion length: Arbiter {our_tokens / rows_per_step:.1f} (full), "
            f"{short_tokens / rows_per_step:.1f} (shortcut), TRL {trl_tokens / rows_per_step:.1f} tokens"
        )
    print(f"command: .venv/bin/python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
