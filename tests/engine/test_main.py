"""``python -m training.engine SPEC.json`` as the supervisor runs it: exit codes, outputs, prompt SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

from training.engine.config import RECIPES
from training.engine.spec import RunSpec

ROOT = Path(__file__).resolve().parents[2]


def engine(spec: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "ARBITER_RUN_TOKEN": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "training.engine", str(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def write_spec(tmp_path: Path, **config: object) -> Path:
    spec = RunSpec(recipe="demo", config={"step_delay_s": 0, **config}, output_dir=str(tmp_path / "out"), run_id=5)
    path = tmp_path / "spec.json"
    spec.dump(path)
    return path


def test_demo_runs_end_to_end_and_exits_zero(tmp_path: Path) -> None:
    proc = engine(write_spec(tmp_path, max_steps=20, save_steps=10, tiny_num_layers=1))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    losses = [e["metrics"]["loss"] for e in events if e["event"] == "metrics"]
    assert len(losses) == 20
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [10, 20]
    assert events[-1] == {"event": "finish", "exit_code": 0}
    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")


def test_sigterm_ends_the_run_promptly_with_143(tmp_path: Path) -> None:
    proc = engine(write_spec(tmp_path, max_steps=100_000, step_delay_s=0.05))
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until training has started
        if line.startswith("step "):
            break
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert proc.returncode == 143
    rest = proc.stdout.read()
    assert '{"event": "finish", "exit_code": 143}' in rest


def test_bad_spec_fails_with_exit_one(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"recipe": "demo", "config": {"max_steps": -1}, "output_dir": str(tmp_path)}))
    proc = engine(path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "max_steps" in err


def test_every_recipe_config_builds_a_form_schema_with_descriptions() -> None:
    for info in RECIPES.values():
        schema = info.config_cls.model_json_schema()
        for name, field in schema["properties"].items():
            assert field.get("description"), f"{info.name}.{name} has no description"
        info.config_cls.model_validate({})  # every field has a default
