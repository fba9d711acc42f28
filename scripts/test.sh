#!/usr/bin/env bash
# Runs every Parallax test: unit, integration and end-to-end, with real peers (ffmpeg, ffprobe,
# python3's http.server as a hung origin). Installs what is missing first (see scripts/deps.sh).
# The deployment files (deploy/, cfn-lint and systemd-analyze) are checked before the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
bash scripts/check-deploy.sh
cargo test --workspace --locked "$@"
