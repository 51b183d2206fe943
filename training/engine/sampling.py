"""``python -m training.engine.sampling SPEC.json``: sample completions of several models on one prompt set.

What "Sample into a study" runs on a worker: for each model (a checkpoint folder or any path
``from_pretrained`` loads), every prompt gets ``n`` completions, written as JSONL rows
``{prompt_index, model, sample, completion, finished, tokens}``. Progress goes to stdout as JSON lines
(``{"event": "progress", "done": d, "total": t}``) for the worker to relay; nothing here knows Django.

Why a subprocess and not a function in the Celery task: CUDA cannot start in a forked Celery child, vLLM
holds its GPU memory until its process exits (it has no reliable in-process teardown), and cancel is then
one signal to a process group — the same reasons runs are subprocesses. It costs an interpreter start
(a few seconds against minutes of generation).

Randomness: before each batch every model is seeded with the same (seed, batch) value, so two checkpoints
draw the same random numbers (common random numbers): their differences come from the weights, and a
model compared with itself gives identical completions.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from training.engine.adapters import is_adapter_folder, load_merged
from training.engine.batching import encode_prompt
from training.engine.data import Message, render_plain
from training.engine.modeling import TINY, load_tokenizer, moved, resolve_device
from training.engine.rollout import Rollout, choose_backend
from training.engine.rollout.hf import HFRollout

PromptValue = str | list[Message]
ProgressFn = Callable[[int, int], None]


class SampleModel(BaseModel):
    """One model to sample from: ``key`` names it in the output rows."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=64)
    path: str = Field(min_length=1, max_length=1000)


class SampleSpec(BaseModel):
    """Everything one sampling job needs; the worker writes it, this module validates it."""

    model_config = ConfigDict(extra="forbid")

    models: list[SampleModel] = Field(min_length=1, max_length=16)
    prompts_path: str = Field(description="JSONL: one {prompt: str | messages} per line.")
    output_path: str = Field(description="Where the completions are written (JSONL).")
    n: int = Field(1, ge=1, le=64, description="Completions per prompt and model.")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, le=32_768)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    backend: Literal["auto", "hf", "vllm"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts per generate call (x n rows).")
    num_threads: int = Field(0, ge=0, le=256, description="CPU threads for torch; 0 keeps torch's default.")
    vllm_gpu_memory_utilization: float = Field(0.85, gt=0.0, le=0.95)

    @classmethod
    def load(cls, path: str | Path) -> SampleSpec:
        """Read and validate a spec file."""
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


class SampleSummary(BaseModel):
    """What a finished job reports: rows written, the backend, generation seconds, truncated prompts."""

    rows: int
    backend: str
    seconds: float
    truncated_prompts: int


def read_prompts(path: str | Path) -> list[PromptValue]:
    """The prompts of a JSONL prompt file (each line ``{"prompt": str | [{role, content}, ...]}``)."""
    prompts: list[PromptValue] = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            value = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(value, str | list):
                raise ValueError(f"{path}:line {number}: field 'prompt' must be a string or a list of messages")
            prompts.append(value)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: PromptValue) -> str:
    """A chat prompt through the tokenizer's chat template (or the plain renderer); strings as they are."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    return render_plain(prompt, True)


def load_sampler_model(path: str, *, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a folder or hub id (bfloat16 on CUDA, float32 on CPU)."""
    if path == TINY:
        raise ValueError("'tiny' is a random model built for training; sample from a checkpoint or a real model")
    tokenizer = load_tokenizer(path)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaded: PreTrainedModel
    if is_adapter_folder(path):  # a LoRA run's checkpoint: its base with the adapter merged in
        loaded = load_merged(path, head="causal_lm", dtype=dtype)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = moved(loaded, device)
    model.train(False)
    return model, tokenizer


