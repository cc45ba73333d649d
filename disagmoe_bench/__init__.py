"""The lab that measures the library `disagmoe`: its serving benchmarks (whole engine steps
of a decode or continuous-batching workload, timed synced, pipelined or behind a stand-in
forward, for each design side by side), the production traces and their scheduler, and the
command line (`python -m disagmoe_bench`, or `disagmoe-bench`). An engine imports
`disagmoe` alone; nothing there imports this package.

`workloads` (what a step is), `timing` (the three timing modes, one call timed), `variants`
(the designs compared), `points` (the grid and one point measured), `seed` (the seed's
table: update and pack timed apart on a decode state), `bench` (the command line's entry
and the seed's table), `cli` (the serving benchmarks' command line, `--workload ...`),
`plot` (the crossover map); `traces` and `scheduler` (the production traces and the
continuous-batching scheduler a replay's steps come from), `prefix_model`, `prefix_hashes`
and `prefix_calls` (the prefix cache's model the scheduler plans with, the traces' hash ids
as block hashes, and what a manager's matches and evictions cost), `attention` (FlexAttention
over a replay's metadata), `floors` (what the card's calls cost alone), `inputs` (options
checked before a run). It is the one harness: the command line and the asv suite
(`benchmarks/common.harness`) both run on it.
"""
