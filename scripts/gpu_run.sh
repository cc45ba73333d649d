#!/usr/bin/env bash
# One visit to the offline GPU machine: build, then the stages named on the command line.
# Each stage writes its logs and results into $OUT/gpu-run (default ./out/gpu-run), and
# after each stage that folder is packed into $OUT/gpu-run.tar.gz, so that a visit cut
# short still brings back what it finished.
#
#   scripts/gpu_run.sh tests probe cli asv
#
#   tests     the whole test suite, one pytest process per module, 8 at a time
#             (TESTS="tests/test_x.py ..." picks modules)
#   suite     the whole test suite in one pytest run, -n 14 workers (pytest-xdist), -v into
#             suite.log, cut at SUITE_SECONDS (default 540). The suite outgrew one call: SUITE_SHARD=k/n
#             runs every n-th test module from the k-th (two calls: 1/2, then 2/2); PYTEST_ARGS
#             replaces the modules
#   steps     scripts/probes/step_probe.py: every design's pipelined step beside its floors
#             (STEP_ARGS replaces the default points)
#   compare   scripts/compare_commits.sh $COMPARE_OLD (default b7f8057) HEAD, 3 rounds
#             (COMPARE_ARGS: the probe's arguments)
#   probe     scripts/probes/perf_probe.py: floors and every case of all variants, whole grid
#   floors    scripts/probes/perf_probe.py: floors, and the cpu and gpu-triton-graphs variants at
#             B = 256, L = 128 and 1024 (the copy floors beside the packs they bound)
#   sweep     scripts/probes/pack_sweep.py: the pack kernel's launch shapes side by side
#   cli       python -m disagmoe_bench, whole grid, JSON beside the table
#   serving   python -m disagmoe_bench --workload decode, then trace: the serving grid in every
#             timing mode, the floors, JSON and the crossover maps (SERVING_ARGS adds arguments)
#   replays   python -m disagmoe_bench --workload azure-conv, then mooncake: the bundled traces'
#             busiest stretch through every variant and mode, attention in the loop (REPLAY_ARGS
#             adds arguments)
#   prefix    python -m disagmoe_bench --prefix-cache off, miss and on over mooncake and
#             servegen-offline, running cap 256, pipelined and busy, the bs16 variants, no
#             attention, pools of 32768 blocks (the default) and 524288 (holds Mooncake's
#             working set) (PREFIX_TRACES, PREFIX_POOLS pick; PREFIX_ARGS adds arguments)
#   replay-map  the bundled traces at running caps 64 256 1024 and rates x1 x8, pipelined, no
#             attention: the crossover on production traffic
#   asv-replay  benchmarks/bench_replay.py's measurement (its setup_cache) outside asv, JSON
#   lengths   the synced decode at L <= 1K with lengths growing and cycling, side by side
#   goals     the serving points the performance goals name (docs/performance.md), every mode
#   asv       the suite on HEAD (scripts/gpu_history.sh HEAD^!): results/<card>/, the site
#   quick     asv run --quick over the whole grid on HEAD, results discarded (its duration;
#             the first asv stage of a visit also makes the environment and builds)
#   full      asv run over the whole grid on HEAD, results discarded (its duration)
#   history   scripts/gpu_history.sh: the commits of the history rule not yet measured
#   verdicts  scripts/check_regression.sh: a 20% slowdown of each operation of each
#             backend, and 3 identical-commit checks, 2 interleaved rounds, on the grid
#             VERDICT_BATCH_SIZES (default "16 256") x VERDICT_SEQ_LENS (default 1024)
# HISTORY_ARGS and VERDICT_ARGS add arguments to those stages' scripts. The stages phases,
# drift and noise were retired with their probes (docs/history/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/git_from_bundle.sh
top=${OUT:-$PWD/out}
out=$top/gpu-run
mkdir -p "$out"
pack() { tar -czf "$top/gpu-run.tar.gz" -C "$top" gpu-run; }
keep_results() { rm -rf "$out/results" && cp -r results "$out/results"; }
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v "^WARNING" | tail -3
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
git log -1 --format='HEAD %H %s' | tee -a "$out/gpu.txt"
asv=$PWD/scripts/asv_gpu.sh
status=0
for stage in "$@"; do
  echo "== $stage ($(date -u +%T))"
  start=$SECONDS
  case "$stage" in
    tests) ls ${TESTS:-tests/test_*.py} | xargs -P 8 -I{} sh -c \
             'python3 -m pytest -q -p no:cacheprovider {} > "$0/tests-$(basename {} .py).log" 2>&1;
              echo "{}: exit $? $(tail -1 "$0/tests-$(basename {} .py).log")"' "$out" | tee "$out/tests.txt"
           ! grep -qv ": exit 0 " "$out/tests.txt" ;;
    suite) shard=${SUITE_SHARD:-1/1}
           files=$(ls tests/test_*.py | awk -v k="${shard%/*}" -v n="${shard#*/}" '(NR - 1) % n == k - 1')
           timeout ${SUITE_SECONDS:-540} python3 -m pytest -n 15 -p no:cacheprovider -v -rfE --durations=40 \
             ${PYTEST_ARGS:-$files} > "$out/suite.log" 2>&1
           rc=$?; grep -E "^(FAILED|ERROR)" "$out/suite.log" | head -40; tail -3 "$out/suite.log"; [ $rc = 0 ] ;;
    steps) python3 scripts/probes/step_probe.py ${STEP_ARGS:---batch-sizes 16 256 --contexts 1024 16384 --trace 64 256} \
             --json "$out/steps.jsonl" 2>&1 | tee "$out/steps.log" ;;
    compare) PROBE_ARGS=${COMPARE_ARGS:---designs cpu gpu --batch-sizes 16 256 --contexts 1024} OUT="$out" \
               scripts/compare_commits.sh "${COMPARE_OLD:-b7f8057}" HEAD 3 > "$out/compare.log" 2>&1; rc=$?
             tail -20 "$out/compare.log"; [ $rc = 0 ] ;;
    probe) python3 -m scripts.probes.perf_probe --batch-sizes 16 32 64 128 256 --seq-lens 128 256 512 1024 \
             --iterations 200 --json "$out/probe.json" > "$out/probe.log" 2>&1 &&
           python3 -m scripts.probes.perf_probe --report "$out/probe.json" > "$out/probe-report.md" && tail -25 "$out/probe-report.md" ;;
    floors) python3 -m scripts.probes.perf_probe --batch-sizes 256 --seq-lens 128 1024 --iterations 400 \
              --variants cpu gpu-triton-graphs --json "$out/floors.json" > "$out/floors.log" 2>&1 &&
            python3 -m scripts.probes.perf_probe --report "$out/floors.json" > "$out/floors-report.md" && head -3 "$out/floors-report.md" ;;
    sweep) python3 -m scripts.probes.pack_sweep --json "$out/sweep.json" > "$out/sweep.log" 2>&1; rc=$?
           cat "$out/sweep.log"; [ $rc = 0 ] ;;
    cli) python3 -m disagmoe_bench --output "$out/cli.json" 2>"$out/cli.err" > "$out/cli.txt" && tail -12 "$out/cli.txt" ;;
    serving) rc=0
             for w in decode trace; do
               python3 -m disagmoe_bench --workload $w ${SERVING_ARGS:-} --output "$out/serving-$w.json" \
                 --plot "$out/serving-$w.png" > "$out/serving-$w.txt" 2> "$out/serving-$w.err" || rc=1
               grep -v "^\[" "$out/serving-$w.txt" | cut -c1-220
             done; [ $rc = 0 ] ;;
    goals) rc=0
           python3 -m disagmoe_bench --workload decode --batch-sizes 16 256 1024 --contexts 1024 16384 65536 \
             --output "$out/goals-decode.json" > "$out/goals-decode.txt" 2>&1 || rc=1
           python3 -m disagmoe_bench --workload trace --running 64 256 512 --prompts 2048 16384 \
             --output "$out/goals-trace.json" > "$out/goals-trace.txt" 2>&1 || rc=1
           grep -v "^\[" "$out/goals-decode.txt" "$out/goals-trace.txt" | cut -c1-240; [ $rc = 0 ] ;;
    replays) rc=0
             for w in azure-conv mooncake; do
               python3 -m disagmoe_bench --workload $w ${REPLAY_ARGS:-} --output "$out/replay-$w.json" \
                 > "$out/replay-$w.txt" 2> "$out/replay-$w.err" || rc=1
               grep -v "^\[" "$out/replay-$w.txt" | cut -c1-220
             done; [ $rc = 0 ] ;;
    prefix) rc=0
            for w in ${PREFIX_TRACES:-mooncake servegen-offline}; do
              for pool in ${PREFIX_POOLS:-32768 524288}; do
                for p in off miss on; do
                  name=prefix-$w-$pool-$p
                  timeout 150 python3 -m disagmoe_bench --workload $w --prefix-cache $p --running 256 \
                    --pool-blocks $pool --model-layers 0 --timing pipelined busy \
                    --variants cpu-bs16 gpu-bs16 hybrid-bs16 ${PREFIX_ARGS:-} \
                    --output "$out/$name.json" > "$out/$name.txt" 2> "$out/$name.err" || rc=1
                  grep -v "^\[" "$out/$name.txt" | grep -E "^  |bs16" | cut -c1-160
                done
              done
            done; [ $rc = 0 ] ;;
    replay-map) rc=0
                for w in mooncake azure-conv; do
                  for r in 1 8; do
                    python3 -m disagmoe_bench --workload $w --timing pipelined --running 64 256 1024 --rate-scale $r \
                      --model-layers 0 --windows 3 --output "$out/map-$w-x$r.json" > "$out/map-$w-x$r.txt" \
                      2> "$out/map-$w-x$r.err" || rc=1
                    grep -A14 "^Trace " "$out/map-$w-x$r.txt" | cut -c1-110
                  done
                done; [ $rc = 0 ] ;;
    asv-replay) python3 -c "from benchmarks import bench_replay; import json, sys
