#!/usr/bin/env bash
# Run every benchmark in turn; each prints its own table (measure, result, budget, met, command).
# Used by `make bench` (PostgreSQL + Redis from DATABASE_URL / REDIS_URL). `--quick` (make bench
# BENCH_FLAGS=--quick) shortens each bench to a smoke run of a few minutes in all; its figures are
# not the README's. Each bench is bounded by a timeout so the whole stays under ~15 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
QUICK=""
[[ "${1:-}" == "--quick" ]] && QUICK="--quick"
failed=()
bench() {  # bench NAME SECONDS ARGS...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=30 "$limit" $PY "$@" $QUICK || failed+=("$name (exit $?)")
  echo "   ($name: $((SECONDS - t0)) s)"
}
start=$SECONDS
bench "engine vs TRL (GRPO with/without the zero-advantage shortcut, DPO)" 300 bench/bench_engine.py
bench "LoRA vs full fine-tuning (peak memory, step time; SFT and DPO)" 600 bench/bench_lora.py
bench "run ingest (synchronous_commit off/on; in order, out of order, re-sent), chart reads, live latency" 240 bench/bench_runs.py
bench "annotator loop at 1/8/32 annotators and on the framework-free floor, import, export" 300 bench/bench_annotation.py --floor
bench "SDK cost, ingest through the SDK, history" 180 bench/bench_sdk.py
bench "large item uploads (HTTP -> worker, 94 MB)" 420 bench/bench_import.py
bench "the loop: Sample into a study (HF, CPU) throughput; last judgment -> launched run" 240 bench/bench_loop.py
bench "artifact store MB/s (local vs S3-compatible server), remote-worker launch latency" 300 bench/bench_artifacts.py
# Side by side with another system, installed by the script into its own venv under var/bench/ (needs PyPI
# the first time); these add up to ~15 minutes at the default sizes (MLflow's ingest is the slow part).
bench "beside MLflow: ingest through each side's client, full history of one key" 1200 bench/bench_mlflow.py
bench "beside Label Studio: the annotator loop at 32 annotators, no think time and 1-3 s" 900 bench/bench_labelstudio.py
echo "== all benches: $((SECONDS - start)) s"
if ((${#failed[@]})); then
  printf 'failed or timed out: %s\n' "${failed[@]}"
  exit 1
fi
