#!/usr/bin/env bash
# Every test: installs what is missing, then
#   1. builds with the CUDA backend when nvcc is present (DUQUANT_CUDA=AUTO) and runs all tests
#      (GPU comparisons report SKIPPED where no GPU exists);
#   2. builds with clang, without CUDA, under AddressSanitizer + UndefinedBehaviorSanitizer and runs
#      all tests; the same build holds the libFuzzer targets (one build instead of two);
#   3. runs each fuzz target for FUZZ_SECONDS (default 60) from its seed corpus, one per core at a
#      time (scripts/run-fuzz.sh; docs/reliability.md).
# Ends with one line "tests: N passed, N failed, N skipped" over the CTest runs.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/install-deps.sh" || exit 1

passed=0; failed=0; skipped=0; status=0
run_ctest() {  # run_ctest BUILD_DIR LABEL
  local log="$root/$1.ctest.log"
  echo "== ctest ($2)"
  ctest --test-dir "$root/$1" --output-on-failure -j"$(nproc)" > "$log" 2>&1
  local rc=$?
  grep -E "tests passed|Skipped|\*\*\*Failed|Not Run|Timeout" "$log" | tail -n 40
  local total fail skip
  total=$(grep -oE "out of [0-9]+" "$log" | tail -1 | grep -oE "[0-9]+"); total=${total:-0}
  fail=$(grep -oE "[0-9]+ tests failed" "$log" | tail -1 | grep -oE "^[0-9]+"); fail=${fail:-0}
  skip=$(grep -cE "\(Skipped\)$" "$log")
  passed=$((passed + total - fail - skip)); failed=$((failed + fail)); skipped=$((skipped + skip))
  if [ "$rc" -ne 0 ] || [ "$total" -eq 0 ]; then status=1; fi
}

echo "== build (Release, DUQUANT_CUDA=AUTO, warnings are errors)"
if "$root/scripts/build.sh" build -DDUQUANT_CUDA=AUTO -DDUQUANT_WERROR=ON > build.log 2>&1; then
  grep -E "^-- duquant:|warning" build.log | head -n 20
  run_ctest build "Release"
else
  tail -n 60 build.log; status=1
fi

echo "== build (clang, ASan+UBSan, DUQUANT_CUDA=OFF, with the libFuzzer targets)"
if CC=clang CXX=clang++ "$root/scripts/build.sh" build-asan -DDUQUANT_CUDA=OFF -DDUQUANT_SANITIZE=ON -DDUQUANT_FUZZ=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo > build-asan.log 2>&1; then
  grep -E "^-- duquant:|warning" build-asan.log | head -n 20
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 run_ctest build-asan "ASan+UBSan"
else
  tail -n 60 build-asan.log; status=1
fi

if [ -x "$root/scripts/run-fuzz.sh" ]; then
  echo "== fuzz (${FUZZ_SECONDS:-60} s per target)"
  "$root/scripts/run-fuzz.sh" "${FUZZ_SECONDS:-60}" "$root/build-asan" || status=1
fi

echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $status
