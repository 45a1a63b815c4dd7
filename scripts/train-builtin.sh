#!/usr/bin/env bash
# Reproduces models/builtin from scratch with the committed settings (train/vae.json,
# train/dit.json): VAE -> latent cache -> DiT + text encoder -> diffusers folder + ciak.json.
#
#   scripts/train-builtin.sh                      fresh run into target/builtin-train
#   scripts/train-builtin.sh --resume             continue it (finished stages are skipped)
#   scripts/train-builtin.sh --resume --max-seconds 3000
#                                                 stop each stage with a checkpoint after ~50 min
#
# Other flags go to `ciak train all` as they are. See docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${CIAK_TRAIN_OUT:-target/builtin-train}

cargo build --release -p ciak
target/release/ciak train all --out "$OUT" "$@"

MODEL="$OUT/dit/model"
if [[ ! -f "$MODEL/ciak.json" ]]; then
    echo "training paused before the end; run again with --resume to continue" >&2
    exit 0
fi

# swap the folder in whole, keeping the README beside the weights
rm -rf models/builtin.new
mkdir -p models
cp -r "$MODEL" models/builtin.new
if compgen -G "models/builtin/*.md" > /dev/null; then cp models/builtin/*.md models/builtin.new/; fi
rm -rf models/builtin
mv models/builtin.new models/builtin
echo "models/builtin updated from $MODEL"

# the binary embeds models/builtin at build time: rebuild, then render one clip as a check
cargo build --release -p ciak
target/release/ciak generate --model builtin "a red circle moves to the right" --seed 1 -o "$OUT/check.mp4" --force
echo "check clip: $OUT/check.mp4"
