#!/usr/bin/env bash
# asv on the offline GPU machine (shared/gpu-box.md): torch preinstalled in a virtual
# environment, no package index, asv and its needs brought as wheels in .wheels/.
#
#   scripts/asv_gpu.sh run                      # any asv command line
#   scripts/asv_gpu.sh continuous main HEAD
#   scripts/asv_gpu.sh publish
#
# Installs asv from the wheels into .asv/tools once (put on PYTHONPATH), then runs it with
#   VIRTUALENV_SYSTEM_SITE_PACKAGES=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=<wheels>
#   DISAGMOE_TORCH_SITE=<the site-packages folder holding $PYTHON's torch>
# and, for `run` and `continuous`, --machine named after the card (override: ASV_MACHINE).
# `publish` is scripts/publish_site.py: one site per machine, working offline, its
# libraries from .sitelibs/ (filled on a connected machine: docs/site.md).
# PYTHON (default python3) is the interpreter with torch; DISAGMOE_WHEELS, DISAGMOE_ASV_TOOLS
# move the folders.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
wheels=${DISAGMOE_WHEELS:-$root/.wheels}
tools=${DISAGMOE_ASV_TOOLS:-$root/.asv/tools}

if ! PYTHONPATH="$tools" "$python" -c "import asv, asv_runner, virtualenv" 2>/dev/null; then
  [ -d "$wheels" ] || { echo "asv_gpu.sh: no wheel folder $wheels (docs/benchmarking.md says how to fill it)" >&2; exit 2; }
  "$python" -m pip install -q --no-index --find-links "$wheels" --target "$tools" \
    asv==0.6.6 asv-runner==0.3.2 virtualenv "importlib-metadata==8.7.0"
fi

export PYTHONPATH="$tools${PYTHONPATH:+:$PYTHONPATH}"
export VIRTUALENV_SYSTEM_SITE_PACKAGES=1 PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheels"
export DISAGMOE_TORCH_SITE=${DISAGMOE_TORCH_SITE:-$("$python" -c \
  'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')}

. "$root/scripts/lib/machine_name.sh"
ASV_MACHINE=$(machine_name "$python")

case "${1:-}" in
  publish)
    # one site per machine, with the libraries from .sitelibs/ (scripts/publish_site.py)
    shift
    echo "asv_gpu.sh: scripts/publish_site.py $*" >&2
    exec "$python" "$root/scripts/publish_site.py" "$@" ;;
  run|continuous)
    if [[ " $* " != *" --machine"* && " $* " != *" -m "* ]]; then
      # The name alone: asv files results under every machine.json field, so a field added
      # later would start a second series beside the history in results/ (results/README.md
      # describes the machine).
      "$python" -m asv machine --yes --machine "$ASV_MACHINE" >/dev/null
      cmd=$1; shift
      set -- "$cmd" --machine "$ASV_MACHINE" "$@"
    fi ;;
esac
echo "asv_gpu.sh: machine $ASV_MACHINE, torch from $DISAGMOE_TORCH_SITE, wheels from $wheels" >&2
exec "$python" -m asv "$@"
