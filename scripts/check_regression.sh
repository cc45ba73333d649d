#!/usr/bin/env bash
# Proves that the asv suite reports a real regression and stays quiet without one.
#
# In a scratch clone under /tmp of this checkout (HEAD, with the working tree laid over it
# and committed as "baseline", so uncommitted work is what gets checked):
#   1. commit "slowdown" on baseline: pack_flash_attn_metadata of one backend (default gpu)
#      made 25% slower: a wrapper appended to disagmoe/block_manager/<backend>.py times each
#      call up to manager.synchronize() and busy-waits a quarter of that duration.
#      `asv continuous baseline slowdown` must flag that backend's pack (its
#      PackFlashAttnMetadataDecode points or, for gpu, the pack speedup in InverseSpeedup)
#      and exit non-zero;
#   2. an empty commit on baseline: `asv continuous baseline empty` must flag no regression
#      and exit 0.
# Exits 0 when both hold, 1 otherwise.
#
#   scripts/check_regression.sh [--backend gpu|cpu] [--bench REGEX] [--rounds N]
#                               [--factor F] [--machine NAME] [--keep]
#
# --backend the backend slowed down (default gpu: a slower gpu backend is also a drop of the
#           speedup, which InverseSpeedup must report)
# --bench   benchmarks to run (default "PackFlashAttnMetadataDecode|InverseSpeedup"; "." for
#           all). On a shared or virtual machine, where one process can run 1.5-2x slower
#           than the next, only InverseSpeedup (both backends timed in one process) is steady:
#           --bench InverseSpeedup
# --rounds  processes per benchmark and commit, the two commits taking turns (asv's
#           --interleave-rounds; default 5)
# --factor  asv's threshold (default 1.1, asv's own)
# --keep    keep the scratch clone (its .asv/ holds the results)
# The grid is batch sizes 16 256 x seq lens 128 1024 unless DISAGMOE_BENCH_BATCH_SIZES /
# DISAGMOE_BENCH_SEQ_LENS say otherwise (docs/benchmarking.md).
# On the offline GPU machine: ASV="$PWD/scripts/asv_gpu.sh" scripts/check_regression.sh
set -uo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
backend=gpu
bench="PackFlashAttnMetadataDecode|InverseSpeedup"
rounds=5
factor=1.1
machine=${ASV_MACHINE:-regression-check-$(hostname -s)}
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend=$2; shift 2 ;;
    --bench) bench=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --factor) factor=$2; shift 2 ;;
    --machine) machine=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "check_regression.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$backend" in
  cpu) class=CPUBlockManager ;;
  gpu) class=GPUBlockManager ;;
  *) echo "check_regression.sh: --backend is cpu or gpu, not $backend" >&2; exit 2 ;;
esac
read -r -a asv <<< "${ASV:-asv}"
export DISAGMOE_BENCH_BATCH_SIZES=${DISAGMOE_BENCH_BATCH_SIZES:-16 256}
export DISAGMOE_BENCH_SEQ_LENS=${DISAGMOE_BENCH_SEQ_LENS:-128 1024}
scratch=$(mktemp -d /tmp/disagmoe-regression.XXXXXX)
repo=$scratch/repo
[ "$keep" = 1 ] || trap 'rm -rf "$scratch"' EXIT
git_() { git -C "$repo" -c user.name=check_regression -c user.email=check@regression.invalid "$@"; }

# The clone: HEAD, then the working tree (tracked and untracked, not ignored) over it.
git clone -q "$src" "$repo" || exit 1
git_ ls-files -z | (cd "$repo" && xargs -0 rm -f)
(cd "$src" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf -) | tar -xf - -C "$repo"
git_ add -A && git_ commit -q --allow-empty -m "baseline: working tree of $src"
base=$(git_ rev-parse HEAD)

git_ checkout -q -b slowdown
cat >> "$repo/disagmoe/block_manager/$backend.py" <<EOF


# Artificial regression (scripts/check_regression.sh): 25% slower, by busy-waiting
# a quarter of the call's own duration.
import time as _time  # noqa: E402

_pack_flash_attn_metadata = $class.pack_flash_attn_metadata


def _slow_pack_flash_attn_metadata(self, batch):
    start = _time.perf_counter()
    metadata = _pack_flash_attn_metadata(self, batch)
    self.synchronize()  # the call's whole duration, device work included
    until = start + 1.25 * (_time.perf_counter() - start)
    while _time.perf_counter() < until:
        pass
    return metadata


$class.pack_flash_attn_metadata = _slow_pack_flash_attn_metadata
EOF
git_ commit -q -am "slowdown: $backend pack_flash_attn_metadata 25% slower"
slow=$(git_ rev-parse HEAD)
git_ checkout -q -b empty "$base" && git_ commit -q --allow-empty -m "empty commit"
empty=$(git_ rev-parse HEAD)

cd "$repo" || exit 1
"${asv[@]}" machine --yes --machine "$machine" >/dev/null || exit 1
echo "scratch clone $repo; machine $machine; slowed: $backend; bench '$bench'; $rounds rounds; factor $factor"
echo "grid: batch sizes $DISAGMOE_BENCH_BATCH_SIZES x seq lens $DISAGMOE_BENCH_SEQ_LENS"
echo "baseline $base, slowdown $slow, empty $empty"

continuous() {  # base head log -> asv's exit code; prints its table and verdict
  local start=$SECONDS rc
  "${asv[@]}" continuous --factor "$factor" --machine "$machine" --bench "$bench" \
    --interleave-rounds -a rounds="$rounds" "$1" "$2" > "$3" 2>&1
  rc=$?
  grep -E '^\| |SOME BENCHMARKS|BENCHMARKS NOT|PERFORMANCE' "$3"
  echo "asv continuous exit code: $rc ($((SECONDS - start)) s)"
  return $rc
}
worse() { grep -E '^\| \+' "$1"; }  # asv's rows of benchmarks that got worse
expected="PackFlashAttnMetadataDecode\.time_pack_flash_attn_metadata\('$backend'"
[ "$backend" = gpu ] && expected="$expected|InverseSpeedup\.track_pack_flash_attn_metadata"

ok=1
echo; echo "== 1. baseline -> slowdown: expect the $backend pack flagged, exit non-zero"
continuous "$base" "$slow" "$scratch/slowdown.log"; rc=$?
if [ $rc -ne 0 ] && worse "$scratch/slowdown.log" | grep -qE "$expected"; then
  echo "PASS: the slowdown is reported ($(worse "$scratch/slowdown.log" | grep -cE "$expected") benchmarks)"
  others=$(worse "$scratch/slowdown.log" | grep -vcE "$expected")
  [ "$others" -gt 0 ] && echo "note: $others other benchmarks flagged as worse too"
else
  echo "FAIL: expected the $backend pack flagged and a non-zero exit"; ok=0
  tail -40 "$scratch/slowdown.log"
fi

echo; echo "== 2. baseline -> empty commit: expect no regression, exit 0"
continuous "$base" "$empty" "$scratch/identical.log"; rc=$?
if [ $rc -eq 0 ] && [ -z "$(worse "$scratch/identical.log")" ]; then
  echo "PASS: no regression reported"
else
  echo "FAIL: identical commits reported a regression (exit $rc)"; ok=0
  tail -40 "$scratch/identical.log"
fi

[ "$keep" = 1 ] && echo "kept $scratch"
[ $ok = 1 ] && { echo; echo "check_regression: OK"; exit 0; }
echo; echo "check_regression: FAILED"; exit 1
