#!/usr/bin/env bash
# Compares the pipelined step of two commits as gpu-box.md says two versions compare:
# both installed side by side, run in alternating processes for several rounds, each
# process timing a host-only canary beside its steps (the VM's host speed moves between
# processes; a canary that moved says which rounds to trust).
#
#   scripts/compare_commits.sh OLD NEW [ROUNDS]         # 3 rounds by default
#   PROBE_ARGS="--designs cpu gpu --batch-sizes 16 256" scripts/compare_commits.sh b7f8057 HEAD
#
# Each commit is exported (git archive) to $TMPDIR/disagmoe-cmp/src-<sha> and installed
# with pip --no-deps --target into .../site-<sha> (offline: no build isolation). The probe
# is this checkout's scripts/probes/step_probe.py (public API only, so it runs on any
# commit), run from a neutral folder with PYTHONPATH set to one version at a time, NEW
# first in odd rounds and OLD first in even ones. Results: JSON lines in
# $OUT/compare/steps.jsonl (default ./out/compare), then the table of
# scripts/probes/compare_report.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: scripts/compare_commits.sh OLD NEW [ROUNDS]" >&2; exit 2; }
. scripts/lib/git_from_bundle.sh
old=$(git rev-parse --short=10 "$1^{commit}")
new=$(git rev-parse --short=10 "$2^{commit}")
rounds=${3:-3}
work=${TMPDIR:-/tmp}/disagmoe-cmp
out=${OUT:-$PWD/out}/compare
mkdir -p "$work" "$out"
cp scripts/probes/step_probe.py scripts/probes/compare_report.py "$work/"
install() {
  local sha=$1 site=$work/site-$1
  if [ ! -d "$site/disagmoe" ]; then
    rm -rf "$work/src-$sha" && mkdir -p "$work/src-$sha"
    git archive "$sha" | tar -x -C "$work/src-$sha"
    python3 -m pip install -q --no-build-isolation --no-deps --target "$site" "$work/src-$sha" \
      2>&1 | grep -v "^WARNING" | tail -3 || true
    [ -d "$site/disagmoe" ] || { echo "compare_commits.sh: could not install $sha" >&2; exit 1; }
  fi
}
install "$old"
install "$new"
results=$out/steps.jsonl
: > "$results"
cd "$work"
for ((round = 1; round <= rounds; round++)); do
  order="$new $old"
  [ $((round % 2)) = 0 ] && order="$old $new"
  for sha in $order; do
    echo "== round $round: $sha"
    PYTHONPATH="$work/site-$sha" python3 "$work/step_probe.py" ${PROBE_ARGS:-} --label "$sha" --json "$results"
  done
done
python3 "$work/compare_report.py" "$results" --old "$old" --new "$new" | tee "$out/report.md"
