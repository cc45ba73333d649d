#!/usr/bin/env bash
# The verdict between two commits, with the smallest change this run could have seen:
# `asv continuous` over the verdict set (benchmarks/verdict_set.py: RelativeTime, the
# InverseSpeedup of the seed's suite and of the serving benchmarks, and the serving
# benchmarks' RelativeStep, its median and its tail), ROUNDS processes per commit taking
# turns; then scripts/verdict_noise.py judges from the results: per benchmark, the minimum
# detectable change (how far identical code moved from one process of a commit to the
# next, in this run), and per point "slower" only beyond both the benchmark's factor
# (1.05 for the medians, 1.25 for the tail) and that change; where the change it could
# have seen is beyond the factor it says "inconclusive", never "no change".
#
#   scripts/verdicts.sh [BASE [HEAD]] [-- ASV_CONTINUOUS_ARGS...]   # default: main HEAD
#
# BASE and HEAD are commits of this clone (a missing branch is taken from origin/); on
# main itself, where main and HEAD are one commit, compare HEAD~1 HEAD.
#
# ROUNDS (default 2, at least 2), FACTOR (the medians' factor, default 1.05),
# TAIL_FACTOR (default 1.25); ASV (default `python3 -m asv`; scripts/asv_gpu.sh on the
# offline GPU machine). Results go to the machine <name>-verdicts and are removed
# afterwards, so they never join a history; the verdict itself is kept, as JSON, in
# .asv/verdicts/<name>.json (per benchmark: factor, minimum detectable change, points), and
# results/benchmarks.json, which asv rewrites for the grid it ran, is put back as it was.
# Exit code: the verdict's, not asv's: 1 when a point is slower beyond its factor and this
# run's noise, 3 when nothing is but some benchmark could not have seen a change of its
# factor (inconclusive), 0 when nothing moved and every benchmark could have seen it;
# 2 on bad arguments or when nothing was measured.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
. scripts/lib/machine_name.sh
base=main
head=HEAD
[ $# -gt 0 ] && [ "$1" != -- ] && { base=$1; shift; }
[ $# -gt 0 ] && [ "$1" != -- ] && { head=$1; shift; }
[ "${1:-}" = -- ] && shift
rounds=${ROUNDS:-2}
factor=${FACTOR:-1.05}
tail_factor=${TAIL_FACTOR:-1.25}
[[ "$rounds" =~ ^[0-9]+$ ]] && [ "$rounds" -ge 2 ] ||
  { echo "verdicts.sh: ROUNDS is a whole number >= 2 (the noise is measured between rounds), not $rounds" >&2; exit 2; }
# A commit of this clone: REF, else origin/REF (a clone of another branch has main only there)
commit_of() {
  local hash
  if hash=$(git rev-parse --verify -q "$1^{commit}"); then echo "$hash"
  elif hash=$(git rev-parse --verify -q "origin/$1^{commit}"); then
    echo "verdicts.sh: no branch $1 here: taking origin/$1" >&2; echo "$hash"
  else
    echo "verdicts.sh: no commit $1 in this clone (commits on HEAD here: $(git rev-list --count HEAD 2>/dev/null" \
         "|| echo 0)): a verdict compares two commits of it, e.g. scripts/verdicts.sh main HEAD on a branch," \
         "scripts/verdicts.sh HEAD~1 HEAD for the last commit" >&2
    return 1
  fi
}
base_hash=$(commit_of "$base") || exit 2
head_hash=$(commit_of "$head") || exit 2
[ "$base_hash" != "$head_hash" ] ||
  { echo "verdicts.sh: $base and $head are one commit, ${base_hash:0:8}: nothing to compare (on main itself," \
         "scripts/verdicts.sh HEAD~1 HEAD; for identical code, an empty commit on top)" >&2; exit 2; }
read -r -a asv <<< "${ASV:-python3 -m asv}"
machine="$(machine_name)-verdicts"
folder=results/$machine
rm -rf "$folder"
# asv rewrites results/benchmarks.json for the grid it ran: put the committed one back
listing_clean=$(git diff --quiet -- results/benchmarks.json 2>/dev/null && echo 1)
trap 'rm -rf "$folder"; [ -n "$listing_clean" ] && git checkout -q -- results/benchmarks.json 2>/dev/null' EXIT
"${asv[@]}" machine --yes --machine "$machine" >/dev/null || exit 2
echo "verdicts.sh: $base (${base_hash:0:8}) against $head (${head_hash:0:8}), $rounds processes a commit," \
     "factor $factor (tail $tail_factor), machine $machine"
bench=$(python3 -c "from benchmarks.verdict_set import VERDICTS; print(VERDICTS)")
"${asv[@]}" continuous --machine "$machine" --bench "$bench" -a rounds="$rounds" \
  --interleave-rounds --factor "$factor" "$@" "$base_hash" "$head_hash"
echo "verdicts.sh: asv continuous exit code $? (its table uses factor $factor for every benchmark;" \
     "the verdict below is the one to read)"
base_file=$(ls "$folder"/"${base_hash:0:8}"-*.json 2>/dev/null | head -n 1)
head_file=$(ls "$folder"/"${head_hash:0:8}"-*.json 2>/dev/null | head -n 1)
if [ -z "$base_file" ] || [ -z "$head_file" ]; then
  echo "verdicts.sh: asv wrote no results for both commits: no verdict" >&2
  exit 2
fi
mkdir -p .asv/verdicts
python3 -m scripts.verdict_noise --rounds "$rounds" --factor "$factor" --tail-factor "$tail_factor" \
  --bench "$bench" --base "$base_file" --head "$head_file" --json ".asv/verdicts/${machine%-verdicts}.json"
