#!/usr/bin/env bash
# Run every benchmark in turn; each prints its own table. Used by `make bench` (PostgreSQL + Redis from env).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== engine vs TRL";           $PY bench/bench_engine.py
echo "== run ingest, chart reads, live latency"; $PY bench/bench_runs.py
echo "== annotator loop, import, export";        $PY bench/bench_annotation.py
echo "== large item uploads (HTTP -> worker, 94 MB)"; $PY bench/bench_import.py
