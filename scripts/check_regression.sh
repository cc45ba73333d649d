#!/usr/bin/env bash
# Proves that the asv suite reports a real regression and stays quiet without one.
#
# In a scratch clone under /tmp of this checkout (HEAD with the working tree laid over it,
# committed as "baseline", so uncommitted work is what gets checked):
#   1. for each slowed operation and backend chosen: a commit on baseline that makes that
#      one operation of that one backend PCT% slower (appended to
#      disagmoe/block_manager/<backend>.py: the first slowed call after a synchronize notes
#      its start, and the manager.synchronize() that ends the timed region busy-waits PCT%
#      of the time since). `asv continuous baseline slowdown` over that operation's
#      benchmarks must flag every grid point of the slowed backend's verdict benchmark (its
#      time over a fixed reference's, timed in turn in one process) and exit non-zero; how
#      many of its absolute-time points were flagged is shown too. The operations: update
#      (update_block_table: RelativeTime), pack (pack_flash_attn_metadata: RelativeTime)
#      and step (every call of the serving trace's step: release, update and pack, whose
#      pipelined windows end with one synchronize: bench_trace.RelativeStep, every variant
#      of the backend);
#   2. N empty commits on baseline: `asv continuous baseline empty` over the --bench
#      benchmarks (default the verdicts: RelativeTime and InverseSpeedup) must flag
#      nothing and exit 0, each time.
# Exits 0 when every check holds, 1 otherwise.
#
# With --injected, the verdicts' sensitivity instead: the injected regressions of
# scripts/inject_regression.py, each committed on baseline in turn (uniform: each design's
# step PCT% slower, default 10; stall: one step in fifty stalls for twice a median step;
# identical: an empty commit), each run through `asv continuous baseline it` over the
# serving verdicts (RelativeStep of bench_pipelined, bench_trace and bench_replay: the
# median and the tail), then judged by scripts/verdict_noise.py (per benchmark its
# minimum detectable change, per point slower / inconclusive / no change); the table
# shows, point by point, each run's ratio and verdict, and the check fails where a run did
# not show what it must (scripts/inject_regression.py says what).
#
#   scripts/check_regression.sh [--backend gpu|cpu|both] [--op pack|update|step|both]
#                               [--slowdown PCT] [--identical N] [--bench REGEX]
#                               [--rounds N] [--factor F] [--machine NAME] [--keep]
#   scripts/check_regression.sh --injected [uniform,stall,identical] [--slowdown "PCT ..."]
#                               [--rounds N] [--machine NAME] [--keep]
#
# --backend   the backend slowed down (default gpu)
# --op        the operation slowed down (default pack): pack_flash_attn_metadata,
#             update_block_table (all three UpdateBlockTable* benchmarks time it), or
#             step (the serving trace's whole step); both = update and pack
# --slowdown  how much slower, in percent (default 25)
# --identical how many empty commits to check (default 1; 0 skips the check)
# --bench     benchmarks of the identical-commit check (default "RelativeTime|InverseSpeedup";
#             "." for the whole suite, whose time_ points a noisy machine moves by
#             more than asv's 10%); a slowdown check runs its operation's benchmarks,
#             RelativeTime and InverseSpeedup
# --rounds    processes per benchmark and commit, the two commits taking turns (asv's
#             --interleave-rounds; default 3)
# --factor    asv's threshold (default 1.1, asv's own; with --injected the medians' verdict
#             factor, default 1.05, benchmarks/verdict_set.py)
# --keep      keep the scratch clone (its results/ holds the results)
# --injected  the injected regressions named (comma-separated; default all three); with
#             it --slowdown lists the uniform ones' PCTs (default 10; "10 400": two runs)
#             and the serving grid is decode 16 64 x 1024, trace 64 x 2048, replay
#             azure-conv, pipelined timing only, unless DISAGMOE_SERVING_BATCH_SIZES,
#             DISAGMOE_SERVING_CONTEXTS, DISAGMOE_TRACE_RUNNING, DISAGMOE_TRACE_PROMPTS,
#             DISAGMOE_REPLAY_TRACES and DISAGMOE_SERVING_MODES say otherwise
# The grid is batch sizes 16 256 x seq lens 128 1024 unless DISAGMOE_BENCH_BATCH_SIZES /
# DISAGMOE_BENCH_SEQ_LENS say otherwise, and the trace grid (--op step) running 64 256 x
# prompts 2048 16384 unless DISAGMOE_TRACE_RUNNING / DISAGMOE_TRACE_PROMPTS do
# (docs/benchmarking.md).
# On the offline GPU machine: ASV="$PWD/scripts/asv_gpu.sh" scripts/check_regression.sh
set -uo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$src/scripts/lib/scratch.sh"
backends=gpu
ops=pack
slowdown=
injected=
identical=1
bench="RelativeTime|InverseSpeedup"
rounds=3
factor=
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
    --injected)
      if [ $# -gt 1 ] && [[ "$2" != --* ]]; then injected=$2; shift 2; else injected=uniform,stall,identical; shift; fi ;;
    *) echo "check_regression.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$backends" = both ] && backends="cpu gpu"
