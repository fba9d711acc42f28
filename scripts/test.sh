#!/usr/bin/env bash
# Runs every Parallax test: unit, integration and end-to-end, with real peers (ffmpeg, ffprobe,
# python3's http.server as a hung origin, hls.js in headless Chromium). Installs what is missing
# first (see scripts/deps.sh).
# The deployment files (deploy/, cfn-lint and systemd-analyze) are checked before the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PARALLAX_TESTS=1 source scripts/deps.sh
# The player's pinned packages (playwright-core for the browser test), and proof that the copies
# of hls.js and three.js the proxy embeds are exactly the pinned ones.
bash player/vendor.sh --check
bash scripts/check-deploy.sh
cargo test --workspace --locked "$@"
