#!/usr/bin/env bash
# Run every benchmark in bench/ in turn; each prints its own table. Used by `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
for script in bench/bench_*.py; do
  echo "== $script"
  .venv/bin/python "$script" "$@"
done
