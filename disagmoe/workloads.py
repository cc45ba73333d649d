"""The names the asv suite reads from the installed package, kept where it reads them.

asv times the suite of the working tree against old commits too, and `benchmarks/common.py`
finds the seed's workload in the installed commit's `disagmoe.workloads`; the code is
the serving harness's (`disagmoe.serving.seed`, `disagmoe.serving.timing`).
"""

from disagmoe.serving import seed
from disagmoe.serving.points import VariantMismatch as BackendMismatch
from disagmoe.serving.seed import *  # noqa: F403
from disagmoe.serving.seed import DESIGNS

BACKEND_NAMES = DESIGNS

__all__ = [*seed.__all__, "BACKEND_NAMES", "BackendMismatch"]
