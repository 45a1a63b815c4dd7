#!/usr/bin/env bash
# Reproduces models/builtin from scratch: the staged run that made the shipped model, with the
# committed settings in train/ (see docs/training.md, "The run behind models/builtin").
#
#   scripts/train-builtin.sh          run (or continue) every stage into target/builtin-train,
#                                     then copy the model to models/builtin and render a check clip
#
# Every stage checkpoints; running the script again continues where it stopped (finished stages
# are skipped, a started one resumes bit-identically). Threads per process: CANDLE_NUM_THREADS /
# RAYON_NUM_THREADS (default 2, the build machine's cores).
#
# Stages, with the time each took when the shipped model was made on the 2-core build machine
# (docs/training.md, "The run behind models/builtin"; about 16 h in order, plus 11 min of H200):
#   1. VAE, train/vae-x4.json, steps 1-1500 of its 6000-step schedule (= train/vae-x4-1500)  48 min
#   2. VAE, train/vae-x4-full.json from stage 1: encoder and decoder, 4000 more steps with the
#      object weighting (= train/vae-x4f)                                                1 h 43 min
#   3. `ciak train reduce-vae`: its 8 top principal latent channels (= train/vae-x4f8)     2 min
#   4. VAE, train/vae-x4f8-decoder.json from stage 3: the decoder alone on the 8 channels, so
#      the latent space stays stage 3's                                                  1 h 14 min
#   5. latent cache of 1500 clips of train/world-single-edges-large.json                  10 min
#   6. DiT + text encoder, train/dit-x4r.json, 3000 steps                                1 h 58 min
#   7. the same DiT on, train/dit-x4r2.json (a 6000-step schedule at a lower learning rate,
#      entered at step 3000: a warm restart), steps 3001-4000                            45 min
#   8. a latent cache of 700 clips of the same world, and from stage 7's model a run at batch
#      32, train/dit-x4r7-gpu.json: 1598 steps, clips only, with the motion term     33 s + 7 min 7 s on an H200
#   9. the same run on, train/dit-x4r7b-gpu.json (a 2500-step schedule entered at step 1598:
#      a warm restart), steps 1599-2327                                          3 min 20 s on an H200
#  10. VAE, train/vae-x4f8-decoder2.json from stage 4: the decoder alone again, on 25-frame
#      windows only, objects weighted 7 times, 1800 steps (same latent space, so stages 5-9
#      stand); its decoder replaces stage 4's in the model folder                 1 h 21 min, 1 thread
#  11. VAE, train/vae-x4f8-all.json from stage 10's: encoder and decoder, 4000 steps (a new latent
#      space, = train/vae-x4f8-all-4000)                      3 h 26 min of training, 2 threads
#  12. latent cache of 1000 clips of train/world-single-edges-scenes.json (all four background
#      kinds) with stage 11's VAE                                                         10 min
#  13. DiT from stage 9's model (with stage 10's VAE), train/dit-x4r11.json: coordinate channels,
#      2000 steps on stage 12's cache                                                1 h 20 min
#  14. the same cache grown to 2000 clips (the first 1000 kept)                          10 min
#  15. DiT from stage 13's model, train/dit-x4r13.json: 1000 steps at lr 4e-4 (shipped
#      2026-11-29, fourth session)                                       1 h 25 min, 1 thread
#  16. latent cache of 2000 clips of train/world-single-edges-pinned.json (the horizon and the
#      checkerboard cell pinned) with stage 11's VAE                     26 min, 1 thread beside a run
#  17. DiT from stage 15's model, train/dit-x4r15.json: 1000 steps on stage 16's cache   42 min
#  18. the same cache grown to 4000 clips (the first 2000 kept)                           24 min
#  19. DiT from stage 17's model, train/dit-x4r17.json: 1600 steps at lr 3e-4 (shipped
#      2026-11-29, sixth session)                                       1 h 6 min, 2 threads
#  20. the same cache grown to 6000 clips (the first 4000 kept)                      22.5 min
#  21. DiT from stage 19's model, train/dit-x4r18.json: 1600 steps at lr 2e-4   1 h 3 min
#  22. DiT from stage 21's model, train/dit-x4r19.json: 1000 steps at lr 2e-4, new batches
#      (shipped 2026-11-29, seventh session)                            39 min, 2 threads
# Stages 8 and 9 are 74,000 clips at batch 32: minutes on a GPU (DEVICE=cuda in a build with
# FEATURES=cuda; scripts/gpu-train.sh runs them on the lent GPU machine, which has no Rust), about
# a day on the 2-core build machine (0.76 clips/s at 2 threads).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${CIAK_TRAIN_OUT:-target/builtin-train}
DIT2_STOP=4000   # the step of train/dit-x4r2.json's 6000-step schedule stage 7 stopped at
DIT4_STOP=2327   # the step of train/dit-x4r7b-gpu.json's 2500-step schedule the shipped model stopped at
DEVICE=${DEVICE:-cpu}   # stages 8-9: cuda in a build with FEATURES=cuda
export CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-2} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
features=(); [[ -z "${FEATURES:-}" ]] || features=(--features "$FEATURES")

