#!/usr/bin/env bash
# The main job: the asv suite on the tip of main, then the HTML site (.asv/html: one site
# per machine, working offline; scripts/publish_site.py). The machine is named after the
# GPU card (or cpu-<host> when the gpu backend runs on torch's CPU device); ASV_MACHINE
# overrides. Extra arguments go to `asv run`. asv runs under the same python3 as this
# script, so its environment sees that Python's torch (scripts/asv_torch_site.py).
# Exit code: 0 when every benchmark was measured, asv's (or 1) when some or all failed.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
. scripts/lib/machine_name.sh
machine=$(machine_name python3)
python3 -m asv machine --yes --machine "$machine" >/dev/null
marker=$(mktemp) && trap 'rm -f "$marker"' EXIT
status=0
# asv's two lines per skipped grid point folded into one line per reason, at the end
python3 -m asv run --machine "$machine" --show-stderr "$@" | python3 scripts/lib/skips.py || status=$?
took=$((SECONDS - start))
# What this run measured: the results files it wrote, benchmarks with at least one value.
summary=$(python3 - "$marker" "results/$machine" <<'PY'
import json, os, sys
marker, folder = sys.argv[1:]
since = os.path.getmtime(marker)
files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".json")
         and f != "machine.json" and os.path.getmtime(os.path.join(folder, f)) >= since] if os.path.isdir(folder) else []
total = measured = 0
failed = []
for path in files:
    for name, row in json.load(open(path))["results"].items():
        values = row[0] if isinstance(row[0], list) else [row[0]]
        total += 1
        if any(v is not None for v in values):
            measured += 1
        else:
            failed.append(name)
commits = " ".join(os.path.basename(f)[:8] for f in files)
print(measured, total, commits or "-", " ".join(sorted(set(failed))[:5]))
PY
)
read -r measured total commits failed <<< "$summary"
python3 scripts/publish_site.py || { [ "$status" != 0 ] || status=1; }
# asv writes the grid it found into results/benchmarks.json, which git keeps for the whole
# grid (tests/test_bench_tools.py checks): a smaller grid's (DISAGMOE_* variables) goes back.
if env | grep -q '^DISAGMOE_\(BENCH\|SERVING\|TRACE\)_' &&
   ! git diff --quiet -- results/benchmarks.json 2>/dev/null; then
  if git checkout -q -- results/benchmarks.json 2>/dev/null; then
    echo "run_suite.sh: results/benchmarks.json put back as committed (it described this run's smaller grid)"
  fi
fi
if [ "$measured" = 0 ]; then
  echo "run_suite.sh: NOTHING WAS MEASURED on machine $machine (asv exit code $status; the lines above" \
       "say why). The site shows only what results/ held before." >&2
  exit $(( status == 0 ? 1 : status ))
elif [ "$measured" != "$total" ]; then
  echo "run_suite.sh: $((total - measured)) of $total benchmarks FAILED on machine $machine (commit $commits;" \
       "first: $failed); asv exit code $status" >&2
  exit $(( status == 0 ? 1 : status ))
fi
echo "run_suite.sh: measured $measured of $total benchmarks of commit $commits on machine $machine in" \
     "$((took / 60)) min $((took % 60)) s; results in results/$machine/ (git keeps only the GPU history)"
echo "run_suite.sh: a verdict between two commits: scripts/verdicts.sh BASE HEAD, which measures this" \
     "machine's own noise as it runs and says when it is beyond asv's factor"
exit "$status"
