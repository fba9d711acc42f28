#!/usr/bin/env bash
# Runs every Parallax test: unit, integration and end-to-end, with real peers (ffmpeg, ffprobe,
# python3's http.server as a hung origin). Installs what is missing first (see scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo test --workspace --locked "$@"