[ "$ops" = both ] && ops="update pack"
for b in $backends; do
  case "$b" in cpu|gpu) ;; *) echo "check_regression.sh: --backend is cpu, gpu or both, not $b" >&2; exit 2 ;; esac
done
for o in $ops; do
  case "$o" in update|pack|step) ;; *) echo "check_regression.sh: --op is update, pack, step or both, not $o" >&2; exit 2 ;; esac
done
for k in ${injected//,/ }; do
  case "$k" in uniform|stall|identical) ;; *)
    echo "check_regression.sh: --injected takes uniform, stall and identical, comma-separated, not $k" >&2; exit 2 ;;
  esac
done
if [ -n "$injected" ]; then  # one uniform run per percent listed
  slowdowns=${slowdown:-10}; slowdowns=${slowdowns//,/ }; slowdown=${slowdowns%% *}; factor=${factor:-1.05}
  for pct in $slowdowns; do
    [[ "$pct" =~ ^[1-9][0-9]*$ ]] ||
      { echo "check_regression.sh: --slowdown takes whole percents > 0 (with --injected, a list), not $pct" >&2; exit 2; }
  done
fi
slowdown=${slowdown:-25}
factor=${factor:-1.1}
[[ "$slowdown" =~ ^[0-9]+$ && "$identical" =~ ^[0-9]+$ && "$rounds" =~ ^[1-9][0-9]*$ ]] ||
  { echo "check_regression.sh: --slowdown, --identical and --rounds take whole numbers" >&2; exit 2; }
[ -n "$injected" ] && [ "$rounds" -lt 2 ] &&
  { echo "check_regression.sh: --injected needs --rounds >= 2 (the noise is measured between rounds)" >&2; exit 2; }
read -r -a asv <<< "${ASV:-asv}"
export DISAGMOE_BENCH_BATCH_SIZES=${DISAGMOE_BENCH_BATCH_SIZES:-16 256}
export DISAGMOE_BENCH_SEQ_LENS=${DISAGMOE_BENCH_SEQ_LENS:-128 1024}
if [ -n "$injected" ]; then
  export DISAGMOE_SERVING_BATCH_SIZES=${DISAGMOE_SERVING_BATCH_SIZES:-16 64}
  export DISAGMOE_SERVING_CONTEXTS=${DISAGMOE_SERVING_CONTEXTS:-1024}
  export DISAGMOE_TRACE_RUNNING=${DISAGMOE_TRACE_RUNNING:-64}
  export DISAGMOE_TRACE_PROMPTS=${DISAGMOE_TRACE_PROMPTS:-2048}
  export DISAGMOE_REPLAY_TRACES=${DISAGMOE_REPLAY_TRACES:-azure-conv}
  export DISAGMOE_SERVING_MODES=${DISAGMOE_SERVING_MODES:-pipelined}
fi
export DISAGMOE_TRACE_RUNNING=${DISAGMOE_TRACE_RUNNING:-64 256}
export DISAGMOE_TRACE_PROMPTS=${DISAGMOE_TRACE_PROMPTS:-2048 16384}
scratch=$(mktemp -d /tmp/disagmoe-regression.XXXXXX)
[ "$keep" = 1 ] || trap 'rm -rf "$scratch"' EXIT
scratch_clone "$src" "$scratch/repo" || exit 1
base=$(scratch_git rev-parse HEAD)

method_of() {  # op -> the manager methods it slows
  case "$1" in
    pack) echo pack_flash_attn_metadata ;;
    update) echo update_block_table ;;
    step) echo release_seqs update_block_table pack_flash_attn_metadata ;;
  esac
}
class_of() { [ "$1" = cpu ] && echo CPUBlockManager || echo GPUBlockManager; }
benchmarks_of() {  # the benchmarks that time an operation (asv --bench regex)
  case "$1" in
    pack) echo "PackFlashAttnMetadataDecode|RelativeTime|InverseSpeedup" ;;
    update) echo "UpdateBlockTable|RelativeTime|InverseSpeedup" ;;
    step) echo "bench_trace\.(RelativeStep|Step\.track_pipelined\()" ;;
  esac
}
expected_of() {  # rows that must be flagged: op backend -> regex over asv's table rows
  if [ "$1" = step ]; then echo "bench_trace\.RelativeStep\.track_pipelined\('$2-bs"
  else echo "RelativeTime\.track_$(method_of "$1")\('$2'"; fi
}
timed_of() {  # the op's absolute rows of that backend, shown beside the verdict
  case "$1" in
    pack) echo "PackFlashAttnMetadataDecode\.time_pack_flash_attn_metadata\('$2'" ;;
    update) echo "UpdateBlockTable[A-Za-z]*\.time_update_block_table\('$2'" ;;
    step) echo "bench_trace\.Step\.track_pipelined\('$2-bs" ;;
  esac
}

