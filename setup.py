"""Builds disagmoe and its C++ core, disagmoe._C (pybind11, no libtorch).

DISAGMOE_SANITIZE=1 builds the core with AddressSanitizer and
UndefinedBehaviorSanitizer (see README, "Sanitizer build"). The C++ files compile
in parallel, one job per CPU unless DISAGMOE_BUILD_JOBS says otherwise (asv
builds every commit it measures).
"""

import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("DISAGMOE_BUILD_JOBS", default=0).install()

compile_args = ["-O3"]
link_args = []
if os.environ.get("DISAGMOE_SANITIZE") == "1":
    sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
    compile_args = ["-O1", *sanitizers]
    link_args = sanitizers

ext = Pybind11Extension(
    "disagmoe._C",
    sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    libraries=["dl"],  # dlopen of the CUDA driver (cuda_driver.cpp)
)

# The license is given here: in pyproject.toml a table is deprecated from setuptools 77 on
# (it warns at every build) and a string is an error before 77.
setup(license="Apache-2.0", ext_modules=[ext], cmdclass={"build_ext": build_ext})