cargo build --release --locked -p ciak "${features[@]}"
ciak=target/release/ciak

# step of the checkpoint in $1 (0 when there is none)
ckpt_step() {
    local state="$1/checkpoint/state.json"
    if [[ -f "$state" ]]; then grep -o '"step": *[0-9]*' "$state" | head -1 | grep -o '[0-9]*$'; else echo 0; fi
}
config_steps() { grep -o '"steps": *[0-9]*' "$1" | head -1 | grep -o '[0-9]*$'; }

# run_stage DIR TARGET_STEP EXPORTED CMD...: skips when the checkpoint in DIR is at TARGET_STEP
# or past it and the stage's export (the file EXPORTED) is there, adds --resume when there is a
# checkpoint (a run stopped between its last checkpoint and its export just exports)
run_stage() {
    local dir=$1 target=$2 exported=$3
    shift 3
    local at
    at=$(ckpt_step "$dir")
    if ((at >= target)) && [[ -f "$exported" ]]; then
        echo "$dir: at step $at, stage to $target done"
        return
    fi
    if ((at > 0)); then "$@" --resume; else "$@"; fi
}

# cache OUT ARGS...: builds (or continues) the latent cache in OUT with `train latents ARGS`
cache() {
    local out=$1 resume=()
    shift
    [[ -f "$out/cache.json" ]] && resume=(--resume)
    "$ciak" train latents --out "$out" "$@" "${resume[@]}"
}

mkdir -p "$OUT"

# 1-2: the 4x VAE, then the same VAE with moving objects weighted
run_stage "$OUT/vae-a" 1500 "$OUT/vae-a/vae/config.json" "$ciak" train vae --config train/vae-x4.json --out "$OUT/vae-a" --stop-at 1500
run_stage "$OUT/vae-f" "$(config_steps train/vae-x4-full.json)" "$OUT/vae-f/vae/config.json" "$ciak" train vae --config train/vae-x4-full.json \
    --init-from "$OUT/vae-a/vae" --out "$OUT/vae-f"

# 3: 8 latent channels (a 1x4x4 patch of 16 channels is more than a 256-wide token carries)
if [[ ! -f "$OUT/vae-r/config.json" ]]; then
    rm -rf "$OUT/vae-r.new"
    "$ciak" train reduce-vae --vae "$OUT/vae-f/vae" --z-dim 8 --out "$OUT/vae-r.new"
    mv "$OUT/vae-r.new" "$OUT/vae-r"
fi

# 4: the decoder on the 8 channels
run_stage "$OUT/vae-d" "$(config_steps train/vae-x4f8-decoder.json)" "$OUT/vae-d/vae/config.json" "$ciak" train vae \
    --config train/vae-x4f8-decoder.json --init-from "$OUT/vae-r" --out "$OUT/vae-d"

