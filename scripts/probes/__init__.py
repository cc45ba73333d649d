"""Measurement probes behind docs/performance.md, run from the repository root:

    python3 -m scripts.probes.perf_probe --help    # floors, and every case of every variant
    python3 -m scripts.probes.perf_report FILE     # the probe's JSON as Markdown tables
    python3 -m scripts.probes.pack_sweep --help    # the pack kernel's launch shapes (CUDA)
"""
