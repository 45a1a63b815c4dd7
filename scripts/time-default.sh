#!/usr/bin/env bash
# Times the default clip: `ciak generate "PROMPT"` with no other flag (the built-in model and its
# defaults: 224x128, 25 frames at 12 fps, 12 steps with guidance 3), as a whole process, model load
# and MP4 writing included. One warm-up run first (it extracts the built-in model into the cache
# once, as a user's first run does), then RUNS counted runs; prints each run, the median, and the
# per-stage median from the recipe sidecars.
#
#   scripts/time-default.sh                 # 5 runs, all cores
#   RUNS=9 THREADS=2 scripts/time-default.sh
#   PROMPT="a blue square moves up" scripts/time-default.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
PROMPT=${PROMPT:-"a red ball moves to the right on a blue background"}
if [[ -n "${THREADS:-}" ]]; then
    export CANDLE_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
fi

cargo build --release --locked -p ciak >&2
bin=target/release/ciak
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "machine: $(nproc) cores ($cpu), load average $(cut -d' ' -f1-3 /proc/loadavg), threads ${THREADS:-all}"
echo "command: ciak generate \"$PROMPT\""

"$bin" generate "$PROMPT" -o "$out/warmup.mp4" >/dev/null 2>&1 || {
    "$bin" generate "$PROMPT" -o "$out/warmup.mp4"
    exit 1
}

for i in $(seq 1 "$RUNS"); do
    /usr/bin/time -f '%e %U %S %M' -o "$out/time-$i" "$bin" generate "$PROMPT" -o "$out/clip-$i.mp4" >/dev/null 2>&1
    read -r wall user sys rss <"$out/time-$i"
    printf 'run %d: %6.2f s wall  %6.2f s user  %5.2f s sys  %6.0f MB peak\n' "$i" "$wall" "$user" "$sys" "$((rss / 1024))"
done

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "median wall: $(cat "$out"/time-* | cut -d' ' -f1 | median) s over $RUNS runs"

# per-stage medians from the recipes (ciak's own timings inside the process)
stages=$(grep -o '"stage": *"[^"]*"' "$out/clip-1.json" | sed 's/.*"\([^"]*\)"$/\1/')
for s in $stages; do
    v=$(for f in "$out"/clip-*.json; do
        tr -d '\n ' <"$f" | grep -o "\"stage\":\"$s\",\"seconds\":[0-9.e-]*" | sed 's/.*://'
    done | median)
    printf '  %-12s %6.2f s (median)\n' "$s" "$v"
done
