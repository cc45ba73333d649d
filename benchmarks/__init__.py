"""asv benchmarks of disagmoe's block managers; see docs/benchmarking.md."""
