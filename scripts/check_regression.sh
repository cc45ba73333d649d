#!/usr/bin/env bash
# Proves that the asv suite reports a real regression and stays quiet without one.
#
# In a scratch clone under /tmp of this checkout (HEAD with the working tree laid over it,
# committed as "baseline", so uncommitted work is what gets checked):
#   1. for each slowed operation and backend chosen: a commit on baseline that makes that
#      one operation of that one backend PCT% slower (appended to
#      disagmoe/block_manager/<backend>.py: the operation notes its start, and the
#      manager.synchronize() that ends the call busy-waits PCT% of the time since).
#      `asv continuous baseline slowdown` over that operation's benchmarks must flag every
#      grid point of the slowed backend's RelativeTime of that operation (the suite's
#      verdict: the operation's time over a fixed reference's, timed in turn in one
#      process) and exit non-zero; how many of its time_ points were flagged is shown too;
#   2. N empty commits on baseline: `asv continuous baseline empty` over the --bench
#      benchmarks (default the verdicts: RelativeTime and InverseSpeedup) must flag
#      nothing and exit 0, each time.
# Exits 0 when every check holds, 1 otherwise.
#
#   scripts/check_regression.sh [--backend gpu|cpu|both] [--op pack|update|both]
#                               [--slowdown PCT] [--identical N] [--bench REGEX]
#                               [--rounds N] [--factor F] [--machine NAME] [--keep]
#
# --backend   the backend slowed down (default gpu)
# --op        the operation slowed down (default pack): pack_flash_attn_metadata, or
#             update_block_table (all three UpdateBlockTable* benchmarks time it)
# --slowdown  how much slower, in percent (default 25)
# --identical how many empty commits to check (default 1; 0 skips the check)
# --bench     benchmarks of the identical-commit check (default "RelativeTime|InverseSpeedup";
#             "." for the whole suite, whose time_ points a noisy machine moves by
#             more than asv's 10%); a slowdown check runs its operation's benchmarks,
#             RelativeTime and InverseSpeedup
# --rounds    processes per benchmark and commit, the two commits taking turns (asv's
#             --interleave-rounds; default 3)
# --factor    asv's threshold (default 1.1, asv's own)
# --keep      keep the scratch clone (its results/ holds the results)
# The grid is batch sizes 16 256 x seq lens 128 1024 unless DISAGMOE_BENCH_BATCH_SIZES /
# DISAGMOE_BENCH_SEQ_LENS say otherwise (docs/benchmarking.md).
# On the offline GPU machine: ASV="$PWD/scripts/asv_gpu.sh" scripts/check_regression.sh
set -uo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$src/scripts/lib/scratch.sh"
backends=gpu
ops=pack
slowdown=25
identical=1
bench="RelativeTime|InverseSpeedup"
rounds=3
factor=1.1
machine=${ASV_MACHINE:-regression-check-$(hostname -s)}
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backends=$2; shift 2 ;;
    --op) ops=$2; shift 2 ;;
    --slowdown) slowdown=$2; shift 2 ;;
    --identical) identical=$2; shift 2 ;;
    --bench) bench=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --factor) factor=$2; shift 2 ;;
    --machine) machine=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "check_regression.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$backends" = both ] && backends="cpu gpu"
[ "$ops" = both ] && ops="update pack"
for b in $backends; do
  case "$b" in cpu|gpu) ;; *) echo "check_regression.sh: --backend is cpu, gpu or both, not $b" >&2; exit 2 ;; esac
done
for o in $ops; do
  case "$o" in update|pack) ;; *) echo "check_regression.sh: --op is update, pack or both, not $o" >&2; exit 2 ;; esac
done
[[ "$slowdown" =~ ^[0-9]+$ && "$identical" =~ ^[0-9]+$ && "$rounds" =~ ^[1-9][0-9]*$ ]] ||
  { echo "check_regression.sh: --slowdown, --identical and --rounds take whole numbers" >&2; exit 2; }
read -r -a asv <<< "${ASV:-asv}"
export DISAGMOE_BENCH_BATCH_SIZES=${DISAGMOE_BENCH_BATCH_SIZES:-16 256}
export DISAGMOE_BENCH_SEQ_LENS=${DISAGMOE_BENCH_SEQ_LENS:-128 1024}
scratch=$(mktemp -d /tmp/disagmoe-regression.XXXXXX)
[ "$keep" = 1 ] || trap 'rm -rf "$scratch"' EXIT
scratch_clone "$src" "$scratch/repo" || exit 1
base=$(scratch_git rev-parse HEAD)

method_of() { [ "$1" = pack ] && echo pack_flash_attn_metadata || echo update_block_table; }
class_of() { [ "$1" = cpu ] && echo CPUBlockManager || echo GPUBlockManager; }
benchmarks_of() {  # the benchmarks that time an operation (asv --bench regex)
  [ "$1" = pack ] && echo "PackFlashAttnMetadataDecode|RelativeTime|InverseSpeedup" ||
    echo "UpdateBlockTable|RelativeTime|InverseSpeedup"
}
expected_of() {  # rows that must be flagged: op backend -> regex over asv's table rows
  echo "RelativeTime\.track_$(method_of "$1")\('$2'"
}
timed_of() {  # the op's time_ rows of that backend, shown beside the verdict
  local rows
  [ "$1" = pack ] && rows="PackFlashAttnMetadataDecode" || rows="UpdateBlockTable[A-Za-z]*"
  echo "${rows}\.time_$(method_of "$1")\('$2'"
}

