"""asv benchmarks of disagmoe's block managers (docs/benchmarking.md).

What every benchmark module shares:

- the grid: `backend` (cpu, gpu) x `batch_size` B (16 32 64 128 256) x `seq_len` L
  (128 256 512 1024), or the integers of DISAGMOE_BENCH_BATCH_SIZES and
  DISAGMOE_BENCH_SEQ_LENS (common.py);
- the device: CUDA when there is one, else torch's CPU device (where the `gpu` backend
  runs its torch kernels, and its timings say nothing about a GPU), for both backends;
- the managers, sized by `disagmoe.workloads.make_manager`: each backend's default block
  size (cpu 16, gpu 1), a pool of B * (L + 16) slots and max_seq_len = L + 16, which
  covers the 16 decode steps a state takes before it is rebuilt;
- the timing: state is prepared in `setup` (or `setup_cache`) and never timed; every
  timed call ends with `manager.synchronize()`, the device's work included.

Each module's docstring says what it measures; common.py says how the suite runs under
asv's fork server.
"""
