#!/usr/bin/env bash
# Builds the C++ core with AddressSanitizer + UndefinedBehaviorSanitizer in a
# scratch copy of the tree and runs the whole test suite against it.
# Usage: scripts/sanitize.sh [pytest args...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/disagmoe-sanitize.XXXXXX)
trap 'rm -rf "$work"' EXIT
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work")
cd "$work"
DISAGMOE_SANITIZE=1 python3 setup.py -q build_ext --inplace 2>&1 | grep -v "^warning\|UserWarning\|warnings.warn" || true
runtime="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Leak checks are off: the interpreter and torch keep allocations alive at exit.
LD_PRELOAD="$runtime" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH="$work" \
  python3 -m pytest -q -p no:cacheprovider "$@" tests
