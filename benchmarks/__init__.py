"""asv benchmarks of disagmoe's block managers (docs/benchmarking.md).

What every benchmark module shares:

- the grid of the seed's classes: `backend` (cpu, gpu, hybrid: the three designs) x
  `batch_size` B (16 32 64 128 256) x `seq_len` L (128 256 512 1024), or the integers of DISAGMOE_BENCH_BATCH_SIZES and
  DISAGMOE_BENCH_SEQ_LENS (common.py);
- the device: CUDA when there is one, else torch's CPU device (where the `gpu` design
  runs its torch kernels, and its timings say nothing about a GPU), for every design;
- the managers, sized by `disagmoe_bench.seed.make_manager` (read through
  `common.workloads`, which finds where each commit kept it): each design's default block
  size (16 for each), a pool of B * (L + 16) slots and max_seq_len = L + 16, which
  covers the 16 decode steps a state takes before it is rebuilt;
- the timing: state is prepared in `setup` (or `setup_cache`) and never timed; every
  timed call ends with `manager.synchronize()`, the device's work included.

The serving modules (bench_pipelined, bench_trace, bench_replay) have grids of their own
(serving.py), and their classes come from one definition (`serving.step_classes`,
`serving.speedup_class`). Each module's docstring says what it measures; common.py says
how the suite runs under asv's fork server.
"""
