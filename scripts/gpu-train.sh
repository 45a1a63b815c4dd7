#!/usr/bin/env bash
# One call on the GPU machine: trains the built-in model's DiT there, inside a fixed time budget,
# and brings the exported model back. The steps, in order:
#   1. parity of the CUDA build on the fixtures (f32 and bf16 vs diffusers' CPU f32), a smoke
#      test that the GPU path computes what the CPU one does before minutes go into training;
#   2. the latent cache: CLIPS training clips encoded with the VAE on the GPU;
#   3. a short probe run (PROBE steps) that measures steps per second at the config's batch;
#   4. the run itself from scratch, its `steps` set so that the cosine schedule ends inside the
#      budget (the config actually used is saved beside the model, for an exact rerun);
#   5. a check clip generated on the GPU with the exported model;
#   6. the model folder, loss.csv and the config packed as model.tar.xz, split in 15 MiB parts
#      (the device tool brings back files of at most 16 MiB).
# Results go to $RESULTS (default $OUT, else .gpu/results).
#
# RESUME=DIR continues a run from elsewhere instead of starting one: DIR holds a checkpoint's
# state.json and its EMA weights (bf16 is enough: `cargo run --release -p ciak-train --example
# checkpoint_bf16 -- target/dit-x4/checkpoint .gpu/ckpt`, 15 MB). The model starts from the EMA
# weights with AdamW afresh (`train dit --resume --fresh-optimizer`), CONFIG's schedule is kept as
# it is (default train/dit-x4t-gpu-resume.json: the CPU run's 40,000-step cosine at batch 32) and
# the run stops at the budget. What comes back is the checkpoint (model and EMA in f32, no
# optimizer state) as checkpoint.tar.xz parts; continue it with --resume --fresh-optimizer.
#
# Prepare on the build machine: scripts/ci-cuda-check.sh --build (the CUDA binary, .gpu/ciak.xz)
# and copy the trained VAE folder to .gpu/vae (see scripts/README.md). Settings (environment):
# BUDGET (540) seconds from start to the packed model, CONFIG (train/dit-x4t-gpu.json), VAE
# (.gpu/vae), CLIPS (2000), WORLD (a world file for the latent cache, as `train latents --world`
# takes; e.g. CONFIG=train/dit-x4r.json WORLD=train/world-single-edges-large.json with VAE a copy
# of train/vae-x4f8), SPREAD (0.25), AMOUNT_SPREAD (1), PROBE (40), PARITY (1; 0 skips step 1),
# LATENT_SECONDS (150), PROMPT (the check clip's), INIT_FROM (an exported model folder the run
# starts from, `train dit --init-from`; e.g. models/builtin with CONFIG=train/dit-x4r7-gpu.json), DEVICE (cuda;
# `DEVICE=cpu CIAK_BIN=target/release/ciak` with a small CONFIG, CLIPS and BUDGET smoke-tests it here).
# Join the parts here: cat model.tar.xz.part-* | xz -dc | tar -x -C DIR
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
deadline=$((t0 + ${BUDGET:-540}))
resume=${RESUME:-}
if [ -n "$resume" ]; then config=${CONFIG:-train/dit-x4t-gpu-resume.json}; else config=${CONFIG:-train/dit-x4t-gpu.json}; fi
vae=${VAE:-.gpu/vae}
clips=${CLIPS:-2000}
probe=${PROBE:-40}
dev=${DEVICE:-cuda}
prompt=${PROMPT:-a red ball moves to the right on a blue background}
res=${RESULTS:-${OUT:-.gpu/results}}
work=${WORK:-/tmp/ciak-gpu-train}
mkdir -p "$res" "$work"
log="$res/log.txt"
: >"$log"
say() { echo "== [$(($(date +%s) - t0)) s] $*" | tee -a "$log"; }
step() { local limit=$1; shift; say "$*"; timeout "$limit" "$@" 2>&1 | tee -a "$log"; return "${PIPESTATUS[0]}"; }
left() { echo $((deadline - $(date +%s))); }