def _max_positions(model_config: Any, fallback: int = 4096) -> int:
    value = getattr(model_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else fallback


def _batches(items: Sequence[list[int]], size: int) -> Iterator[tuple[int, list[list[int]]]]:
    for index, start in enumerate(range(0, len(items), size)):
        yield index, list(items[start : start + size])


def _decode(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[tuple[str, bool, int]]:
    lengths = rollout.completion_mask.sum(1).tolist()
    ids = rollout.completion_ids.tolist()
    texts = tokenizer.batch_decode([row[:n] for row, n in zip(ids, lengths, strict=True)], skip_special_tokens=True)
    finished = rollout.finished.tolist()
    return [(str(t), bool(f), int(n)) for t, f, n in zip(texts, finished, lengths, strict=True)]


def sample(spec: SampleSpec, *, progress: ProgressFn | None = None) -> SampleSummary:
    """Sample every model on every prompt and write the JSONL output; ``progress(done, total)`` after each batch."""
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    device = resolve_device(spec.device)
    backend = choose_backend(spec.backend) if device.type == "cuda" or spec.backend == "vllm" else "hf"
    prompts = read_prompts(spec.prompts_path)
    total = len(spec.models) * len(prompts) * spec.n
    done = 0
    seconds = 0.0
    truncated: set[int] = set()
    out_path = Path(spec.output_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for model_spec in spec.models:
            generate, tokenizer, max_positions, release = _generator(model_spec.path, spec, device, backend)
            room = max(1, max_positions - spec.max_new_tokens)
            encoded = []
            for i, prompt in enumerate(prompts):
                ids = encode_prompt(tokenizer, render_prompt(tokenizer, prompt))
                if len(ids) > room:
                    truncated.add(i)
                    ids = ids[-room:]  # keep the prompt's end: the turn being answered
                encoded.append(ids)
            for batch_index, rows in _batches(encoded, spec.batch_size):
                torch.manual_seed(spec.seed * 1_000_003 + batch_index)
                began = time.perf_counter()
                rollout = generate(rows)
                seconds += time.perf_counter() - began
                first = batch_index * spec.batch_size
                for r, (text, finished, tokens) in enumerate(_decode(tokenizer, rollout)):
                    row = {
                        "prompt_index": first + r // spec.n,
                        "model": model_spec.key,
                        "sample": r % spec.n,
                        "completion": text,
                        "finished": finished,
                        "tokens": tokens,
                    }
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                done += len(rows) * spec.n
                if progress is not None:
                    progress(done, total)
            release()
    tmp.replace(out_path)  # a cancelled job never leaves a half file under the final name
    return SampleSummary(rows=done, backend=backend, seconds=seconds, truncated_prompts=len(truncated))


Generator = Callable[[list[list[int]]], Rollout]


def _generator(
    path: str, spec: SampleSpec, device: torch.device, backend: str
) -> tuple[Generator, PreTrainedTokenizerBase, int, Callable[[], None]]:
    """A batch sampler for one model on the chosen backend, its tokenizer, its context length, and a release."""
    if backend == "vllm":
        from transformers import AutoConfig

        from training.engine.rollout.vllm import VLLMRollout

        tokenizer = load_tokenizer(path)
        merged_dir: tempfile.TemporaryDirectory[str] | None = None
        if is_adapter_folder(path):
            # vLLM loads plain weights: merge a LoRA checkpoint into its base in a folder of its own.
            merged_dir = tempfile.TemporaryDirectory(prefix="arbiter-merged-")
            merged = load_merged(path, head="causal_lm", dtype=torch.bfloat16)
            merged.save_pretrained(merged_dir.name, safe_serialization=True)
            tokenizer.save_pretrained(merged_dir.name)
            del merged
            path = merged_dir.name
        max_positions = _max_positions(AutoConfig.from_pretrained(path))
        engine = VLLMRollout(
            path,
            pad_token_id=int(tokenizer.pad_token_id or 0),
            gpu_memory_utilization=spec.vllm_gpu_memory_utilization,
            max_model_len=max_positions,
            seed=spec.seed,
        )

        def generate_vllm(rows: list[list[int]]) -> Rollout:
            return engine.generate(
                rows, n=spec.n, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_p=spec.top_p
            )

        def release_vllm() -> None:
            nonlocal engine
            del engine
            gc.collect()
            torch.cuda.empty_cache()
            if merged_dir is not None:
                merged_dir.cleanup()

        return generate_vllm, tokenizer, max_positions, release_vllm

    model, tokenizer = load_sampler_model(path, device=device)
    rollout = HFRollout(model, pad_token_id=int(tokenizer.pad_token_id or 0), eos_token_id=tokenizer.eos_token_id)

    def generate_hf(rows: list[list[int]]) -> Rollout:
        return rollout.generate(
            rows, n=spec.n, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_p=spec.top_p
        )

    def release_hf() -> None:
        rollout.model = None  # type: ignore[assignment]  # drop the last reference before the next model loads
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    return generate_hf, tokenizer, _max_positions(model.config), release_hf


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)  # noqa: T201 - stdout is the worker's channel


def main(argv: list[str] | None = None) -> int:
    """Run a spec; exit 0 when every completion is written, 1 (with the reason on stderr) otherwise."""
    parser = argparse.ArgumentParser(prog="python -m training.engine.sampling", description=__doc__)
    parser.add_argument("spec", help="path of the sampling spec JSON written by the worker")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
    try:
        spec = SampleSpec.load(args.spec)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] >= 0.25:  # at most four lines a second
                last[0] = now
                _emit({"event": "progress", "done": done, "total": total})

        summary = sample(spec, progress=progress)
    except Exception as error:  # the worker shows the message; the traceback goes to its log
        import traceback

        traceback.print_exc()
        print(f"sampling failed: {error}", file=sys.stderr, flush=True)  # noqa: T201
        return 1
    _emit({"event": "done", **summary.model_dump()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
