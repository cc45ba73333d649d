"""The toolbox: everyday tools at the top of `scripts/` (shell), measurement probes in
`scripts.probes`, run from the repository root (`python3 -m scripts.probes.perf_probe`)."""
