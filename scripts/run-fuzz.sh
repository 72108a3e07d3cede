#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan+UBSan) in build-fuzz/ beside this folder
# and runs each for SECONDS (default 30), seeded with the corrupt-file suite, the shared fixture and
# a few valid small files, copied into a temporary corpus (nothing is written into the repository).
# Exits non-zero when a target crashes; the crash input and log are kept and their path printed.
# Usage: scripts/run-fuzz.sh [SECONDS_PER_TARGET]
set -euo pipefail

seconds="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build-fuzz"
fixtures="$root/../shared/fixtures"
corrupt="$root/tests/data/corrupt"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DDUQUANT_FUZZ=ON -DDUQUANT_TESTS=OFF -DDUQUANT_CUDA=OFF \
  -DDUQUANT_SANITIZE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz_safetensors_header fuzz_safetensors_index >/dev/null

work="$(mktemp -d "${TMPDIR:-/tmp}/duquant-fuzz.XXXXXX")"
keep=0
trap '[ "$keep" = 1 ] || rm -rf "$work"' EXIT
mkdir -p "$work/header" "$work/index" "$work/artifacts"

# Seeds: every single corrupt file and every shard of the corrupt folders for the header target,
# every index of the corrupt folders for the index target, plus valid small files for both.
find "$corrupt" -type f -name '*.safetensors' | while read -r f; do
  cp "$f" "$work/header/$(echo "${f#"$corrupt"/}" | tr '/' '_')"
done
find "$corrupt" -type f -name '*.index.json' | while read -r f; do
  cp "$f" "$work/index/$(echo "${f#"$corrupt"/}" | tr '/' '_')"
done
if [ -f "$fixtures/pi05_tiny.safetensors" ]; then
  cp "$fixtures/pi05_tiny.safetensors" "$work/header/pi05_tiny.safetensors"  # cut to -max_len when loaded
fi
python3 - "$work" <<'PY'
import json, os, struct, sys
work = sys.argv[1]
def st(name, header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    open(os.path.join(work, "header", name), "wb").write(struct.pack("<Q", len(text)) + text + data)
st("valid_empty", {}, b"")
st("valid_metadata", {"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
st("valid_mixed", {"a": {"dtype": "BF16", "shape": [2, 1], "data_offsets": [0, 4]},
                   "b": {"dtype": "F4", "shape": [4], "data_offsets": [4, 6]},
                   "z": {"dtype": "I64", "shape": [0], "data_offsets": [6, 6]},
                   "s": {"dtype": "U8", "shape": [], "data_offsets": [6, 7]}}, bytes(7))
for i, wm in enumerate([{"a": "model.safetensors"},
                        {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
                        {"x.y": "sub/dir/shard.safetensors"}]):
    open(os.path.join(work, "index", f"valid_{i}"), "w").write(
        json.dumps({"metadata": {"total_size": 16}, "weight_map": wm}))
PY

status=0
for target in header index; do
  exe="$build/tests/fuzz/fuzz_safetensors_$target"
  log="$work/$target.log"
  set +e
  "$exe" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -dict="$root/tests/fuzz/safetensors.dict" -artifact_prefix="$work/artifacts/$target-" \
    "$work/$target" >"$log" 2>&1
  rc=$?
  set -e
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  echo "fuzz_safetensors_$target: ${execs:-?} executions in ${seconds} s (exit code $rc)"
  if [ "$rc" != 0 ]; then
    status=1
    keep=1
    tail -n 40 "$log"
  fi
done

if [ "$status" != 0 ]; then
  echo "a fuzz target crashed: inputs in $work/artifacts, logs in $work" >&2
fi
exit "$status"
