#!/usr/bin/env bash
# One call on the GPU machine (no Rust, no network there): the CUDA build of ciak against the
# diffusers parity fixtures (f32 and bf16 weights), then ciak bench side by side with diffusers'
# baseline (bench_diffusers_wan.py) on the Wan2.1-T2V-1.3B architecture at 480x832, 81 frames,
# bf16, random weights. Results go to $RESULTS (default $OUT, else .gpu/results), at most 8 files.
# Prepare .gpu/ on the build machine first: scripts/gpu-check.sh --prepare (see scripts/README.md).
#
# Settings (environment): PARTS (parity,bench,vae,diffusers: which steps run; split them over two
# calls if one would pass the 10-minute limit), STEPS (2) sampling steps timed, REPS (3) timed
# forwards, TEXT_ENCODER (xxl), SIZE (832x480), FRAMES (81), DEVICE (cuda; `DEVICE=cpu SIZE=64x64
# FRAMES=5 STEPS=1 TEXT_ENCODER=tiny PARTS=parity,bench CIAK_BIN=target/release/ciak` smoke-tests
# the script on any machine).
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
parts=",${PARTS:-parity,bench,vae,diffusers},"
has() { [[ "$parts" == *",$1,"* ]]; }
log="$res/log.txt"; env_txt="$res/env.txt"; summary="$res/summary.md"
: >"$log"
say() { echo "== $*" | tee -a "$log"; }
# Runs a step with a time limit, output to the log and the terminal; returns its exit code.
step() { local limit=$1; shift; say "$*"; timeout "$limit" "$@" 2>&1 | tee -a "$log"; return "${PIPESTATUS[0]}"; }

# The CUDA binary ($bin) and LD_LIBRARY_PATH.
source scripts/gpu-env.sh || { say "no CUDA binary: run scripts/gpu-check.sh --prepare on the build machine"; exit 2; }

{
  date -u; nvidia-smi; echo; uname -a; nproc; free -g
  echo; echo "ldd $bin:"; ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc|not found'
  echo; "$bin" --version; "$bin" doctor
} >"$env_txt" 2>&1

status=0
# 1. Parity: the production loader and pipeline on the tiny fixtures, vs diffusers' CPU f32.
if has parity; then
  step 120 "$bin" bench --parity tests/fixtures --device cpu --dtype f32 || status=1
  step 180 "$bin" bench --parity tests/fixtures --device "$dev" --dtype f32 --json "$res/parity_${dev}_f32.json" || status=1
  step 180 "$bin" bench --parity tests/fixtures --device "$dev" --dtype bf16 --json "$res/parity_${dev}_bf16.json" || status=1
fi

# 2. ciak bench at the baseline's size and dtype.
if has bench; then
  step 420 "$bin" bench --model wan2.1-1.3b --device "$dev" --dtype bf16 --size "$size" --frames "$frames" \
    --steps "$steps" --reps "$reps" --text-encoder "$te" --json "$res/ciak_bench.json" || status=1
fi
if has vae; then
  step 300 "$bin" bench --model wan2.1-1.3b --device "$dev" --dtype bf16 --vae-dtype bf16 --size "$size" \
    --frames "$frames" --steps 1 --warmup 0 --reps 1 --text-encoder skip --json "$res/ciak_bench_vae_bf16.json" || status=1
fi

# 3. diffusers' baseline on the same machine, same call.
if has diffusers; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl >>"$log" 2>&1; then
    w=${size%x*}; h=${size#*x}
    say "diffusers baseline (H=$h W=$w F=$frames)"
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 H=$h W=$w F=$frames timeout 420 python3 .gpu/bench_diffusers_wan.py \
      >"$res/diffusers.jsonl" 2>>"$log" || status=1
    cat "$res/diffusers.jsonl" | tee -a "$log"
  else
    say "cannot install .gpu/whl/*.whl (run --prepare)"; status=1
  fi
fi

# 4. One table of both.
python3 - "$res" "$dev" "$parts" >"$summary" 2>>"$log" <<'PY'
import json, os, sys
res, dev, parts = sys.argv[1], sys.argv[2], sys.argv[3]
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
rows.append((f"text encoder ({c and c['build']['text_encoder_kind']})", s(te and te["seconds"]), "not timed"))
rows.append(("VAE decode f32", s(c and c["stages"]["vae_decode"]["seconds"]), s(diff.get("vae_decode_fp32_s", {}).get("median"))))
rows.append(("VAE decode bf16", s(cv and cv["stages"]["vae_decode"]["seconds"]), s(diff.get("vae_decode_bf16_s", {}).get("median"))))
gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"
rows.append(("peak device memory (diffusers: after the forwards)", c and gib(c["peak_memory"]["device_bytes"]) or "n/a",
             gib(diff["peak_mem_gib"]["v"] * 2**30) if "peak_mem_gib" in diff else "n/a"))
print("\n| stage | ciak | diffusers |\n|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
PY
cat "$summary" | tee -a "$log"
say "exit status $status; results in $res"
exit $status
