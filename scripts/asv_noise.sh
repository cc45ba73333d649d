#!/usr/bin/env bash
# How much the suite's numbers move between runs of the same code: runs the whole suite
# RUNS times on the working tree (committed in a scratch clone under /tmp, so this
# checkout's results/ is untouched), keeps each run's results file, and prints every
# benchmark's spread between the runs (scripts/asv_spread.py).
#
#   scripts/asv_noise.sh [--runs N] [--max PCT] [--out DIR] [--machine NAME] [-- ASV_RUN_ARGS...]
#
# --runs     how many runs (default 3)
# --max      the spread (max - min over the runs' values, over their median) that a
#            benchmark may show, in percent (default 5); exit 1 when one shows more
# --out      where the runs' results files and the spread table go (default ./out/noise)
# --machine  asv machine name (default ASV_MACHINE, else noise-<host>)
# ASV_RUN_ARGS go to every `asv run` (e.g. --bench REGEX, -a rounds=2).
# On the offline GPU machine: ASV="$PWD/scripts/asv_gpu.sh" scripts/asv_noise.sh
set -uo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$src/scripts/lib/scratch.sh"
runs=3
max=5
out=$PWD/out/noise
machine=${ASV_MACHINE:-noise-$(hostname -s)}
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --max) max=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --machine) machine=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "asv_noise.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "asv_noise.sh: --runs takes a positive whole number, not $runs" >&2; exit 2; }
read -r -a asv <<< "${ASV:-asv}"
mkdir -p "$out" && out=$(cd "$out" && pwd)
scratch=$(mktemp -d /tmp/disagmoe-noise.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
scratch_clone "$src" "$scratch/repo" || exit 1
commit=$(scratch_git rev-parse HEAD)
cd "$scratch_repo" || exit 1
"${asv[@]}" machine --yes --machine "$machine" >/dev/null || exit 1
echo "asv_noise: $runs runs of the working tree of $src (scratch commit $commit), machine $machine"
for i in $(seq 1 "$runs"); do
  start=$SECONDS
  "${asv[@]}" run --machine "$machine" "$@" "$commit^!" > "$out/run-$i.log" 2>&1 ||
    { echo "asv_noise: run $i failed:"; tail -30 "$out/run-$i.log"; exit 1; }
  file=$(ls results/"$machine"/"${commit:0:8}"-*.json)
  cp "$file" "$out/run-$i.json"
  rm "$file"  # the next run starts from nothing
  echo "run $i: $((SECONDS - start)) s"
done
python3 "$src/scripts/asv_spread.py" --max "$max" "$out"/run-*.json | tee "$out/spread.md"