# 5-6: latents (the encoder is stage 3's either way) and the DiT
cache "$OUT/latents" --vae "$OUT/vae-d/vae" --count 1500 --seed 1 --world train/world-single-edges-large.json
run_stage "$OUT/dit" "$(config_steps train/dit-x4r.json)" "$OUT/dit/model/ciak.json" "$ciak" train dit --config train/dit-x4r.json \
    --latents "$OUT/latents" --vae "$OUT/vae-d/vae" --out "$OUT/dit"

# 7: a warm restart of the same run under a longer schedule, in its own folder (so its export is
# never mistaken for stage 6's), started from stage 6's checkpoint
if [[ ! -f "$OUT/dit2/checkpoint/state.json" ]]; then
    rm -rf "$OUT/dit2.new" && mkdir -p "$OUT/dit2.new"
    cp -r "$OUT/dit/checkpoint" "$OUT/dit/tokenizer.json" "$OUT/dit/loss.csv" "$OUT/dit2.new/"
    mv "$OUT/dit2.new" "$OUT/dit2"
fi
run_stage "$OUT/dit2" "$DIT2_STOP" "$OUT/dit2/model/ciak.json" "$ciak" train dit --config train/dit-x4r2.json \
    --latents "$OUT/latents" --vae "$OUT/vae-d/vae" --out "$OUT/dit2" --stop-at "$DIT2_STOP"

# 8: from stage 7's model, clips only at batch 32 with the motion term, on a cache of 700 clips
# (what the GPU machine encoded in its budget)
[[ -f "$OUT/dit2/model/ciak.json" ]] || { echo "no exported model in $OUT/dit2/model" >&2; exit 1; }
cache "$OUT/latents-700" --vae "$OUT/vae-d/vae" --count 700 --seed 1 --world train/world-single-edges-large.json \
    --device "$DEVICE"
if [[ -f "$OUT/dit3/checkpoint/state.json" ]]; then init=(); else init=(--init-from "$OUT/dit2/model"); fi
run_stage "$OUT/dit3" "$(config_steps train/dit-x4r7-gpu.json)" "$OUT/dit3/model/ciak.json" "$ciak" train dit \
    --config train/dit-x4r7-gpu.json "${init[@]}" --latents "$OUT/latents-700" --vae "$OUT/vae-d/vae" --out "$OUT/dit3" \
    --device "$DEVICE"

# 9: a warm restart of stage 8's run under a longer schedule, in its own folder as stage 7
if [[ ! -f "$OUT/dit4/checkpoint/state.json" ]]; then
    rm -rf "$OUT/dit4.new" && mkdir -p "$OUT/dit4.new"
    cp -r "$OUT/dit3/checkpoint" "$OUT/dit3/tokenizer.json" "$OUT/dit3/loss.csv" "$OUT/dit4.new/"
    mv "$OUT/dit4.new" "$OUT/dit4"
fi
run_stage "$OUT/dit4" "$DIT4_STOP" "$OUT/dit4/model/ciak.json" "$ciak" train dit --config train/dit-x4r7b-gpu.json \
    --latents "$OUT/latents-700" --vae "$OUT/vae-d/vae" --out "$OUT/dit4" --stop-at "$DIT4_STOP" --device "$DEVICE"

MODEL="$OUT/dit4/model"
[[ -f "$MODEL/ciak.json" ]] || { echo "no exported model in $MODEL" >&2; exit 1; }

# 10: a second decoder fine-tune; the encoder and the latent statistics stay stage 4's
run_stage "$OUT/vae-d2" "$(config_steps train/vae-x4f8-decoder2.json)" "$OUT/vae-d2/vae/config.json" "$ciak" train vae \
    --config train/vae-x4f8-decoder2.json --init-from "$OUT/vae-d/vae" --out "$OUT/vae-d2"

# stage 9's DiT with stage 10's decoder: the model stage 13 starts from
if [[ ! -f "$OUT/model10/ciak.json" ]]; then
    rm -rf "$OUT/model10.new"
    cp -r "$MODEL" "$OUT/model10.new"
    rm -rf "$OUT/model10.new/vae"
    cp -r "$OUT/vae-d2/vae" "$OUT/model10.new/vae"
    mv "$OUT/model10.new" "$OUT/model10"
