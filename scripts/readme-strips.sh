#!/usr/bin/env bash
# Renders the README's examples with the built-in model: for each prompt below, the clip
# (docs/builtin/NAME.mp4) and a strip of 5 frames (docs/builtin/NAME.png) made by
# `ciak generate --strip`, with the default settings and a fixed seed.
#
#   scripts/readme-strips.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p ciak >&2
mkdir -p docs/builtin

# name | extra flags | prompt
while IFS='|' read -r name flags prompt; do
    [[ -z "$name" ]] && continue
    # shellcheck disable=SC2086
    target/release/ciak generate "$prompt" --seed 7 $flags --force \
        -o "docs/builtin/$name.mp4" --strip "docs/builtin/$name.png"
    rm -f "docs/builtin/$name.json"
done <<'EOF'
red-ball-right||a red ball moves to the right on a blue background
yellow-star-up||On a plain purple backdrop, a large yellow star drifts upward.
green-square-left|--aspect 9:16|a green square slides left across a white background
sky-ground||a green ball moves right under an orange sky over white ground
two-objects|--aspect 1:1|a blue circle moves down and a red triangle moves right on a black background
EOF
ls -la docs/builtin
