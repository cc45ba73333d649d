#!/usr/bin/env bash
# The verdict between two commits, and this machine's noise measured in the same run:
# `asv continuous` over the verdict benchmarks (RelativeTime, and InverseSpeedup of the
# seed's suite and of the serving benchmarks), ROUNDS processes per commit taking turns,
# then scripts/verdict_noise.py on the results: how far each point moved from one process
# of a commit to the next, against asv's factor.
#
#   scripts/verdicts.sh [BASE [HEAD]] [-- ASV_CONTINUOUS_ARGS...]   # default: main HEAD
#
# BASE and HEAD are commits of this clone (a missing branch is taken from origin/); on
# main itself, where main and HEAD are one commit, compare HEAD~1 HEAD.
#
# ROUNDS (default 2, at least 2), FACTOR (default 1.1, asv's own); ASV (default
# `python3 -m asv`; scripts/asv_gpu.sh on the offline GPU machine). Results go to the
# machine <name>-verdicts and are removed afterwards, so they never join a history.
# Exit code: asv's (1 when a point got worse by more than the factor). A warning follows
# the verdict when the machine's own noise is beyond the factor.
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
factor=${FACTOR:-1.1}
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
trap 'rm -rf "$folder"' EXIT
"${asv[@]}" machine --yes --machine "$machine" >/dev/null || exit 2
echo "verdicts.sh: $base (${base_hash:0:8}) against $head (${head_hash:0:8}), $rounds processes a commit," \
     "factor $factor, machine $machine"
bench="RelativeTime|InverseSpeedup"
"${asv[@]}" continuous --machine "$machine" --bench "$bench" -a rounds="$rounds" \
  --interleave-rounds --factor "$factor" "$@" "$base_hash" "$head_hash"
status=$?
files=$(ls "$folder"/"${base_hash:0:8}"-*.json "$folder"/"${head_hash:0:8}"-*.json 2>/dev/null)
if [ -n "$files" ]; then
  python3 scripts/verdict_noise.py --rounds "$rounds" --factor "$factor" --bench "$bench" $files
else
  echo "verdicts.sh: no results were written: nothing to measure the noise with" >&2
fi
exit "$status"
