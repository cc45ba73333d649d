#!/usr/bin/env bash
# One command on an offline GPU machine with a preinstalled torch: asv from the wheels
# in .wheels/ (scripts/asv_gpu.sh), the suite over a set of commits, then the site (scripts/publish_site.py).
# Results land in results/<machine>/ (kept in git: results/README.md), the site in
# .asv/html; with --out DIR both are also packed into DIR/history.tar.gz.
#
#   scripts/gpu_history.sh                 # the history rule below, commits not yet measured
#   scripts/gpu_history.sh HEAD^!          # one commit (any asv range: main~5..main, HASH^!)
#   scripts/gpu_history.sh --list          # print the commits the rule picks, run nothing
#   scripts/gpu_history.sh --out DIR ...   # also pack results and site into DIR
#   scripts/gpu_history.sh -a rounds=1     # arguments after the range (or instead of it,
#                                          # starting with -) go to asv run
#
# The history rule: every commit of main from the first that holds the suite
# (asv.conf.json) on, that changes what the suite measures: csrc/, disagmoe/, disagmoe_bench/, setup.py or
# pyproject.toml. A commit that changes only docs, tests, scripts or the benchmarks
# installs the same package as its parent (asv times every commit with the benchmarks of
# the working tree), so it is skipped. Commits that already have results for this
# machine are skipped too (asv --skip-existing-commits), so a second call adds only new
# commits. ASV_MACHINE overrides the machine name (default: the card, e.g. h100-80gb-hbm3).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=
list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --list) list=1; shift ;;
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
. scripts/lib/git_from_bundle.sh

history_commits() {
  local first
  first=$(git log --reverse --format=%H main -- asv.conf.json | head -1)
  [ -n "$first" ] || { echo "gpu_history.sh: no commit of main holds asv.conf.json" >&2; return 1; }
  git log --format=%H "$first^..main" -- csrc disagmoe disagmoe_bench setup.py pyproject.toml  # newest first
}

if [ $# -eq 0 ] || [[ "$1" == -* ]]; then
  hashes=$(mktemp)
  trap 'rm -f "$hashes"' EXIT
  history_commits > "$hashes" || exit 1
  if [ "$list" = 1 ]; then git log --no-walk=unsorted --format='%h %ad %s' --date=short $(cat "$hashes"); exit 0; fi
  set -- "HASHFILE:$hashes" --skip-existing-commits "$@"
  echo "gpu_history.sh: $(wc -l < "$hashes") commits by the history rule (--list shows them)"
fi

start=$SECONDS
status=0
"$root/scripts/asv_gpu.sh" run --show-stderr "$@" || status=$?
echo "gpu_history.sh: asv run took $((SECONDS - start)) s (exit code $status)"
"$root/scripts/asv_gpu.sh" publish || status=$?
machines=$(cd results && ls -d */ 2>/dev/null | tr -d / | tr '\n' ' ')
echo "gpu_history.sh: results in $root/results ($machines), site in $root/.asv/html (asv preview serves it)"
if [ -n "$out" ]; then
  mkdir -p "$out"
  tar -czf "$out/history.tar.gz" results .asv/html && echo "gpu_history.sh: packed into $out/history.tar.gz"
fi
exit $status
