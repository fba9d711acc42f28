#!/usr/bin/env bash
# Vendors the player's front-end libraries from the exact versions pinned in package-lock.json.
#
#   ./vendor.sh            npm ci, then copy the files below into vendor/
#   ./vendor.sh --check    npm ci, then fail unless vendor/ holds exactly those files, byte for byte
#   --no-ci                (with either) use the node_modules already installed instead of npm ci
#
# vendor/ is committed: the proxy embeds player/ at build time and needs no npm. This script is
# how it is (re)made and how CI proves it matches the pinned packages. Copies are verbatim, the
# upstream license texts included.
set -euo pipefail

cd "$(dirname "$0")"

# source in node_modules                 -> file in vendor/
FILES=(
  "hls.js/dist/hls.min.js"               "hls.min.js"
  "hls.js/LICENSE"                       "LICENSE-hls.js.txt"
  "three/build/three.module.min.js"      "three.module.min.js"
  "three/build/three.core.min.js"        "three.core.min.js"
  "three/LICENSE"                        "LICENSE-three.txt"
)

check=0
install=1
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --no-ci) install=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "vendor.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ "$install" = 1 ]; then
  command -v npm >/dev/null || { echo "vendor.sh: npm is not installed" >&2; exit 2; }
  npm ci --ignore-scripts --no-audit --no-fund >&2
fi

# The installed packages must be the pinned ones (npm ci guarantees it; --no-ci may not).
for pkg in hls.js three; do
  pinned=$(node -p "require('./package.json').dependencies['$pkg']")
  installed=$(node -p "require('./node_modules/$pkg/package.json').version" 2>/dev/null || echo missing)
  if [ "$pinned" != "$installed" ]; then
    echo "vendor.sh: node_modules/$pkg is $installed but package.json pins $pinned (run npm ci)" >&2
    exit 2
  fi
done

status=0
expected=()
for ((i = 0; i < ${#FILES[@]}; i += 2)); do
  src="node_modules/${FILES[i]}"
  dst="vendor/${FILES[i + 1]}"
  expected+=("${FILES[i + 1]}")
  if [ ! -f "$src" ]; then
    echo "vendor.sh: $src is missing from the installed package" >&2
    exit 2
  fi
  if [ "$check" = 1 ]; then
    if [ ! -f "$dst" ]; then
      echo "vendor.sh: $dst is missing (run player/vendor.sh)" >&2
      status=1
    elif ! cmp -s "$src" "$dst"; then
      echo "vendor.sh: $dst differs from $src (run player/vendor.sh)" >&2
      status=1
    fi
  else
    mkdir -p vendor
    cp "$src" "$dst"
    chmod 0644 "$dst"
  fi
done

# Nothing else may sit in vendor/: whatever is there gets embedded in the proxy.
for f in vendor/* vendor/.[!.]*; do
  [ -e "$f" ] || continue
  name=${f#vendor/}
  known=0
  for e in "${expected[@]}"; do [ "$e" = "$name" ] && known=1; done
  if [ "$known" = 0 ]; then
    if [ "$check" = 1 ]; then
      echo "vendor.sh: unexpected file $f (not produced by vendor.sh)" >&2
      status=1
    else
      rm -rf -- "$f"
    fi
  fi
done

# THIRD-PARTY.txt (served with the player) must name the versions actually shipped.
hls_v=$(node -p "require('./package.json').dependencies['hls.js']")
three_v=$(node -p "require('./package.json').dependencies.three")
for want in "hls.js $hls_v" "npm \"three\" $three_v"; do
  if ! grep -qF "$want" THIRD-PARTY.txt; then
    echo "vendor.sh: THIRD-PARTY.txt does not mention $want: update it" >&2
    status=1
  fi
done

if [ "$check" = 1 ]; then
  if [ "$status" = 0 ]; then
    echo "vendor.sh: vendor/ matches the pinned packages (hls.js $hls_v, three $three_v)"
  fi
  exit "$status"
fi
echo "vendor.sh: vendored $(( ${#FILES[@]} / 2 )) files into player/vendor/ (hls.js $hls_v, three $three_v)"
exit "$status"
