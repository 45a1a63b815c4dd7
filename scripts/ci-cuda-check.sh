#!/usr/bin/env bash
# Checks that the `cuda` feature still compiles, on a machine without a GPU or CUDA install: the
# CUDA 13.0 toolkit comes from PyPI wheels through ../shared/gpu/cuda-env.sh (override with
# CUDA_ENV=path), and a stub libcuda links the binary. Separate target dir (CARGO_TARGET_DIR,
# default target/cuda) because the CUDA environment changes RUSTFLAGS.
#
#   scripts/ci-cuda-check.sh           cargo check, every crate and target, with ciak/cuda
#   scripts/ci-cuda-check.sh --build   release binary with cuda, stripped and xz-compressed to
#                                      .gpu/ciak.xz (what scripts/gpu-check.sh runs on the GPU),
#                                      built without the embedded model (CIAK_EMBED_BUILTIN=0)
#
# Cold (empty target dir) most of the time is nvcc compiling candle's kernels; see
# scripts/README.md for measured times.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
start=$(date +%s)
# cuda-env.sh reads cudarc's sources (for the libcuda stub), so the crates must be fetched first.
cargo fetch --locked
env_script=${CUDA_ENV:-../shared/gpu/cuda-env.sh}
[ -f "$env_script" ] || { echo "ci-cuda-check: $env_script not found (set CUDA_ENV)" >&2; exit 2; }
eval "$(bash "$env_script")"
echo "== nvcc: $(nvcc --version | tail -1); CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP; target dir $CARGO_TARGET_DIR"
case "$mode" in
  check|--check)
    cargo check --locked --workspace --all-targets --features ciak/cuda
    ;;
  build|--build)
    # without the embedded built-in model (20 MB): what travels to the GPU machine has a 64 MiB
    # limit, and the repository's models/builtin is there anyway
    CIAK_EMBED_BUILTIN=${CIAK_EMBED_BUILTIN:-0} cargo build --locked --release -p ciak --features cuda
    mkdir -p .gpu
    strip -o .gpu/ciak.stripped "$CARGO_TARGET_DIR/release/ciak"
    xz -T0 -6 -c .gpu/ciak.stripped >.gpu/ciak.xz.part && mv .gpu/ciak.xz.part .gpu/ciak.xz
    rm -f .gpu/ciak.stripped
    ls -l .gpu/ciak.xz
    ;;
  *)
    echo "usage: scripts/ci-cuda-check.sh [--build]" >&2
    exit 2
    ;;
esac
echo "== ci-cuda-check $mode: ok in $(( $(date +%s) - start )) s"
