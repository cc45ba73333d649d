#!/usr/bin/env bash
# Sets up a fresh clone: torch (CPU build unless one is installed), then the
# package with its test and benchmark extras, then the libraries of the HTML site
# (npm packages, so that the site works without the internet). TORCH_SPEC picks
# another torch. Works for the Python that `python3` is: a venv's, a conda
# environment's or the system's.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --upgrade pip setuptools wheel pybind11
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
python3 -m pip install -q --no-build-isolation -e ".[test,bench]"
if command -v npm >/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
elif [ -d .sitelibs ]; then
  echo "setup.sh: no npm; the site takes its libraries from .sitelibs/"
else
  echo "setup.sh: WARNING: no npm and no .sitelibs/ folder: the HTML site will load its libraries" \
       "from CDNs and stay blank without the internet (docs/site.md)" >&2
fi
