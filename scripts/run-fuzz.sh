#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan+UBSan) in build-fuzz/ beside this folder
# and runs each for SECONDS (default 60). One target per reader of untrusted bytes; the targets are
# the folders of tests/fuzz/seeds/. Each starts from a temporary corpus: its committed seeds, its
# crash regressions (tests/data/fuzz-regressions/<target>/) and, where they exist, the hand-made
# corrupt safetensors files and the shared fixtures' files. Nothing is written into the repository
# unless a target crashes: then the crashing input is copied to
# tests/data/fuzz-regressions/<target>/ (commit it with the fix; every test build replays it) and
# the script exits non-zero.
# The targets run side by side, FUZZ_JOBS at a time (default: one per core), each for SECONDS.
# Usage: scripts/run-fuzz.sh [SECONDS_PER_TARGET [BUILD_DIR]]
#   BUILD_DIR: a build folder already configured with -DDUQUANT_FUZZ=ON by clang (scripts/run-tests.sh
#   passes its sanitizer build, which has the tests too); only the targets are built there.
#   Without it, build-fuzz/ is configured with the fuzz targets alone.
# Prints one line per target, in order: "fuzz_<target>: N executions in S s (exit code C)".
set -euo pipefail
trap 'echo "run-fuzz.sh: line $LINENO failed (exit code $?)" >&2' ERR

seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${2:-$root/build-fuzz}"
jobs="${FUZZ_JOBS:-$(nproc)}"
fixtures="$root/../shared/fixtures"
corrupt="$root/tests/data/corrupt"
seeds="$root/tests/fuzz/seeds"
regressions="$root/tests/data/fuzz-regressions"

if [ -z "${2:-}" ]; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DDUQUANT_FUZZ=ON -DDUQUANT_TESTS=OFF -DDUQUANT_CUDA=OFF \
    -DDUQUANT_SANITIZE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j"$(nproc)" --target fuzz_targets >/dev/null

work="$(mktemp -d "${TMPDIR:-/tmp}/duquant-fuzz.XXXXXX")"
keep=0
trap '[ "$keep" = 1 ] || rm -rf "$work"' EXIT

# sorted_files DIR FIND-ARGS...: the matching paths, one per line, sorted (none when DIR is absent).
# Paths of the repository and the fixtures hold no blanks.
sorted_files() {
  local d=$1; shift
  [ -d "$d" ] || return 0
  find "$d" "$@" | LC_ALL=C sort
}

# corpus TARGET: the starting corpus of one target, in $work/corpus-TARGET.
corpus() {
  local t=$1 dir="$work/corpus-$1"
  mkdir -p "$dir"
  cp "$seeds/$t"/* "$dir/"
  if [ -d "$regressions/$t" ]; then cp "$regressions/$t"/* "$dir/" 2>/dev/null || true; fi
  case "$t" in
    safetensors_header)
      for f in $(sorted_files "$corrupt" -type f -name '*.safetensors'); do
        cp "$f" "$dir/corrupt_$(echo "${f#"$corrupt"/}" | tr '/' '_')"
      done
      if [ -f "$fixtures/pi05_tiny.safetensors" ]; then
        dd if="$fixtures/pi05_tiny.safetensors" of="$dir/fixture_head" bs=65536 count=1 status=none
      fi ;;
    safetensors_index)
      for f in $(sorted_files "$corrupt" -type f -name '*.index.json'); do
        cp "$f" "$dir/corrupt_$(echo "${f#"$corrupt"/}" | tr '/' '_')"
      done ;;
    npz)
      # The eight first small packs' files, in a fixed order (no pipeline into head: with
      # pipefail, find dies of SIGPIPE when head stops reading first, and the script with it).
      local n=0
      for f in $(sorted_files "$fixtures" -name '*.npz' -size -64k); do
        [ "$n" -lt 8 ] || break
        cp "$f" "$dir/fixture_$(basename "$(dirname "$f")")_$(basename "$f")"
        n=$((n + 1))
      done ;;
    json_config)
      for f in "$fixtures"/*.config.json; do [ -f "$f" ] && cp "$f" "$dir/fixture_$(basename "$f")"; done ;;
  esac
  return 0
}

# run_one TARGET EXE DICT: one fuzzing run; its exit code goes to $work/TARGET.rc.
run_one() {
  local t=$1 exe=$2 dict=$3 rc
  mkdir -p "$work/artifacts-$t" "$work/tmp-$t"
  set +e
  # calib_dump: HDF5's own hangs on crafted files end its check process after 1 s, not 60.
  TMPDIR="$work/tmp-$t" DUQUANT_TEST_HDF5_CHECK_SECONDS=1 \
    "$exe" -max_total_time="$seconds" -max_len=65536 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -dict="$dict" -artifact_prefix="$work/artifacts-$t/" "$work/corpus-$t" >"$work/$t.log" 2>&1
  rc=$?
  set -e
  echo "$rc" >"$work/$t.rc"
  return 0
}

status=0
targets=()
running=0
for path in "$seeds"/*/; do
  t=$(basename "$path")
  exe="$build/tests/fuzz/fuzz_$t"
  dict="$root/tests/fuzz/$t.dict"
  case "$t" in safetensors_*) dict="$root/tests/fuzz/safetensors.dict" ;; esac
  if ! corpus "$t"; then
    echo "fuzz_$t: could not assemble the starting corpus"; status=1; continue
  fi
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
  run_one "$t" "$exe" "$dict" &
  running=$((running + 1))
  targets+=("$t")
done
wait

for t in "${targets[@]}"; do
  log="$work/$t.log"
  rc="$(cat "$work/$t.rc" 2>/dev/null || echo '?')"
  # The last figures are the fuzzer's own: HDF5's check processes (forked by the calib_dump reader)
  # print theirs too when a crafted header makes HDF5 allocate gigabytes there, which libFuzzer
  # reports as an out-of-memory of that process; the process dies, the reader refuses the file.
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)"
  echo "fuzz_$t: ${execs:-?} executions in ${seconds} s (exit code $rc)"
  if [ "$rc" != 0 ]; then
    status=1
    keep=1
    tail -n 40 "$log"
    # The fuzzer's artifact is the last one it names (check processes may have written some before).
    a="$(grep -o 'Test unit written to .*' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)"
    if [ -n "$a" ] && [ -f "$a" ]; then
      mkdir -p "$regressions/$t"
      cp "$a" "$regressions/$t/"
      echo "fuzz_$t: the crashing input is now $regressions/$t/$(basename "$a"); commit it with the fix"
    fi
  fi
done

if [ "$status" != 0 ]; then
  echo "a fuzz target crashed: logs in $work" >&2
fi
exit "$status"
