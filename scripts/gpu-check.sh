#!/usr/bin/env bash
# One call on the GPU machine (no Rust, no network there): the CUDA build of ciak against the
# diffusers parity fixtures (f32 and bf16 weights), then diffusers' baseline (bench_diffusers_wan.py)
# and ciak bench side by side on the Wan2.1-T2V-1.3B architecture at 480x832, 81 frames, bf16,
# random weights, then the transformer forward by attention block size and frame count (where its
# time goes), then bf16 VAE decodes alone (--decode-only). Each step's peak device memory is read by nvidia-smi.
# Results go to $RESULTS (default $OUT, else .gpu/results), at most 8 files.
# Prepare .gpu/ on the build machine first: scripts/gpu-check.sh --prepare (see scripts/README.md).
#
# Settings (environment): BUDGET (540) seconds for the whole script (each step's limit is cut to
# what is left), PARTS (parity,diffusers,bench,sweep,vae: which steps run, in that order), STEPS (2)
# sampling steps timed, REPS (3) timed forwards, TEXT_ENCODER (xxl), SIZE (832x480), FRAMES (81),
# SWEEP ("81:67108864 81:268435456 81:1073741824 41:268435456": FRAMES:SCORE_ELEMENTS per forward-only
# point), DEVICE (cuda; `DEVICE=cpu SIZE=64x64 FRAMES=5 STEPS=1 TEXT_ENCODER=tiny PARTS=parity,bench,sweep
# SWEEP="5:1024 5:67108864" CIAK_BIN=target/release/ciak` smoke-tests the script on any machine).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  # On the build machine: the stripped, xz-compressed CUDA binary, the diffusers wheel and the
  # baseline script into .gpu/ (git-ignored; name it in the device tool's carry).
  set -e
  bash scripts/ci-cuda-check.sh --build
  mkdir -p .gpu/whl
  python3 -m pip download -q --no-deps diffusers==0.42.1 importlib_metadata -d .gpu/whl
  cp ../shared/gpu/bench_diffusers_wan.py .gpu/
  du -sh .gpu/ciak.xz .gpu/whl .gpu/bench_diffusers_wan.py
  echo "working tree that travels (limit 64 MiB):"
  { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null | tail -1
  du -sb .gpu | awk '{print "plus .gpu:", $1}'
  exit 0
fi

res=${RESULTS:-${OUT:-.gpu/results}}
mkdir -p "$res"
steps=${STEPS:-2}; reps=${REPS:-3}; te=${TEXT_ENCODER:-xxl}; size=${SIZE:-832x480}; frames=${FRAMES:-81}
dev=${DEVICE:-cuda}
parts=",${PARTS:-parity,diffusers,bench,sweep,vae},"
sweep=${SWEEP:-81:67108864 81:268435456 81:1073741824 41:268435456}
has() { [[ "$parts" == *",$1,"* ]]; }
log="$res/log.txt"; summary="$res/summary.md"; mem=/tmp/ciak-gpu-mem.txt
: >"$log"; : >"$mem"
deadline=$((SECONDS + ${BUDGET:-540}))
say() { echo "== [${SECONDS} s] $*" | tee -a "$log"; }
# The device memory in use (MiB, all processes), sampled every 100 ms while a step runs; the peak
# goes to $mem as "NAME PEAK_MIB" (nvidia-smi's figure: the whole process, context and caches).
mem_start() { command -v nvidia-smi >/dev/null && [ "$dev" != cpu ] || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"/tmp/gpumem.$1" 2>/dev/null & mem_pid=$!; }
mem_stop() { [ -n "${mem_pid:-}" ] || return 0; kill "$mem_pid" 2>/dev/null; wait "$mem_pid" 2>/dev/null; mem_pid=
  local peak; peak=$(sort -n "/tmp/gpumem.$1" | tail -1); echo "$1 ${peak:-n/a}" >>"$mem"; say "$1: peak device memory ${peak:-n/a} MiB"; }
# Runs a step (NAME LIMIT CMD...) with a time limit, cut to what is left of BUDGET (the last 15 s
# kept for the summary), output to the log and the terminal; returns its exit code (124: timed out).
step() { local name=$1 limit=$2; shift 2; local left=$((deadline - SECONDS - 15))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then say "skipped (budget spent): $*"; return 124; fi
  say "[limit ${limit} s] $*"; mem_start "$name"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"; local rc=${PIPESTATUS[0]}
  mem_stop "$name"; return "$rc"; }

# The CUDA binary ($bin) and LD_LIBRARY_PATH.
source scripts/gpu-env.sh || { say "no CUDA binary: run scripts/gpu-check.sh --prepare on the build machine"; exit 2; }

{
  date -u; nvidia-smi; echo; uname -a; nproc; free -g
  echo; echo "ldd $bin:"; ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc|not found'
  echo; "$bin" --version; "$bin" doctor
  command -v nvidia-smi >/dev/null && echo "device memory in use before the steps: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits) MiB"
} >>"$log" 2>&1

status=0
# 1. Parity: the production loader and pipeline on the tiny fixtures, vs diffusers' CPU f32.
if has parity; then
  step parity_cpu 120 "$bin" bench --parity tests/fixtures --device cpu --dtype f32 || status=1
  step parity_f32 180 "$bin" bench --parity tests/fixtures --device "$dev" --dtype f32 --json "$res/parity_${dev}_f32.json" || status=1
  step parity_bf16 180 "$bin" bench --parity tests/fixtures --device "$dev" --dtype bf16 --json "$res/parity_${dev}_bf16.json" || status=1
fi

# 2. diffusers' baseline on the same machine, same call (bounded: a few forwards and decodes).
if has diffusers; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl >>"$log" 2>&1; then
    w=${size%x*}; h=${size#*x}
    step diffusers 240 env PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 H="$h" W="$w" F="$frames" \
      python3 .gpu/bench_diffusers_wan.py || status=1
    grep '^{"what"' "$log" >"$res/diffusers.jsonl" || true
  else
    say "cannot install .gpu/whl/*.whl (run --prepare)"; status=1
  fi
fi

# 3. ciak bench at the baseline's size and dtype.
if has bench; then
  step bench 300 "$bin" bench --model wan2.1-1.3b --device "$dev" --dtype bf16 --size "$size" --frames "$frames" \
    --steps "$steps" --reps "$reps" --text-encoder "$te" --json "$res/ciak_bench.json" || status=1
fi

# 4. Where the forward's time goes: the same forward with larger attention blocks (fewer, larger
# matrix products) and at fewer frames (attention grows with tokens squared, the rest linearly).
if has sweep; then
  : >"$res/sweep.jsonl"
  for point in $sweep; do
    f=${point%%:*}; n=${point#*:}
    step "sweep_${f}_$n" 90 "$bin" bench --model wan2.1-1.3b --device "$dev" --dtype bf16 --size "$size" --frames "$f" \
      --forward-only --warmup 1 --reps 3 --text-encoder skip --attention-scores "$n" --json /tmp/sweep.json || { status=1; continue; }
    python3 - "$f" "$n" "$mem" >>"$res/sweep.jsonl" <<'PY'
import json, sys
r = json.load(open("/tmp/sweep.json")); f = r["stages"]["transformer_forward"]
peak = dict(l.split() for l in open(sys.argv[3]) if l.strip()).get(f"sweep_{sys.argv[1]}_{sys.argv[2]}")
print(json.dumps({"frames": r["frames"], "tokens": r["tokens"], "attention_scores": r["attention_score_budget"],
                  "forward_s": f["seconds"], "min_s": f["min_s"], "max_s": f["max_s"], "peak_device_mib": peak}))
PY
  done
fi
if has vae; then
  step vae_bf16 240 "$bin" bench --model wan2.1-1.3b --device "$dev" --dtype bf16 --vae-dtype bf16 --size "$size" \
    --frames "$frames" --decode-only --warmup 1 --reps 2 --text-encoder skip --json "$res/ciak_bench_vae_bf16.json" || status=1
fi

# 5. One table of both.
python3 - "$res" "$dev" "$parts" "$mem" >"$summary" 2>>"$log" <<'PY'
import json, os, sys
res, dev, parts, mem = sys.argv[1:5]
peaks = {}
for line in open(mem):
    if line.strip():
        name, v = line.split()
        peaks[name] = None if v == "n/a" else int(v)
def load(name):
    try:
        with open(os.path.join(res, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
diff = {}
try:
    for line in open(os.path.join(res, "diffusers.jsonl")):
        if line.strip():
            d = json.loads(line); diff[d.pop("what")] = d
except OSError:
    pass
c, cv = load("ciak_bench.json"), load("ciak_bench_vae_bf16.json")
env = diff.get("env", {})
print("# GPU check\n")
if c:
    print(f"ciak {c['ciak_version']}, {c['model']} random weights, {c['dtype']}, {c['width']}x{c['height']}, "
          f"{c['frames']} frames, latent {c['latent_shape']}, {c['tokens']} tokens")
print(f"diffusers: torch {env['torch']}, {env['gpu']}, latent {env['latent']}\n" if env else "diffusers: not run\n")
for name in (f"parity_{dev}_f32.json", f"parity_{dev}_bf16.json") if ",parity," in parts else ():
    p = load(name)
    if not p:
        print(f"- {name}: missing (see log.txt)"); continue
    worst = max(p["checks"], key=lambda k: k["relative_error"] / k["tolerance"])
    print(f"- parity {p['device']} {p['dtype']}: {'PASS' if p['passed'] else 'FAIL'}; worst {worst['name']} "
          f"{worst['relative_error']:.2e} (tolerance {worst['tolerance']:.0e})")
def s(x):
    return "n/a" if x is None else f"{x:.3f} s"
rows = []
fwd = c and c["stages"]["transformer_forward"]["seconds"]
step = c and c["stages"]["sampling"]["per_step_s"]
rows.append(("transformer forward, batch 1", s(fwd), s(diff.get("dit_forward_b1_eager_s", {}).get("median"))))
rows.append(("50 steps with CFG (ciak: 50 x measured step; diffusers: 100 x forward)",
             s(step and 50 * step), s(diff.get("dit_forward_b1_eager_s", {}).get("est_50steps_cfg_s"))))
te = c and c["stages"]["text_encoder"]
# c["stages"]["vae_decode"] is null only in --forward-only runs, which this table does not read
rows.append((f"text encoder ({c and c['build']['text_encoder_kind']})", s(te and te["seconds"]), "not timed"))
rows.append(("VAE decode f32", s(c and c["stages"]["vae_decode"]["seconds"]), s(diff.get("vae_decode_fp32_s", {}).get("median"))))
rows.append(("VAE decode bf16 (ciak: median of 2 after a warm-up)", s(cv and cv["stages"]["vae_decode_only"]["seconds"]),
             s(diff.get("vae_decode_bf16_s", {}).get("median"))))
gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"
mib = lambda m: "n/a" if m is None else f"{m / 1024:.2f} GiB"
rows.append(("peak device memory, nvidia-smi (whole process, whole step)", mib(peaks.get("bench")), mib(peaks.get("diffusers"))))
rows.append(("peak device memory, allocator (diffusers: after the forwards)", "n/a",
             gib(diff["peak_mem_gib"]["v"] * 2**30) if "peak_mem_gib" in diff else "n/a"))
print("\n| stage | ciak | diffusers |\n|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
try:
    sweep = [json.loads(l) for l in open(os.path.join(res, "sweep.jsonl")) if l.strip()]
except OSError:
    sweep = []
if sweep:
    print("\nciak transformer forward (batch 1, bf16) by attention block and frames:\n")
    print("| frames | tokens | score elements per block | forward median (min-max) | peak device memory |\n|---|---|---|---|---|")
    for p in sweep:
        print(f"| {p['frames']} | {p['tokens']} | {p['attention_scores']} | {p['forward_s']:.3f} s ({p['min_s']:.3f}-{p['max_s']:.3f}) "
              f"| {mib(None if p['peak_device_mib'] in (None, 'n/a') else int(p['peak_device_mib']))} |")
PY
cat "$summary" | tee -a "$log"
say "exit status $status; results in $res"
exit $status
