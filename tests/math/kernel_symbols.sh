#!/usr/bin/env bash
# The objects of the per-level CPU kernels (src/math/kernels/) define no shared symbol outside their
# own namespace: an inline function or template emitted out of line by, say, the AVX2 object
# could be linked in place of the baseline's copy and run AVX2 instructions on a CPU without them.
# Arguments: the objects of duquant_math (the kernel objects are picked by name). Allowed: the
# sanitizers' own symbols and type descriptions (UBSan's typeinfo of function types: data, not code).
set -u
status=0 checked=0
for obj in "$@"; do
  case "$obj" in *kernels_*.o) ;; *) continue ;; esac
  level=$(basename "$obj"); level=${level#kernels_}; level=${level%%.*}
  checked=$((checked + 1))
  # Global (upper-case) or unique/weak (u, V, W, v, w) definitions: each must be this level's.
  bad=$(nm -C --defined-only "$obj" | awk '$2 ~ /^[A-Zuvw]$/' | cut -d' ' -f3- |
        grep -v "duquant::simd::${level}::" | grep -Ev '^(__asan|___asan|__odr_asan|__sancov|__ubsan|typeinfo for |typeinfo name for )' || true)
  if [ -n "$bad" ]; then
    echo "$obj defines symbols outside duquant::simd::${level}:"; echo "$bad"; status=1
  fi
done
[ "$checked" -eq 4 ] || { echo "expected 4 kernel objects, found $checked"; exit 1; }
[ "$status" -eq 0 ] && echo "4 kernel objects define only their own level's symbols"
exit "$status"