source scripts/gpu-env.sh || { say "no CUDA binary: run scripts/ci-cuda-check.sh --build on the build machine"; exit 2; }
[ -f "$vae/config.json" ] || { say "no trained VAE at $vae (copy one there on the build machine)"; exit 2; }
[ -z "$resume" ] || [ -f "$resume/state.json" -a -f "$resume/ema.safetensors" ] || { say "RESUME=$resume holds no state.json and ema.safetensors"; exit 2; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; "$bin" --version; } 2>&1 | tee -a "$log"

# 1. parity (a broken GPU path stops here, before the training)
if [ "${PARITY:-1}" = 1 ]; then
  step 90 "$bin" bench --parity tests/fixtures --device "$dev" --dtype f32 --json "$res/parity_cuda_f32.json" || exit 1
  step 90 "$bin" bench --parity tests/fixtures --device "$dev" --dtype bf16 --json "$res/parity_cuda_bf16.json"
fi

# 2. latents: if the first 20 s show that CLIPS would take more than LATENT_SECONDS (150), the
# build starts over with as many clips as fit in that time
lat=$work/latents
latents() {
  say "$bin train latents --count $1"
  # a world file sets its own spreads, which SPREAD / AMOUNT_SPREAD override only when given
  local world=(--placement-spread "${SPREAD:-0.25}" --amount-spread "${AMOUNT_SPREAD:-1}")
  if [ -n "${WORLD:-}" ]; then
    world=(--world "$WORLD" ${SPREAD:+--placement-spread "$SPREAD"} ${AMOUNT_SPREAD:+--amount-spread "$AMOUNT_SPREAD"})
  fi
  "$bin" train latents --device "$dev" --vae "$vae" --count "$1" --seed 1 "${world[@]}" --out "$2"
}
if [ -f "$lat/cache.json" ]; then
  say "reusing the latent cache in $lat (an earlier call on this machine)"
  : >"$work/latents.log"
  pid=
else
  latents "$clips" "$lat" >"$work/latents.log" 2>&1 &
  pid=$!
  sleep 20
fi
lrate=$(grep -o '[0-9.]* clips/s' "$work/latents.log" | tail -1 | cut -d' ' -f1)
lrate=${lrate:-1}  # no progress line yet: slow
max_s=${LATENT_SECONDS:-150}
if [ -z "$pid" ]; then
  :
elif kill -0 $pid 2>/dev/null && [ -n "$lrate" ] && python3 -c "import sys; sys.exit(0 if $clips / $lrate > $max_s else 1)"; then
  kill $pid; wait $pid 2>/dev/null
  clips=$(python3 -c "print(max(64, int($lrate * ($max_s - 20))))")
  say "latents at $lrate clips/s: starting over with $clips clips"
  lat=$work/latents-$clips
  latents "$clips" "$lat" >>"$work/latents.log" 2>&1 || { cat "$work/latents.log" >>"$log"; exit 1; }
else
  wait $pid || { cat "$work/latents.log" >>"$log"; exit 1; }
fi
grep -v '^latents: [0-9]' "$work/latents.log" | tee -a "$log"

# 3. the probe: steps per second from loss.csv (seconds of training per row), first rows skipped
# (without the text pretraining: the DiT's pace is what it measures)
rm -rf "$work/probe"
# copy_config SRC DST [STEPS] [probe]: the config where the run reads it, with init_from made
# absolute (the trainer takes it from the config's folder, which is now $work) and, for the probe,
# without the text pretraining
copy_config() {
  python3 - "$@" <<'EOF'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
c = json.load(open(src))
if c.get("init_from"):
    c["init_from"] = os.path.abspath(os.path.join(os.path.dirname(src), c["init_from"]))
if len(sys.argv) > 3 and sys.argv[3] != "-":
    c["steps"] = int(sys.argv[3])
if len(sys.argv) > 4:
    c.pop("text_pretrain", None)
json.dump(c, open(dst, "w"), indent=1)
EOF
}
copy_config "$config" "$work/probe-config.json" - probe || exit 1
# INIT_FROM: an exported model folder the run starts from (`train dit --init-from`)
init_args=(); [ -z "${INIT_FROM:-}" ] || init_args=(--init-from "$(realpath "$INIT_FROM")")
step 120 "$bin" train dit --device "$dev" --config "$work/probe-config.json" --latents "$lat" --vae "$vae" --out "$work/probe" \
  --stop-at "$probe" --log-every 10 "${init_args[@]}" || exit 1