slowdown_commit() {  # backend op -> the commit's hash
  local backend=$1 op=$2 methods class
  methods=$(method_of "$op"); class=$(class_of "$backend")
  scratch_git checkout -q -B "slow-$backend-$op" "$base"
  cat >> "$scratch_repo/disagmoe/block_manager/$backend.py" <<EOF


# Artificial regression (scripts/check_regression.sh): $methods $slowdown% slower.
# The first of these calls after a synchronize() notes when it started; the
# synchronize() that ends the timed region (every benchmark ends each timed call, or
# pipelined window, with one) busy-waits $slowdown% of the time from that start to the
# device being done, so the calls' structure (no extra synchronise) stays as it was.
import time as _time  # noqa: E402

_slow_started: dict[int, float] = {}


def _slowed(method):
    def slowed(self, *args, **kwargs):
        _slow_started.setdefault(id(self), _time.perf_counter())
        return method(self, *args, **kwargs)
    return slowed


def _slowed_synchronize(synchronize):
    def slowed(self):
        synchronize(self)
        start = _slow_started.pop(id(self), None)
        if start is not None:
            until = start + (1 + $slowdown / 100) * (_time.perf_counter() - start)
            while _time.perf_counter() < until:
                pass
    return slowed


for _name in "$methods".split():
    setattr($class, _name, _slowed(getattr($class, _name)))
$class.synchronize = _slowed_synchronize($class.synchronize)
EOF
  scratch_git commit -q -am "slowdown: $backend $op $slowdown% slower" && scratch_git rev-parse HEAD
}

cd "$scratch_repo" || exit 1
"${asv[@]}" machine --yes --machine "$machine" >/dev/null || exit 1
echo "scratch clone $scratch_repo; machine $machine; $rounds rounds; factor $factor"
echo "grid: batch sizes $DISAGMOE_BENCH_BATCH_SIZES x seq lens $DISAGMOE_BENCH_SEQ_LENS;" \
  "trace: running $DISAGMOE_TRACE_RUNNING x prompts $DISAGMOE_TRACE_PROMPTS; baseline $base"

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
count() { tr ',' ' ' <<< "$1" | wc -w; }
points() {  # op backend -> how many rows its verdict benchmark has for that backend
  if [ "$1" = step ]; then  # every variant of the backend, over the trace grid
    local nv
    nv=$(cd "$scratch_repo" && python3 -c "import benchmarks.serving as s; print(sum(v.startswith('$2-bs') for v in s.VARIANTS))")
    echo $((nv * $(count "$DISAGMOE_TRACE_RUNNING") * $(count "$DISAGMOE_TRACE_PROMPTS")))
  else
    echo $(($(count "$DISAGMOE_BENCH_BATCH_SIZES") * $(count "$DISAGMOE_BENCH_SEQ_LENS")))
  fi
}