slowdown_commit() {  # backend op -> the commit's hash
  local backend=$1 op=$2 method class
  method=$(method_of "$op"); class=$(class_of "$backend")
  scratch_git checkout -q -B "slow-$backend-$op" "$base"
  cat >> "$scratch_repo/disagmoe/block_manager/$backend.py" <<EOF


# Artificial regression (scripts/check_regression.sh): $method $slowdown% slower.
# The call notes when it started; the synchronize() that ends it (every benchmark ends
# each timed call with one) busy-waits $slowdown% of the time from that start to the
# device being done, so the call's structure (no extra synchronise) stays as it was.
import time as _time  # noqa: E402

_original_$method = $class.$method
_original_synchronize = $class.synchronize
_slow_started: dict[int, float] = {}


def _slow_$method(self, batch):
    _slow_started[id(self)] = _time.perf_counter()
    return _original_$method(self, batch)


def _slow_synchronize(self):
    _original_synchronize(self)
    start = _slow_started.pop(id(self), None)
    if start is not None:
        until = start + (1 + $slowdown / 100) * (_time.perf_counter() - start)
        while _time.perf_counter() < until:
            pass


$class.$method = _slow_$method
$class.synchronize = _slow_synchronize
EOF
  scratch_git commit -q -am "slowdown: $backend $method $slowdown% slower" && scratch_git rev-parse HEAD
}

cd "$scratch_repo" || exit 1
"${asv[@]}" machine --yes --machine "$machine" >/dev/null || exit 1
echo "scratch clone $scratch_repo; machine $machine; $rounds rounds; factor $factor"
echo "grid: batch sizes $DISAGMOE_BENCH_BATCH_SIZES x seq lens $DISAGMOE_BENCH_SEQ_LENS; baseline $base"

continuous() {  # bench base head log -> asv's exit code; prints its table and verdict
  local start=$SECONDS rc
  "${asv[@]}" continuous --factor "$factor" --machine "$machine" --bench "$1" \
    --interleave-rounds -a rounds="$rounds" "$2" "$3" > "$4" 2>&1
  rc=$?
  grep -E '^\| |SOME BENCHMARKS|BENCHMARKS NOT|PERFORMANCE' "$4"
  echo "asv continuous exit code: $rc ($((SECONDS - start)) s)"
  return $rc
}
worse() { grep -E '^\| \+' "$1"; }  # asv's rows of benchmarks that got worse
points() {  # how many grid points one backend's RelativeTime of an op has
  local nb nl
  nb=$(tr ',' ' ' <<< "$DISAGMOE_BENCH_BATCH_SIZES" | wc -w)
  nl=$(tr ',' ' ' <<< "$DISAGMOE_BENCH_SEQ_LENS" | wc -w)
  echo $((nb * nl))
}

ok=1
n=0
for backend in $backends; do
  for op in $ops; do
    n=$((n + 1))
    slow=$(slowdown_commit "$backend" "$op") || { echo "FAIL: could not commit the slowdown"; exit 1; }
    log="$scratch/slowdown-$backend-$op.log"
    expected=$(expected_of "$op" "$backend")
    echo; echo "== $n. baseline -> $backend $(method_of "$op") $slowdown% slower ($slow):" \
      "expect all $(points "$op") of its grid points flagged, exit non-zero"
    continuous "$(benchmarks_of "$op")" "$base" "$slow" "$log"; rc=$?
    flagged=$(worse "$log" | grep -cE "$expected")
    if [ $rc -ne 0 ] && [ "$flagged" -eq "$(points "$op")" ]; then
      echo "PASS: the slowdown is reported at $flagged of $(points "$op") grid points"
    else
      echo "FAIL: $flagged of $(points "$op") grid points flagged, exit code $rc"; ok=0
    fi
    echo "its time_ benchmarks: $(worse "$log" | grep -cE "$(timed_of "$op" "$backend")") grid points flagged"
    others=$(worse "$log" | grep -vE "$expected" | grep -vcE "$(timed_of "$op" "$backend")")
    [ "$others" -gt 0 ] && echo "note: $others other rows flagged as worse too"
  done
done

for i in $(seq 1 "$identical"); do
  scratch_git checkout -q -B "empty-$i" "$base" && scratch_git commit -q --allow-empty -m "empty commit $i"
  empty=$(scratch_git rev-parse HEAD)
  log="$scratch/identical-$i.log"
  echo; echo "== identical commits, try $i of $identical: baseline -> empty commit $empty, bench '$bench':" \
    "expect no regression, exit 0"
  continuous "$bench" "$base" "$empty" "$log"; rc=$?
  if [ $rc -eq 0 ] && [ -z "$(worse "$log")" ]; then
    echo "PASS: no regression reported"
  else
    echo "FAIL: identical commits reported $(worse "$log" | wc -l) regressions (exit $rc)"; ok=0
  fi
done

[ "$keep" = 1 ] && echo "kept $scratch"
[ $ok = 1 ] && { echo; echo "check_regression: OK"; exit 0; }
echo; echo "check_regression: FAILED"; exit 1