rate=$(python3 - "$work/probe/loss.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
a, b = rows[len(rows) // 4], rows[-1]
print(f"{(int(b['step']) - int(a['step'])) / (float(b['seconds']) - float(a['seconds'])):.3f}")
EOF
) || exit 1
run=$work/run
rm -rf "$run"
if [ -n "$resume" ]; then
  # a continued run keeps its schedule and stops at the budget
  say "probe: $rate steps/s; continuing the run in $resume"
  copy_config "$config" "$work/config.json" || exit 1
  mkdir -p "$run/checkpoint"
  cp "$resume/state.json" "$resume/ema.safetensors" "$run/checkpoint/"
  cp "$resume/ema.safetensors" "$run/checkpoint/model.safetensors"
  continue_args=(--resume --fresh-optimizer)
else
  # 45 s kept for the export, the check clip and the packing; 5% for checkpoints and slack
  steps=$(python3 -c "print(max(100, int($rate * ($(left) - 45) * 0.95)))")
  say "probe: $rate steps/s; training $steps steps"
  copy_config "$config" "$work/config.json" "$steps" || exit 1
  continue_args=("${init_args[@]}")
fi

# 4. the run (a checkpoint and an export of what there is if the budget runs out first)
max_s=$(( $(left) - 40 )); [ "$max_s" -ge 10 ] || max_s=10
step $(( max_s + 70 )) "$bin" train dit --device "$dev" --config "$work/config.json" --latents "$lat" --vae "$vae" \
  --out "$run" --max-seconds "$max_s" --log-every 200 "${continue_args[@]}"
if [ ! -f "$run/model/ciak.json" ]; then
  last=$(tail -1 "$run/loss.csv" | cut -d, -f1)
  step 60 "$bin" train dit --device "$dev" --config "$work/config.json" --latents "$lat" --vae "$vae" \
    --out "$run" --resume --stop-at "$last"
fi
cp "$run/loss.png" "$res/" 2>/dev/null

# 5. a check clip
step 60 "$bin" generate "$prompt" --model "$run/model" --device "$dev" -o "$res/check.mp4" --force
mv "$res/check.json" "$run/model/" 2>/dev/null

# 6. pack
say "packing"
if [ -n "$resume" ]; then
  # the checkpoint without its optimizer part (model + EMA, f32), the logs and parity beside it;
  # only the parts, log.txt and check.mp4 come back (at most 8 files)
  cp "$run/loss.csv" "$work/config.json" "$run/loss.png" "$res"/parity_cuda_*.json "$run/checkpoint/" 2>/dev/null
  rm -f "$res"/parity_cuda_*.json "$res/loss.png"
  tar -C "$run" -cf - --exclude optim.safetensors checkpoint | xz -T0 -6 >"$work/checkpoint.tar.xz" &&
    split -b 15M -d "$work/checkpoint.tar.xz" "$res/checkpoint.tar.xz.part-"
else
  cp "$run/loss.csv" "$work/config.json" "$run/model/" 2>/dev/null
  tar -C "$run" -cf - model | xz -T0 -6 >"$work/model.tar.xz" && split -b 15M -d "$work/model.tar.xz" "$res/model.tar.xz.part-"
fi
ls -l "$res" | tee -a "$log"
say "done"
