#!/usr/bin/env bash
# Configures and builds one build folder: scripts/build.sh DIR [cmake -D options...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$1; shift
cmake -S "$root" -B "$root/$dir" -DCMAKE_BUILD_TYPE=Release "$@" > "$root/$dir.configure.log" 2>&1 \
  || { cat "$root/$dir.configure.log"; exit 1; }
grep -E "^-- duquant:" "$root/$dir.configure.log" || true
cmake --build "$root/$dir" -j"$(nproc)"
