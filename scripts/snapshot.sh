#!/usr/bin/env bash
# Looks at a DiT run while it trains: copies its last checkpoint, exports that step as a model
# folder (the run itself goes on untouched), then runs the two measures docs/training.md quotes:
# `caption_probe` (x0 error by noise level, caption and latent frame) and `ciak eval` on the first
# LIMIT held-out prompts (per-attribute accuracy, flicker, contact sheet).
#
#   scripts/snapshot.sh RUN_DIR CONFIG LATENTS VAE_DIR OUT [LIMIT]
#   scripts/snapshot.sh target/dit-x4t train/dit-x4ti.json target/lat-x4 target/vae-x4o/vae target/snap-11000 12
#
# VAE_DIR is the VAE the model ships with (its encoder must be the one that made LATENTS; a
# decoder fine-tune of it is fine). OUT gets the checkpoint copy, OUT/model, OUT/probe.txt and
# OUT/eval/ (report.md, results.json, contact_sheet.png). LIMIT 0 skips the eval. THREADS
# (default 1) is the thread count, so a training run keeps the rest of the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 5 ]]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi
run=$1 config=$2 latents=$3 vae=$4 out=$5 limit=${6:-12}
export CANDLE_NUM_THREADS=${THREADS:-1} RAYON_NUM_THREADS=${THREADS:-1}
[[ -f "$run/checkpoint/state.json" ]] || { echo "no checkpoint in $run (expected $run/checkpoint/state.json)" >&2; exit 1; }
[[ -e "$out" ]] && { echo "$out exists; pick a new folder" >&2; exit 1; }

cargo build --release --locked -p ciak >&2
cargo build --release --locked -p ciak-train --example caption_probe >&2

# the checkpoint folder is replaced atomically at each save: copy it, then check the copy is whole
mkdir -p "$out"
cp -r "$run/checkpoint" "$run/tokenizer.json" "$run/config.json" "$run/loss.csv" "$out/"
step=$(sed -n 's/^ *"step": \([0-9]*\),$/\1/p' "$out/checkpoint/state.json" | head -1)
[[ -n "$step" ]] || { echo "could not read the step from $out/checkpoint/state.json" >&2; exit 1; }
echo "== step $step: exporting $out/model" >&2
target/release/ciak train dit --config "$config" --latents "$latents" --vae "$vae" --out "$out" --resume \
    --stop-at "$step" >&2

echo "== caption_probe -> $out/probe.txt" >&2
target/release/examples/caption_probe "$out/model" 8 >"$out/probe.txt"
sed -n '4,10p' "$out/probe.txt"

if [[ "$limit" != 0 ]]; then
    echo "== ciak eval --limit $limit -> $out/eval" >&2
    target/release/ciak eval --model "$out/model" --limit "$limit" --out "$out/eval" | tail -8
fi
