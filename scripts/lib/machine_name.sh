# Sourced by the scripts that run asv (run_suite.sh, asv_gpu.sh, verdicts.sh): the asv
# machine name. asv keys results by it, so it says what ran the gpu backend: the GPU
# card (h100-80gb-hbm3), or cpu-<host> where the gpu backend runs on torch's CPU device.
#
#   machine_name [PYTHON]   print $ASV_MACHINE, else the name from PYTHON's torch (python3)
machine_name() {
  if [ -n "${ASV_MACHINE:-}" ]; then echo "$ASV_MACHINE"; return; fi
  "${1:-python3}" -c '
import re, socket, torch
if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0).lower().removeprefix("nvidia ")
    print(re.sub("[^a-z0-9]+", "-", name).strip("-"))
else:
    print("cpu-" + socket.gethostname().split(".")[0])'
}
