"""The sampler behind "Sample into a study": n completions per prompt and model, seeded, with progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from training.engine.checkpoints import save_model_folder
from training.engine.demo_tasks import addition_prompts
from training.engine.modeling import tiny_llama_config, train_char_tokenizer
from training.engine.sampling import SampleModel, SampleSpec, main, sample

ROOT = Path(__file__).resolve().parents[2]


def tiny_folder(path: Path, *, seed: int) -> Path:
    """A tiny Llama (random weights from `seed`) and its character tokenizer, saved as a checkpoint folder."""
    tokenizer = train_char_tokenizer([p.prompt for p in addition_prompts()] + ["0123456789"])
    torch.manual_seed(seed)
    config = tiny_llama_config(
        vocab_size=len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, max_positions=64, pad_token_id=0
    )
    save_model_folder(path, model=LlamaForCausalLM(config), tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return tiny_folder(root / "a", seed=1), tiny_folder(root / "b", seed=2)


def write_prompts(path: Path, prompts: list[object]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def spec_for(tmp_path: Path, models: list[Path], prompts: list[object], **fields: object) -> SampleSpec:
    return SampleSpec(
        models=[SampleModel(key=f"m{i}", path=str(p)) for i, p in enumerate(models)],
        prompts_path=str(write_prompts(tmp_path / "prompts.jsonl", prompts)),
        output_path=str(tmp_path / "out" / "samples.jsonl"),
        **fields,  # type: ignore[arg-type]
    )


def read_rows(spec: SampleSpec) -> list[dict[str, object]]:
    return [json.loads(line) for line in Path(spec.output_path).read_text().splitlines()]


def test_every_model_writes_n_completions_per_prompt_and_progress_reaches_the_total(
    tmp_path: Path, checkpoints: tuple[Path, Path]
) -> None:
    prompts = ["1+2=", "3+4=", "5+5=", "9+0=", "2+2="]
    spec = spec_for(tmp_path, list(checkpoints), prompts, n=3, max_new_tokens=4, batch_size=2, num_threads=1)
    seen: list[tuple[int, int]] = []
    summary = sample(spec, progress=lambda done, total: seen.append((done, total)))
    rows = read_rows(spec)
    assert summary.rows == len(rows) == 2 * 5 * 3
    assert {(r["model"], r["prompt_index"], r["sample"]) for r in rows} == {
        (m, p, s) for m in ("m0", "m1") for p in range(5) for s in range(3)
    }
    assert all(isinstance(r["completion"], str) and 0 < int(r["tokens"]) <= 4 for r in rows)  # type: ignore[call-overload]
    assert seen[-1] == (30, 30) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert summary.backend == "hf" and summary.seconds > 0
    assert not Path(spec.output_path + ".tmp").exists()


def test_same_seed_draws_the_same_numbers_for_every_model(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    a, b = checkpoints
    prompts = ["1+2=", "3+4=", "7+1="]
    # A model compared with itself gives identical completions: the sides differ only through the weights.
    spec = spec_for(tmp_path, [a, a, b], prompts, n=2, max_new_tokens=6, seed=11, num_threads=1)
    sample(spec)
    rows = read_rows(spec)
    by = {(r["model"], r["prompt_index"], r["sample"]): r["completion"] for r in rows}
    keys = [(p, s) for p in range(3) for s in range(2)]
    assert [by[("m0", *k)] for k in keys] == [by[("m1", *k)] for k in keys]
    assert [by[("m0", *k)] for k in keys] != [by[("m2", *k)] for k in keys]  # another checkpoint writes otherwise
    # and the same spec again gives the same file
    first = Path(spec.output_path).read_text()
    sample(spec)
    assert Path(spec.output_path).read_text() == first


def test_greedy_sampling_repeats_itself_and_long_prompts_keep_their_end(
    tmp_path: Path, checkpoints: tuple[Path, Path]
) -> None:
    long_prompt = "1+" * 100 + "2="  # far past the tiny model's 64 positions
    spec = spec_for(tmp_path, [checkpoints[0]], [long_prompt, "3+4="], n=2, temperature=0.0, max_new_tokens=5)
    summary = sample(spec)
    rows = read_rows(spec)
    assert summary.truncated_prompts == 1
    for p in range(2):
        texts = [r["completion"] for r in rows if r["prompt_index"] == p]
        assert len(texts) == 2 and texts[0] == texts[1]


def test_chat_prompts_are_rendered_for_models_without_a_template(
    tmp_path: Path, checkpoints: tuple[Path, Path]
) -> None:
    messages = [{"role": "user", "content": "1+2="}]
    spec = spec_for(tmp_path, [checkpoints[0]], [messages], max_new_tokens=3)
    assert sample(spec).rows == 1


def test_the_tiny_placeholder_is_refused(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, [Path("tiny")], ["1+2="])
    with pytest.raises(ValueError, match="random model"):
        sample(spec)


def test_module_reports_progress_lines_and_exits_zero(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    spec = spec_for(tmp_path, list(checkpoints), ["1+2=", "3+4="], n=2, max_new_tokens=3, num_threads=1)
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "training.engine.sampling", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[-2] == {"event": "progress", "done": 8, "total": 8}
    assert events[-1]["event"] == "done" and events[-1]["rows"] == 8


def test_a_bad_spec_exits_one_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"models": [], "prompts_path": "x", "output_path": "y"}))
    assert main([str(path)]) == 1
    assert "sampling failed" in capsys.readouterr().err
