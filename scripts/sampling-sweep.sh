#!/usr/bin/env bash
# Scores one model under several sampling settings (`ciak eval` once per setting and seed) and
# prints one table row per setting: single-object colour / shape / motion / background and the
# two-object columns averaged over seeds, with flicker. The figures of docs/eval.md, "Sampling
# settings of the third model".
#
#   scripts/sampling-sweep.sh                                  # the table of docs/eval.md
#   SETTINGS="g3|--guidance 3;g5|--guidance 5" SEEDS="0 100" scripts/sampling-sweep.sh
#   MODEL=target/run/model PROMPTS=eval/prompts.json LANES=2 scripts/sampling-sweep.sh
#
# SETTINGS: ';'-separated NAME|FLAGS pairs (FLAGS are passed to `ciak eval`). LANES evals run at
# once, each on one thread (CANDLE_NUM_THREADS=1). Output: OUT/NAME-sSEED/ per eval and
# OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-builtin}
PROMPTS=${PROMPTS:-eval/prompts-single-plain.json}
SEEDS=${SEEDS:-"0 100"}
LANES=${LANES:-2}
OUT=${OUT:-target/sampling-sweep}
SETTINGS=${SETTINGS:-"default|;g2|--guidance 2;g4|--guidance 4;g5|--guidance 5;g3-below09|--guidance-below 0.9;g3-20steps|--steps 20"}

cargo build --release --locked -p ciak >&2
bin=target/release/ciak
mkdir -p "$OUT"
export CANDLE_NUM_THREADS=1 RAYON_NUM_THREADS=1

jobs_file=$(mktemp)
trap 'rm -f "$jobs_file"' EXIT
IFS=';' read -r -a settings <<<"$SETTINGS"
for entry in "${settings[@]}"; do
    name=${entry%%|*}
    flags=${entry#*|}
    for seed in $SEEDS; do
        printf '%s\t%s\t%s\n' "$name" "$seed" "$flags" >>"$jobs_file"
    done
done

run_one() {
    local name=$1 seed=$2 flags=$3 dir="$OUT/$1-s$2"
    if [[ -f "$dir/results.json" ]]; then
        return 0
    fi
    # shellcheck disable=SC2086
    "$bin" eval --model "$MODEL" --prompts "$PROMPTS" --seed "$seed" --out "$dir.tmp" $flags \
        >"$OUT/$name-s$seed.log" 2>&1 </dev/null || {
        echo "eval $name seed $seed failed: see $OUT/$name-s$seed.log" >&2
        return 1
    }
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
}

# Lane k takes jobs k, k + LANES, k + 2 LANES, ...
for lane in $(seq 0 $((LANES - 1))); do
    (
        awk -v l="$lane" -v n="$LANES" '(NR - 1) % n == l' "$jobs_file" |
            while IFS=$'\t' read -r name seed flags; do
                run_one "$name" "$seed" "$flags" || true
            done
    ) &
done
wait

python3 - "$OUT" "$jobs_file" "$MODEL" "$PROMPTS" <<'PYEOF'
import collections, json, os, sys
out, jobs_file, model, prompts = sys.argv[1:5]
rows = collections.OrderedDict()
for line in open(jobs_file):
    name, seed, flags = line.rstrip("\n").split("\t")
    rows.setdefault((name, flags), []).append(seed)
lines = [
    f"Model `{model}`, prompts `{prompts}`; each cell is the mean over seeds.",
    "",
    "| setting | flags | seeds | single: colour | shape | motion | background | pair obj 1 / 2: colour | shape | motion | flicker |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
pct = lambda v: f"{100 * v:.1f}%"
for (name, flags), seeds in rows.items():
    seeds = [s for s in seeds if os.path.exists(f"{out}/{name}-s{s}/results.json")]
    if not seeds:
        lines.append(f"| {name} | `{flags.strip()}` | (failed: see {out}/{name}-s*.log) |")
        continue
    sums = [json.load(open(f"{out}/{name}-s{s}/results.json"))["summary"] for s in seeds]
    mean = lambda f: sum(f(s) for s in sums) / len(sums)
    single = [pct(mean(lambda s, k=k: s["single"][k])) for k in ("color", "shape", "motion", "background")]
    has_pair = all(s.get("pair") and s["pair"][0]["count"] > 0 for s in sums)
    pair = [
        f"{pct(mean(lambda s, k=k: s['pair'][0][k]))} / {pct(mean(lambda s, k=k: s['pair'][1][k]))}"
        if has_pair else "-"
        for k in ("color", "shape", "motion")
    ]
    flick = f"{mean(lambda s: s['flicker_mean']):.2f}"
    lines.append(f"| {name} | `{flags.strip() or '(model defaults)'}` | {' '.join(seeds)} | "
                 + " | ".join(single) + " | " + " | ".join(pair) + f" | {flick} |")
text = "\n".join(lines) + "\n"
open(f"{out}/table.md", "w").write(text)
print(text)
PYEOF
