"""The main job's output (scripts/run_suite.sh): asv's skip notices folded into one line per
reason (scripts/lib/skips.py), every other line passed through."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPS = os.path.join(ROOT, "scripts", "lib", "skips.py")


PAD = " " * 14  # asv indents a point's lines so, and leaves the indent on the blank line after
ASV_OUTPUT = "\n".join(
    [
        "[58.89%] ··· bench_pipelined.Step.track_synced                     ok",
        "[58.89%] ··· ========= =====",
        "",
        "[58.89%] ···· For parameters: 'gpu-bs1', 64, 65536",
        PAD + 'asv: skipped: NotImplementedError("4194304 tokens: past 1048576 on torch\'s CPU device")',
        PAD,
        PAD + "For parameters: 'gpu-bs1', 256, 8192",
        PAD + 'asv: skipped: NotImplementedError("2097152 tokens: past 1048576 on torch\'s CPU device")',
        PAD,
        "[60.00%] ··· bench_trace.Step.track_synced                     ok",
        "[60.00%] ···· For parameters: 'cpu-bs16', 1024, 65536",
        PAD + 'asv: skipped: NotImplementedError("67108864 tokens: past 1048576 on torch\'s CPU device")',
        PAD,
        PAD + "For parameters: 'cpu-bs16', 64, 2048",
        PAD + "Traceback: a failure, kept",
        "[61.00%] ··· bench_x.Y.track_z                                 ok",
        "",
    ]
)


def test_main_job_folds_skip_notices_into_a_line_per_reason():
    spec = importlib.util.spec_from_file_location("skips", SKIPS)
    skips = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(skips)
    out = io.StringIO()
    groups = skips.fold(io.StringIO(ASV_OUTPUT).readlines(), out)
    assert "skipped" not in out.getvalue() and out.getvalue().count("For parameters") == 1
    assert f"For parameters: 'cpu-bs16', 64, 2048\n{PAD}Traceback: a failure, kept\n" in out.getvalue()
    assert "bench_x.Y.track_z" in out.getvalue() and "bench_trace.Step.track_synced" in out.getvalue()
    reason = 'NotImplementedError("N tokens: past 1048576 on torch\'s CPU device")'
    assert groups == {reason: (3, {"bench_pipelined.Step.track_synced", "bench_trace.Step.track_synced"})}
    done = subprocess.run(
        [sys.executable, SKIPS],
        input=ASV_OUTPUT,
        capture_output=True,
        text=True,
    )
    assert done.stdout.splitlines()[-1] == f"asv skipped 3 grid points of 2 benchmarks: {reason}"