if [ -n "$injected" ]; then
  serving="bench_(pipelined|trace|replay)\.RelativeStep"
  echo "injected regressions: $injected; serving grid: decode $DISAGMOE_SERVING_BATCH_SIZES x" \
    "$DISAGMOE_SERVING_CONTEXTS, trace $DISAGMOE_TRACE_RUNNING x $DISAGMOE_TRACE_PROMPTS," \
    "replay $DISAGMOE_REPLAY_TRACES; modes $DISAGMOE_SERVING_MODES; uniform: $slowdowns (%)"
  runs=()
  for kind in ${injected//,/ }; do
    if [ "$kind" = uniform ]; then for pct in $slowdowns; do runs+=("uniform-$pct"); done; else runs+=("$kind"); fi
  done
  verdicts=()
  for run in "${runs[@]}"; do
    kind=${run%-*}
    scratch_git checkout -q -B "injected-$run" "$base"
    if [ "$kind" = identical ]; then
      scratch_git commit -q --allow-empty -m "identical: an empty commit"
    else
      percent=(); [ "$kind" = uniform ] && percent=(--percent "${run#uniform-}")
      python3 -m scripts.inject_regression write "$kind" "$scratch_repo" "${percent[@]}" ||
        { echo "FAIL: could not write the $run regression"; exit 1; }
      scratch_git commit -q -am "injected: $run" || { echo "FAIL: could not commit the $run regression"; exit 1; }
    fi
    head=$(scratch_git rev-parse HEAD)
    log="$scratch/injected-$run.log"
    echo; echo "== injected: $run ($head), bench '$serving'"
    continuous "$serving" "$base" "$head" "$log"
    base_file=$(ls "results/$machine/${base:0:8}"-*.json 2>/dev/null | head -n 1)
    head_file=$(ls "results/$machine/${head:0:8}"-*.json 2>/dev/null | head -n 1)
    if [ -z "$base_file" ] || [ -z "$head_file" ]; then
      echo "FAIL: asv wrote no results for $run"; exit 1
    fi
    python3 -m scripts.verdict_noise --rounds "$rounds" --factor "$factor" --bench "$serving" --base "$base_file" \
      --head "$head_file" --json "$scratch/verdict-$run.json"
    verdicts+=("$run=$scratch/verdict-$run.json")
  done
  echo; echo "== what the verdicts saw (ratio = HEAD over baseline; MDC = the run's minimum detectable change)"
  python3 -m scripts.inject_regression table "${verdicts[@]}"
  rc=$?
  [ "$keep" = 1 ] && echo "kept $scratch"
  [ $rc = 0 ] && { echo; echo "check_regression: OK"; exit 0; }
  echo; echo "check_regression: FAILED"; exit 1
fi

ok=1
n=0
for backend in $backends; do
  for op in $ops; do
    n=$((n + 1))
    slow=$(slowdown_commit "$backend" "$op") || { echo "FAIL: could not commit the slowdown"; exit 1; }
    log="$scratch/slowdown-$backend-$op.log"
    expected=$(expected_of "$op" "$backend")
    echo; echo "== $n. baseline -> $backend $op ($(method_of "$op")) $slowdown% slower ($slow):" \
      "expect all $(points "$op" "$backend") of its verdict rows flagged, exit non-zero"
    continuous "$(benchmarks_of "$op")" "$base" "$slow" "$log"; rc=$?
    flagged=$(worse "$log" | grep -cE "$expected")
    if [ $rc -ne 0 ] && [ "$flagged" -eq "$(points "$op" "$backend")" ]; then
      echo "PASS: the slowdown is reported at $flagged of $(points "$op" "$backend") verdict rows"
    else
      echo "FAIL: $flagged of $(points "$op" "$backend") verdict rows flagged, exit code $rc"; ok=0
    fi
    echo "its absolute-time benchmarks: $(worse "$log" | grep -cE "$(timed_of "$op" "$backend")") rows flagged"
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