c = bench_replay.setup_cache(); json.dump({str(k): v for k, v in c['points'].items()}, open(sys.argv[1], 'w'))" \
                  "$out/asv-replay.json" > "$out/asv-replay.log" 2>&1; rc=$?; tail -3 "$out/asv-replay.log"; [ $rc = 0 ] ;;
    lengths) rc=0
             for l in grow cycle; do
               python3 -m disagmoe_bench --workload decode --timing synced --lengths $l --batch-sizes 16 256 \
                 --contexts 128 1024 --output "$out/lengths-$l.json" > "$out/lengths-$l.txt" 2>&1 || rc=1
               grep -A8 "^decode" "$out/lengths-$l.txt" | cut -c1-220
             done; [ $rc = 0 ] ;;
    asv) scripts/gpu_history.sh HEAD^! > "$out/asv.log" 2>&1; rc=$?; grep "gpu_history.sh:" "$out/asv.log"
         keep_results; [ $rc = 0 ] ;;
    quick) "$asv" run --quick --dry-run HEAD^! > "$out/quick-$start.log" 2>&1; rc=$?; tail -3 "$out/quick-$start.log"; [ $rc = 0 ] ;;
    full) "$asv" run --dry-run HEAD^! > "$out/full.log" 2>&1; rc=$?; tail -3 "$out/full.log"; [ $rc = 0 ] ;;
    history) scripts/gpu_history.sh ${HISTORY_ARGS:-} > "$out/history.log" 2>&1; rc=$?; grep "gpu_history.sh:" "$out/history.log"
             keep_results; [ $rc = 0 ] ;;
    verdicts) DISAGMOE_BENCH_BATCH_SIZES=${VERDICT_BATCH_SIZES:-16 256} DISAGMOE_BENCH_SEQ_LENS=${VERDICT_SEQ_LENS:-1024} \
              ASV=$asv scripts/check_regression.sh --backend both --op both --slowdown 20 --identical 3 --rounds 2 \
                ${VERDICT_ARGS:-} > "$out/verdicts.log" 2>&1; rc=$?
              grep -E "^== |^PASS|^FAIL|^note|exit code|check_regression" "$out/verdicts.log"; [ $rc = 0 ] ;;
    phases|drift|noise) echo "gpu_run.sh: stage $stage was retired with its probe (docs/history/README.md)" >&2
                        false ;;
    *) echo "gpu_run.sh: unknown stage $stage" >&2; false ;;
  esac
  rc=$?
  echo "-- $stage: exit $rc, $((SECONDS - start)) s" | tee -a "$out/stages.txt"
  [ $rc = 0 ] || status=1
  pack
done
exit $status
