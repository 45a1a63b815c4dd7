#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine (Chromium for
# the playback test, playwright-core from npm), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Debian chromium (playback test)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== installing playwright-core (npm ci)"
  (cd tests/browser && npm ci --silent --no-audit --no-fund)
fi
cargo test --workspace --locked "$@"
