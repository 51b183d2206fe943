"""The loop's own speeds: "Sample into a study" throughput, and the time from a study's last judgment to a queued run.

(a) Sampling: what the worker runs for "Sample into a study" — ``python -m training.engine.sampling SPEC`` as a
    subprocess, HF backend on CPU — with two checkpoints of a ~1M-parameter tiny Llama (character tokenizer),
    P prompts x n samples x up to 32 new tokens, batch 16. Completions per second of generation (the engine's
    own generation seconds) and end to end (interpreter start and model loads included).
(b) Last judgment → launched run: a pairwise study of N items (HH-style prompts and answers) judged by one
    annotator; timed from the last submit_judgment through the reward export (the Celery task's body, run in
    this process: a worker adds its broker round trip), "Train on this" (GET /runs/new/ with the export:
    limits sized from the token lengths; the first call in a process also imports the tokenizer stack), to the
    launch form's POST (its dataset check included) that queues the run. The run is queued on a queue no worker
    reads ("bench-loop"), purged afterwards.

Usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/5 \
       .venv/bin/python bench/bench_loop.py [--quick] [--prompts 64] [--items 200]
It creates (and drops first) the database ``--db`` (arbiter_bench_loop). No budget is set for either (DESIGN.md
has none); on a shared machine the figures are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import Row, print_table  # noqa: E402

DB_NAME = "arbiter_bench_loop"
QUEUE = "bench-loop"


def sampling(root: Path, *, prompts: int, n: int, threads: int) -> list[Row]:
    """(a): two tiny checkpoints sampled through the engine's sampling entry point."""
    import torch

    from training.engine.checkpoints import save_model_folder
    from training.engine.config import SFTConfig
    from training.engine.demo_tasks import sorting_supervised, task_texts
    from training.engine.modeling import load_causal_lm, train_char_tokenizer

    data = sorting_supervised(n=prompts, seed=7)
    tokenizer = train_char_tokenizer(task_texts(data))
    config = SFTConfig(tiny_hidden_size=128, tiny_num_layers=4, tiny_num_heads=4, max_length=64)
    models = []
    for seed in (0, 1):
        model = load_causal_lm("tiny", config=config, tokenizer=tokenizer, seed=seed, device=torch.device("cpu"))
        folder = root / f"checkpoint-{seed}"
        save_model_folder(folder, model=model, tokenizer=tokenizer)
        models.append({"key": f"step-{seed}", "path": str(folder)})
    prompts_path = root / "prompts.jsonl"
    prompts_path.write_text("".join(json.dumps({"prompt": e.prompt}) + "\n" for e in data), encoding="utf-8")
    spec = {
        "models": models,
        "prompts_path": str(prompts_path),
        "output_path": str(root / "samples.jsonl"),
        "n": n,
        "temperature": 1.0,
        "max_new_tokens": 32,
        "backend": "hf",
        "device": "cpu",
        "batch_size": 16,
        "num_threads": threads,
    }
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "training.engine.sampling", str(spec_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - began
    summary = next(json.loads(line) for line in done.stdout.splitlines() if '"event": "done"' in line)
    rows = [json.loads(line) for line in (root / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    tokens = sum(r["tokens"] for r in rows)
    what = f"{len(models)} checkpoints x {prompts} prompts x {n}"
    return [
        Row(f"sampling: completions/s, generation ({what})", f"{summary['rows'] / summary['seconds']:.1f}"),
        Row("sampling: completion tokens/s, generation", f"{tokens / summary['seconds']:.0f}"),
        Row("sampling: completions/s, end to end (process start, loads)", f"{summary['rows'] / wall:.1f}"),
        Row("sampling: wall seconds, end to end", f"{wall:.2f}"),
    ]


def last_judgment_to_run(root: Path, *, items: int) -> list[Row]:
    """(b): the researcher's path from the last verdict to a queued DPO run, each leg timed."""
    from django.test import Client

    from arbiter.accounts.models import Role, User
    from evaluation import export, services
    from training.models import Run

    researcher = User.objects.create_user(username="bench-r", password="bench-password", role=Role.RESEARCHER)
    annotator = User.objects.create_user(username="bench-a", password="bench-password", role=Role.ANNOTATOR)
    study = services.create_study(owner=researcher, name="bench", kind="pairwise", annotators=[annotator])
    rng = random.Random(0)
    words = [
        "the",
        "model",
        "answer",
        "reasons",
        "about",
        "data",
        "because",
        "each",
        "step",
        "follows",
        "from",
        "evidence",
        "so",
        "we",
        "check",
        "it",
    ]
    rows = []
    for i in range(items):
        prompt = f"Question {i}: " + " ".join(rng.choices(words, k=rng.randint(10, 60))) + "?"
        a, b = (" ".join(rng.choices(words, k=rng.randint(5, 80))) for _ in range(2))
        rows.append({"prompt": prompt, "response_a": a, "response_b": b, "model_a": "x", "model_b": "y"})
    services.import_items(study=study, data="\n".join(json.dumps(r) for r in rows).encode())
    pending = []
    while (assignment := services.next_assignment(annotator=annotator, study=study)) is not None:
        pending.append(assignment)
        if len(pending) == items:
            break
        services.submit_judgment(annotator=annotator, assignment=assignment, data={"choice": "left"})
    last = pending[-1]
    client = Client()
    client.force_login(researcher)

    t0 = time.perf_counter()
    services.submit_judgment(annotator=annotator, assignment=last, data={"choice": "left"})
    t1 = time.perf_counter()
    job = export.start_export(study=study, requested_by=researcher, format="reward")
    job = export.run_export(export_id=job.pk)
    assert job is not None
    t2 = time.perf_counter()
    page = client.get("/runs/new/", {"recipe": "dpo", "dataset": job.path})
    assert page.status_code == 200, page.status_code
    t3 = time.perf_counter()
    form = page.context["form"]
    post = {"recipe": "dpo", "queue": QUEUE, "name": "bench"}
    post.update({k: v for k, v in form.initial.items() if k.startswith("cfg_") and v not in (None, "")})
    answer = client.post("/runs/new/?recipe=dpo", post)
    t4 = time.perf_counter()
    assert answer.status_code == 302, answer.content.decode()[:2000]
    run = Run.objects.get(name="bench")
    # A second "Train on this" in the same process: what a warm web process answers.
    t5 = time.perf_counter()
    client.get("/runs/new/", {"recipe": "dpo", "dataset": job.path})
    t6 = time.perf_counter()
    limits = page.context["sizing"].profile.limits() if page.context["sizing"].profile else {}
    return [
        Row(f"last judgment -> queued run, total ({items} pairs)", f"{t4 - t0:.2f} s"),
        Row("  submit the last judgment", f"{(t1 - t0) * 1000:.0f} ms"),
        Row("  reward export (task body)", f"{(t2 - t1) * 1000:.0f} ms"),
        Row("  Train on this: sized launch form (first in process)", f"{(t3 - t2) * 1000:.0f} ms"),
        Row("  Train on this: sized launch form (warm process)", f"{(t6 - t5) * 1000:.0f} ms"),
        Row("  launch POST (dataset check) -> queued", f"{(t4 - t3) * 1000:.0f} ms"),
        Row("  run", f"#{run.id} {run.status}, limits {limits}"),
    ]


def purge_queue() -> None:
    from arbiter.celery import app

    with app.connection_for_write() as conn:
        try:
            conn.default_channel.queue_purge(QUEUE)
        except Exception as error:  # an embedded broker without the queue: nothing to purge
            print(f"(queue {QUEUE} not purged: {error})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=2, help="completions per prompt and checkpoint")
    parser.add_argument("--items", type=int, default=200, help="pairs in the study of (b)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the sampler (2 on a loaded 2-core machine: OpenMP stalls)",
    )
    parser.add_argument("--parts", default="ab", help="(a) sampling, (b) last judgment -> run")
    parser.add_argument("--db", default=DB_NAME, help="database to create (dropped first) for (b)")
    parser.add_argument("--quick", action="store_true", help="16 prompts x 1, 50 pairs")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.n, args.items = 16, 1, 50
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "a" in args.parts:
            rows += sampling(root, prompts=args.prompts, n=args.n, threads=args.threads)
        if "b" in args.parts:
            from bench_runs import configure_env, recreate_database

            os.environ["ARBITER_RUN_QUEUES"] = QUEUE
            os.environ["ARTIFACT_ROOT"] = str(root / "artifacts")
            env = configure_env("arbiter.settings", args.db)
            recreate_database(env)
            import django

            django.setup()
            from django.test.utils import setup_test_environment

            setup_test_environment()  # the test client then records each response's template context
            try:
                rows += last_judgment_to_run(root, items=args.items)
            finally:
                purge_queue()
    print_table(
        "The loop: Sample into a study (HF backend, CPU) and last judgment -> launched run",
        rows,
        notes=["No budgets (DESIGN.md sets none); on a shared machine the figures are indicative."],
    )


if __name__ == "__main__":
    main()
