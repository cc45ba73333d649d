"""Memory each design's manager holds, and the device the suite ran on.

For every grid point, `memory_footprint()` of the manager that the timing
benchmarks use, after its decode state ran every benchmarked operation:
`device_bytes` (on the suite's device) and `host_bytes`. Measured in one process.

`Device.track_on_cuda` says where everything ran: 1 on CUDA, 0 on torch's CPU
device (a machine without CUDA, where the `gpu` design's timings say nothing
about a GPU).
"""

from .common import BATCH_SIZES, DESIGNS, SEQ_LENS, measure_footprints


def setup_cache():
    measured = measure_footprints()
    print(f"bench_memory: measured on {measured['device']}")
    return measured


setup_cache.timeout = 600


class MemoryFootprint:
    params = (DESIGNS, BATCH_SIZES, SEQ_LENS)
    param_names = ["backend", "batch_size", "seq_len"]
    unit = "bytes"
    processes = 1

    def track_device_bytes(self, cache, backend, batch_size, seq_len):
        return cache["footprints"][(backend, batch_size, seq_len)]["device_bytes"]

    def track_host_bytes(self, cache, backend, batch_size, seq_len):
        return cache["footprints"][(backend, batch_size, seq_len)]["host_bytes"]


class Device:
    unit = "1 = CUDA, 0 = torch CPU device"
    processes = 1

    def track_on_cuda(self, cache):
        return int(cache["on_cuda"])

    track_on_cuda.pretty_name = "device of every design: 1 = CUDA, 0 = torch's CPU device (no GPU)"


# asv files every result under its benchmark's `version`: each is pinned to the value asv
# computed from the code on 2026-12-03, so that moving shared code does not start a history
# over. Change one only where what the benchmark measures changes (docs/benchmarking.md).
Device.track_on_cuda.version = "198b27517a62bcdd13ea566ae7ff6797a2bf914d66e2e096e20e8f5154875f53"
MemoryFootprint.track_device_bytes.version = "86dfd720b62dde3fa0d145db9a5a605e09970adec9e651cb8455ced3fd35b457"
MemoryFootprint.track_host_bytes.version = "ed3f8c65e69d171b05be8d801d427f6b345055435368aed55d02ba4146185b94"