fi

# 11: encoder and decoder on, a new latent space
run_stage "$OUT/vae-all" "$(config_steps train/vae-x4f8-all.json)" "$OUT/vae-all/vae/config.json" "$ciak" train vae \
    --config train/vae-x4f8-all.json --init-from "$OUT/vae-d2/vae" --out "$OUT/vae-all"

# dit_stage DIR CONFIG FROM LATENTS: a DiT run on LATENTS in stage 11's latent space, started
# from the model folder FROM (a stage that has a checkpoint resumes it instead)
dit_stage() {
    local dir=$1 config=$2 from=$3 latents=$4 init=()
    [[ -f "$dir/checkpoint/state.json" ]] || init=(--init-from "$from")
    run_stage "$dir" "$(config_steps "$config")" "$dir/model/ciak.json" "$ciak" train dit \
        --config "$config" "${init[@]}" --latents "$latents" --vae "$OUT/vae-all/vae" --out "$dir"
}

# grown_cache FROM TO CACHE-ARGS...: a copy of the cache FROM grown into TO, so FROM stays as the
# stage before saw it
grown_cache() {
    local from=$1 to=$2
    shift 2
    [[ -f "$to/cache.json" ]] && return
    rm -rf "$to.new" && cp -r "$from" "$to.new"
    cache "$to.new" "$@"
    mv "$to.new" "$to"
}

# 12-13: the scenes world in that latent space, and the DiT on it with coordinate channels
cache "$OUT/latents-scenes" --vae "$OUT/vae-all/vae" --count 1000 --seed 2 --world train/world-single-edges-scenes.json
dit_stage "$OUT/dit5" train/dit-x4r11.json "$OUT/model10" "$OUT/latents-scenes"

# 14-15: twice the clips, then more scene steps at a higher rate
grown_cache "$OUT/latents-scenes" "$OUT/latents-scenes2k" --vae "$OUT/vae-all/vae" --count 2000 --seed 2 \
    --world train/world-single-edges-scenes.json
dit_stage "$OUT/dit6" train/dit-x4r13.json "$OUT/dit5/model" "$OUT/latents-scenes2k"

# 16-17: the world with its background layouts pinned, and the DiT on it
pinned=(--vae "$OUT/vae-all/vae" --seed 4 --world train/world-single-edges-pinned.json)
cache "$OUT/latents-pinned" "${pinned[@]}" --count 2000
dit_stage "$OUT/dit7" train/dit-x4r15.json "$OUT/dit6/model" "$OUT/latents-pinned"

# 18-19: twice the clips, then 1600 more steps
grown_cache "$OUT/latents-pinned" "$OUT/latents-pinned4k" "${pinned[@]}" --count 4000
dit_stage "$OUT/dit8" train/dit-x4r17.json "$OUT/dit7/model" "$OUT/latents-pinned4k"

# 20-22: half as many clips again, then 2600 more steps in two runs
grown_cache "$OUT/latents-pinned4k" "$OUT/latents-pinned6k" "${pinned[@]}" --count 6000
dit_stage "$OUT/dit9" train/dit-x4r18.json "$OUT/dit8/model" "$OUT/latents-pinned6k"
dit_stage "$OUT/dit10" train/dit-x4r19.json "$OUT/dit9/model" "$OUT/latents-pinned6k"

# swap the folder in whole
MODEL="$OUT/dit10/model"
[[ -f "$MODEL/ciak.json" ]] || { echo "no exported model in $MODEL" >&2; exit 1; }
rm -rf models/builtin.new
mkdir -p models
cp -r "$MODEL" models/builtin.new
rm -rf models/builtin
mv models/builtin.new models/builtin
echo "models/builtin updated from $MODEL"

# the binary embeds models/builtin at build time: rebuild, then render one clip as a check
cargo build --release --locked -p ciak "${features[@]}"
"$ciak" generate "a red ball moves to the right on a blue background" --seed 1 -o "$OUT/check.mp4" --force
echo "check clip: $OUT/check.mp4"
