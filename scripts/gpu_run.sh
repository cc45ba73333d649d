#!/usr/bin/env bash
# One visit to the offline GPU machine: build, then the stages named on the command line,
# each writing its log and results under $OUT (default: ./out).
#
#   scripts/gpu_run.sh tests probe cli asv
#
#   tests  the GPU test modules (set TESTS to choose others; "tests" for the whole suite)
#   probe  scripts/perf_probe.py: floors and every case of both backends, whole grid
#   cli    python -m disagmoe.bench, whole grid, JSON beside the table
#   asv    the asv suite on HEAD (scripts/asv_gpu.sh) and asv publish; results copied out
set -uo pipefail
cd "$(dirname "$0")/.."
# A working tree whose git directory arrived without its history (seen on the lent
# machine) is given one from a bundle made beforehand: git bundle create .scratch/repo.bundle --all
if ! git rev-parse -q --verify HEAD >/dev/null 2>&1 && [ -f .scratch/repo.bundle ]; then
  rm -rf .git && git clone -q --bare .scratch/repo.bundle .git && git config --bool core.bare false && git reset -q
fi
out=${OUT:-$PWD/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v "^WARNING" | tail -3
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
status=0
for stage in "$@"; do
  echo "== $stage"
  case "$stage" in
    tests) python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_gpu_sync_free.py tests/test_pack_flash_attn_metadata.py tests/test_attention.py} 2>&1 | tee "$out/tests.log" | tail -5 ;;
    probe) python3 scripts/perf_probe.py --batch-sizes 16 32 64 128 256 --seq-lens 128 256 512 1024 \
             --iterations 200 --json "$out/probe.json" 2>&1 | tee "$out/probe.log" ;;
    cli) python3 -m disagmoe.bench --output "$out/cli.json" 2>"$out/cli.err" | tee "$out/cli.log" ;;
    asv) scripts/asv_gpu.sh run --show-stderr HEAD^! 2>&1 | tee "$out/asv.log" | tail -40
         scripts/asv_gpu.sh publish >/dev/null 2>&1
         machine=$(ls .asv/results 2>/dev/null | grep -v benchmarks.json | head -1)
         for f in .asv/results/"$machine"/*.json; do cp "$f" "$out/asv-$(basename "$f")"; done ;;
    *) echo "gpu_run.sh: unknown stage $stage" >&2; status=2 ;;
  esac
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
done
exit $status
