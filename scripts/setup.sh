#!/usr/bin/env bash
# Sets up a fresh clone: torch (CPU build unless one is installed), then the
# package with its test and benchmark extras. TORCH_SPEC picks another torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --upgrade pip setuptools wheel pybind11
if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
python3 -m pip install -q --no-build-isolation -e ".[test,bench]"
