#!/usr/bin/env bash
# How the cost of each command grows with the number of linear layers (docs/benchmarks.md,
# "Cost against the number of linear layers").
#
# benchmarks/scale.sh [BUILD_DIR] [WORK_DIR]
#   SIZES="1000 10000 50000 100000 200000"  linear layers for list-linears (text, --json) and inspect
#   PACK_SIZES (default: SIZES up to 100000; "" for none) linear layers for pack, verify and pack
#     --calib (about 0.4-1 ms per tiny layer on tmpfs, a few ms on a disk). Not 200000 by default:
#     that pack's quantized.safetensors.index.json (126 MB) is above the readers' 100,000,000-byte
#     index limit, so its verify is refused (docs/benchmarks.md)
# WORK_DIR on tmpfs (/dev/shm/...) leaves out the disk and the file system's inode allocator (on
# ext4 without a journal each new file skips the inodes freed in the last minutes: a cost of the
# machine, per file, which the earlier sizes' deleted packs raise); on a disk they are included.
#
# benchmarks/scale_gen.py writes per size a sharded checkpoint of tiny F32 linears [4, 16] with an
# index naming every tensor, a --config with one "wbits" entry per layer and a dump with one call
# per layer. Every command reads the index and the --config; the script prints per command the
# wall time per size and the exponent k of time ~ n^k fitted (least squares on log-log) over all
# sizes.
set -euo pipefail
BUILD=${1:-build}
WORK=${2:-$BUILD/scale}
SIZES=${SIZES:-"1000 10000 50000 100000 200000"}
PACK_SIZES=${PACK_SIZES-$(for n in $SIZES; do [ "$n" -le 100000 ] && printf '%s ' "$n"; done)}
DQ="$BUILD/duquant"
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$WORK"
RESULTS="$WORK/results.tsv"
: > "$RESULTS"

timed() {  # timed LABEL N command...: wall seconds into RESULTS
  local label=$1 n=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > /dev/null 2> "$WORK/last.err" || { echo "FAILED: $*" >&2; tail -3 "$WORK/last.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  local s; s=$(echo "$t1 - $t0" | bc -l)
  printf '%s\t%s\t%.3f\n' "$label" "$n" "$s" >> "$RESULTS"
  printf '%-22s %7s linears  %8.3f s\n' "$label" "$n" "$s"
}

for n in $(echo "$SIZES $PACK_SIZES" | tr ' ' '\n' | sort -nu); do
  d="$WORK/n$n"
  [ -f "$d/calib.safetensors" ] || python3 "$HERE/scale_gen.py" "$n" "$d"
  cfg=(--config "$d/config.json")
  if [[ " $SIZES " == *" $n "* ]]; then
    timed "list-linears" "$n" "$DQ" list-linears "$d/ckpt" "${cfg[@]}"
    timed "list-linears --json" "$n" "$DQ" list-linears "$d/ckpt" "${cfg[@]}" --json
    timed "inspect" "$n" "$DQ" inspect "$d/ckpt"
  fi
  if [[ " $PACK_SIZES " == *" $n "* ]]; then
    rm -rf "$d/pack" "$d/pack-calib"
    timed "pack" "$n" "$DQ" pack "$d/ckpt" -o "$d/pack" "${cfg[@]}"
    timed "verify" "$n" "$DQ" verify "$d/pack"
    timed "pack --calib" "$n" "$DQ" pack "$d/ckpt" -o "$d/pack-calib" "${cfg[@]}" --calib "$d/calib.safetensors" --calib-steps 1
    rm -rf "$d/pack" "$d/pack-calib"
  fi
done

echo
echo "fitted exponent k (time ~ n^k) over the sizes measured:"
python3 - "$RESULTS" <<'PY'
import math, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, n, s = line.rstrip("\n").split("\t")
    rows[label].append((int(n), max(float(s), 1e-3)))
for label, pts in rows.items():
    if len(pts) < 2:
        continue
    xs = [math.log(n) for n, _ in pts]; ys = [math.log(s) for _, s in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    print(f"  {label:22s} k = {k:.2f}   " + "  ".join(f"{n}: {s:.2f} s" for n, s in pts))
PY
