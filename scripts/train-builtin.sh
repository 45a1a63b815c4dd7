#!/usr/bin/env bash
# Reproduces models/builtin from scratch: the staged run that made the shipped model, with the
# committed settings in train/ (see docs/training.md, "The run behind models/builtin").
#
#   scripts/train-builtin.sh          run (or continue) every stage into target/builtin-train,
#                                     then copy the model to models/builtin and render a check clip
#
# Every stage checkpoints; running the script again continues where it stopped (finished stages
# are skipped, a started one resumes bit-identically). One thread per process, as the shipped
# run (CANDLE_NUM_THREADS / RAYON_NUM_THREADS may be set to override).
#
# Stages:
#   1. VAE, train/vae.json: 1500 steps on 64x64 crops of 9-frame windows + single frames
#   2. latent cache of 1000 clips with that VAE            -> latents-stage1
#   3. DiT + text encoder, train/dit.json, steps 1-STAGE1_DIT_STEPS on those latents
#   4. VAE, train/vae-stage2.json: steps 1501-2500, lower learning rate
#   5. VAE, train/vae-stage3.json: steps 2501-3950 on full 25-frame windows (the causal cache's
#      long-range behaviour, which 9-frame windows never exercise)
#   6. latent cache of the same 1000 clips with the final VAE -> latents
#   7. DiT + text encoder, train/dit-stage2.json: steps STAGE1_DIT_STEPS+1 to 3500 on the final
#      latents (its cosine schedule runs over 4000 steps; the shipped run stopped at 3500)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${CIAK_TRAIN_OUT:-target/builtin-train}
STAGE1_DIT_STEPS=2000
export CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-1} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}

cargo build --release --locked -p ciak
ciak=target/release/ciak

# step of the checkpoint in $1 (0 when there is none)
ckpt_step() {
    local state="$1/checkpoint/state.json"
    if [[ -f "$state" ]]; then grep -o '"step": *[0-9]*' "$state" | head -1 | grep -o '[0-9]*$'; else echo 0; fi
}

# run_stage DIR TARGET_STEP CMD...: skips when the checkpoint in DIR is at TARGET_STEP or past
# it, adds --resume when there is a checkpoint
run_stage() {
    local dir=$1 target=$2
    shift 2
    local at
    at=$(ckpt_step "$dir")
    if ((at >= target)); then
        echo "$dir: at step $at, stage to $target done"
        return
    fi
    if ((at > 0)); then "$@" --resume; else "$@"; fi
}

latents() {
    local vae=$1 out=$2
    if [[ -f "$out/cache.json" ]]; then
        "$ciak" train latents --vae "$vae" --count 1000 --seed 1 --out "$out" --resume
    else
        "$ciak" train latents --vae "$vae" --count 1000 --seed 1 --out "$out"
    fi
}

mkdir -p "$OUT"
config_steps() { grep -o '"steps": *[0-9]*' "$1" | head -1 | grep -o '[0-9]*$'; }

# 1-2: first VAE and the latents the DiT starts on (kept beside the run: stage 4 re-exports)
run_stage "$OUT/vae" "$(config_steps train/vae.json)" "$ciak" train vae --config train/vae.json --out "$OUT/vae" --stop-at "$(config_steps train/vae.json)"
if [[ ! -f "$OUT/vae-stage1/config.json" ]]; then
    rm -rf "$OUT/vae-stage1" && cp -r "$OUT/vae/vae" "$OUT/vae-stage1"
fi
latents "$OUT/vae-stage1" "$OUT/latents-stage1"

# 3: DiT on the first latents
run_stage "$OUT/dit" "$STAGE1_DIT_STEPS" "$ciak" train dit --config train/dit.json --latents "$OUT/latents-stage1" \
    --vae "$OUT/vae-stage1" --out "$OUT/dit" --stop-at "$STAGE1_DIT_STEPS"

# 4-5: the VAE goes on, then learns whole 25-frame clips
run_stage "$OUT/vae" 2500 "$ciak" train vae --config train/vae-stage2.json --out "$OUT/vae" --stop-at 2500
run_stage "$OUT/vae" "$(config_steps train/vae-stage3.json)" "$ciak" train vae --config train/vae-stage3.json --out "$OUT/vae"

# 6-7: final latents, DiT to the end
latents "$OUT/vae/vae" "$OUT/latents"
run_stage "$OUT/dit" 3500 "$ciak" train dit --config train/dit-stage2.json --latents "$OUT/latents" --stop-at 3500 \
    --vae "$OUT/vae/vae" --out "$OUT/dit"

MODEL="$OUT/dit/model"
[[ -f "$MODEL/ciak.json" ]] || { echo "no exported model in $MODEL" >&2; exit 1; }

# swap the folder in whole
rm -rf models/builtin.new
mkdir -p models
cp -r "$MODEL" models/builtin.new
rm -rf models/builtin
mv models/builtin.new models/builtin
echo "models/builtin updated from $MODEL"

# the binary embeds models/builtin at build time: rebuild, then render one clip as a check
cargo build --release --locked -p ciak
"$ciak" generate "a red ball moves to the right on a blue background" --seed 1 -o "$OUT/check.mp4" --force
echo "check clip: $OUT/check.mp4"
