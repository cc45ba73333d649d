"""asv plugin (asv.conf.json `plugins`): the asv environment sees the torch of the Python
that runs asv.

asv makes its virtualenv from the base interpreter of whatever runs it, and
`VIRTUALENV_SYSTEM_SITE_PACKAGES=1` shows it that interpreter's packages. A torch
installed in a virtual environment (a fresh venv set up by scripts/setup.sh, the GPU
machine's /opt/torch/.venv) is therefore invisible there, and every benchmark fails
to import. asv imports this module in its own process, before it makes or uses an
environment: it finds the folder that holds torch for this interpreter (without
importing torch) and hands it to the install command of asv.conf.json through
DISAGMOE_TORCH_SITE, which writes it into a .pth file of the asv environment. A
DISAGMOE_TORCH_SITE already set is left as it is (scripts/asv_gpu.sh sets it); for a
conda environment or the system Python the folder is one the environment already
sees, and naming it again changes nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def torch_site() -> str | None:
    """The folder that holds the `torch` package this interpreter would import."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))


def setup() -> None:
    if os.environ.get("DISAGMOE_TORCH_SITE"):
        return
    site = torch_site()
    if site is None:
        print(
            f"asv_torch_site: {sys.executable} has no torch; the asv environment sees only "
            "the system's packages (scripts/setup.sh installs torch)",
            file=sys.stderr,
        )
        return
    os.environ["DISAGMOE_TORCH_SITE"] = site
