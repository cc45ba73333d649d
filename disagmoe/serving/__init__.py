"""The serving benchmarks: whole engine steps of a decode or continuous-batching workload,
timed synced, pipelined or behind a stand-in forward, for each design side by side.

`workloads` (what a step is), `timing` (the three timing modes), `variants` (the
designs compared), `points` (the grid and one point measured), `cli` (the command
line, `python -m disagmoe.bench --workload ...`), `plot` (the crossover map).
"""
