#!/usr/bin/env bash
# Per-module CPU times of ciak and diffusers on the same tiny checkpoint, same machine, same run;
# writes docs/module-times.md. Needs the fixture venv (tests/fixtures/README.md) at .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
# THREADS=1 gives steadier figures on a busy machine (thread pools spin-wait under load).
threads=${THREADS:-$(nproc)}
tmp=$(mktemp -d)
"$py" scripts/diffusers_module_times.py tests/fixtures "$tmp/diffusers.json" "$threads"
RAYON_NUM_THREADS=$threads cargo run --release -q -p ciak-engine --example module_times -- tests/fixtures "$tmp/diffusers.json" docs/module-times.md
rm -rf "$tmp"
