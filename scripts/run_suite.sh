#!/usr/bin/env bash
# The main job: the asv suite on the tip of main, then the HTML site (.asv/html).
# The machine is named after the GPU card (or cpu-<host> when the gpu backend runs on
# torch's CPU device); ASV_MACHINE overrides. Extra arguments go to `asv run`.
set -euo pipefail
cd "$(dirname "$0")/.."
machine=${ASV_MACHINE:-$(python3 -c '
import socket, re, torch
if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0).lower().removeprefix("nvidia ")
    print(re.sub("[^a-z0-9]+", "-", name).strip("-"))
else:
    print("cpu-" + socket.gethostname().split(".")[0])')}
asv machine --yes --machine "$machine" >/dev/null
asv run --machine "$machine" --show-stderr "$@" || status=$?
asv publish
echo "site: .asv/html (asv preview serves it); machine $machine"
exit ${status:-0}
