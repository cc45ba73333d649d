"""The serving benchmarks: the workloads are valid contract input that every design replays
alike, the timing modes measure what they say, and the command line and the asv modules run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from disagmoe_bench import bench, points, seed, text, timing
from disagmoe_bench.variants import VARIANTS, Variant, variant
from disagmoe_bench.variants import make_manager as variant_manager
from disagmoe_bench.workloads import CYCLE_STEPS, DecodeWorkload, TraceConfig, TraceWorkload

from harness import Harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = TraceConfig(running=12, max_prompt=300, chunk=200, max_output=40, num_layers=2, seed=3)


def test_trace_is_deterministic_and_seeded():
    a, b = TraceWorkload(SMALL, 60), TraceWorkload(SMALL, 60)
    assert a.initial == b.initial

    def steps(trace):
        return [(s.release, [(b.req_ids, b.init_prefill_lens) for b in s.layers]) for s in trace.steps]

    assert steps(a) == steps(b)
    other = TraceWorkload(TraceConfig(**{**SMALL.__dict__, "seed": 4}), 60)
    assert other.initial != a.initial


def test_trace_keeps_its_promises():
    """R requests live, prefill chunks first and within the budget, lengths within P + O,
    every finished request released and replaced, chunked prompts spanning steps."""
    trace = TraceWorkload(SMALL, 200)
    lengths = dict(trace.initial)
    assert len(lengths) == SMALL.running
    live = set(lengths)
    released_total = chunked = 0
    for step in trace.steps:
        first = step.layers[0]
        assert [b.layer_id for b in step.layers] == list(range(SMALL.num_layers))
        assert all(b.req_ids is first.req_ids for b in step.layers)
        assert len(set(first.req_ids)) == len(first.req_ids)
        assert sum(first.init_prefill_lens) <= SMALL.chunk
        for rid in step.release:
            assert rid in live and rid not in first.req_ids
            live.discard(rid)
            del lengths[rid]
        released_total += len(step.release)
        for i, rid in enumerate(first.req_ids):
            n = first.init_prefill_lens[i] if i < first.num_prefill_seqs else 1
            if i < first.num_prefill_seqs and rid in lengths:
                chunked += 1
            assert i < first.num_prefill_seqs or rid in lengths, "a decode entry of an unknown request"
            lengths[rid] = lengths.get(rid, 0) + n
            live.add(rid)
            assert lengths[rid] <= SMALL.max_prompt + SMALL.max_output
        assert len(live) <= SMALL.running
    assert released_total > 10 and chunked > 0
    stats = trace.stats()
    assert stats["num_steps"] == 200 and 0 < stats["steps_with_prefill"] < 1


@pytest.mark.parametrize("block_size", [1, 16])
def test_every_backend_replays_the_trace_as_the_reference_says(config, block_size):
    """Each step of the trace through the harness: lengths, metadata and slots checked
    against the reference model at every layer."""
    trace = TraceWorkload(SMALL, 40)
    max_seq_len, max_reqs = trace.sizes(40)
    manager = config.make(
        block_size=block_size,
        num_blocks=max_reqs * -(-max_seq_len // block_size),
        max_running_reqs=max_reqs,
        max_seq_len=max_seq_len,
        layer_ids=(0, 1),
    )
    harness = Harness(manager)
    harness.update(harness.batch([r for r, _ in trace.initial], [n for _, n in trace.initial]))
    for step in trace.steps:
        if step.release:
            harness.release(list(step.release))
        for batch in step.layers:
            harness.step(batch)


def test_decode_lengths_grow_or_cycle():
    for lengths, expected in (
        ("grow", [40 + k for k in range(1, 2 * CYCLE_STEPS + 1)]),
        ("cycle", [40 + k for k in range(1, CYCLE_STEPS + 1)] * 2),
    ):
        workload = DecodeWorkload(3, 40, num_layers=2, lengths=lengths)
        manager = variant_manager(Variant("cpu", 16), workload, 2 * CYCLE_STEPS, "cpu")
        replay = timing.Replay(manager, workload)
        replay.start()
        seen = []
        for _ in range(2 * CYCLE_STEPS // 4):
            replay.before_window(4)
            for _ in range(4):
                replay.step()
                seen.append(workload.step.layers[-1].seq_lens[0])
        assert seen == expected, lengths
        assert workload.max_window == (CYCLE_STEPS if lengths == "cycle" else None)


def test_variant_names():
    assert [v.name for v in VARIANTS] == ["cpu-bs16", "gpu-bs1", "gpu-bs16", "hybrid-bs16"]
    assert variant("gpu-bs32") == Variant("gpu", 32)
    for bad in ("gpu", "tpu-bs16", "gpu-bs0", "gpu-bsx", "cpu-bs-1"):
        with pytest.raises(ValueError, match=bad):
            variant(bad)


class FakeRunner:
    """A runner whose host and device times are known: each step spins `host` seconds."""

    max_window = None

    def __init__(self, host: float, log: list, name: str) -> None:
        self.host, self.log, self.name = host, log, name
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def before_window(self, steps: int) -> None:
        self.log.append(self.name)

    def _spin(self) -> None:
        import time

        end = time.perf_counter() + self.host
        while time.perf_counter() < end:
            pass

    def step(self) -> None:
        self._spin()

    def step_synced(self) -> tuple[float, float]:
        import time

        start = time.perf_counter()
        self._spin()
        return time.perf_counter() - start, time.perf_counter() - start

    def synchronize(self) -> None:
        pass


@pytest.mark.parametrize("mode", ["synced", "pipelined"])
def test_measure_takes_turns_and_reports_per_step(mode):
    log: list = []
    runners = {"a": FakeRunner(200e-6, log, "a"), "b": FakeRunner(600e-6, log, "b")}
    out = timing.measure(runners, mode, window=5, windows=4, warmup=3)
    assert out["steps_per_window"] == 5
    assert all(r.started == 1 for r in runners.values())
    timed = log[2:]  # warm-up windows first, one per runner
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]
    a, b = out["runners"]["a"], out["runners"]["b"]
    assert len(a["wall_us"]) == len(a["host_us"]) == 4
    # Lower bounds only (each step spins that long at least): a loaded machine only adds.
    assert min(a["wall_us"]) >= 200 and min(b["wall_us"]) >= 600
    assert all(h <= w + 1 for h, w in zip(a["host_us"] + b["host_us"], a["wall_us"] + b["wall_us"]))


def test_busy_needs_cuda():
    with pytest.raises(timing.BusyUnavailable, match="CUDA"):
        timing.Forward(300.0, torch.device("cpu"))
    with pytest.raises(timing.BusyUnavailable):
        timing.measure({}, "busy", 4, 1, 0, forward=None)
    with pytest.raises(ValueError, match="sideways"):
        timing.measure({}, "sideways", 4, 1, 0)


def test_a_bounded_window_caps_the_steps():
    log: list = []
    runners = {"a": FakeRunner(0, log, "a")}
    runners["a"].max_window = 3
    assert timing.measure(runners, "pipelined", window=48, windows=1, warmup=0)["steps_per_window"] == 3


def test_check_variants_catches_a_disagreement():
    workload = DecodeWorkload(4, 20)
    variants = {v.name: v for v in (Variant("cpu", 16), Variant("gpu", 16))}
    replays = {name: timing.Replay(variant_manager(v, workload, 8, "cpu"), workload) for name, v in variants.items()}
    points.check_variants(replays, variants)
    wrong = replays["gpu-bs16"].manager
    original = wrong.pack_flash_attn_metadata

    def corrupted(batch):
        md = original(batch)
        md.block_tables[0, 0] += 1
        return md

    wrong.pack_flash_attn_metadata = corrupted
    with pytest.raises(points.VariantMismatch, match="block_tables"):
        points.check_variants(replays, variants)


def test_run_point_reports_every_variant_and_mode():
    results = points.run_point(
        points.trace_point(SMALL),
        VARIANTS,
        ["synced", "pipelined"],
        points.Timing(window=3, windows=2, warmup=2),
        torch.device("cpu"),
    )
    assert [r["mode"] for r in results] == ["synced", "pipelined"]
    for r in results:
        assert r["workload"]["workload"] == "trace" and r["workload"]["running"] == SMALL.running
        assert set(r["variants"]) == {v.name for v in VARIANTS}
        assert r["variants"]["gpu-bs1"]["block_size"] == 1
        assert all(len(v["wall_us"]) == 2 for v in r["variants"].values())
        assert set(r["speedup"]) == {"gpu-bs1", "gpu-bs16", "hybrid-bs16"}


def test_command_line_trace_pipelined_quick(tmp_path, capsys):
    """The serving command line on this machine, with a plot (a small grid: the CI runs the
    whole --quick one)."""
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert (
        bench.main(
            [
                "--workload",
                "trace",
                "--timing",
                "pipelined",
                "--quick",
                "--running",
                "16",
                "--prompts",
                "256",
                "1024",
                "--window",
                "3",
                "--windows",
                "2",
                "--output",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "timing pipelined" in printed and "p99" in printed
    assert max(len(line) for line in printed.splitlines()) <= text.width()  # a terminal's width, not 200
    lines = [line.split() for line in printed.splitlines()]
    gpu = [cells for cells in lines if cells and cells[0] == "gpu-bs16"]
    # its speedup over cpu-bs16, and every figure, in one format whatever its size
    assert gpu and re.fullmatch(r"\d+\.\d{3}x", gpu[0][-1]), gpu
    assert all(re.fullmatch(r"\d+\.\d", cell) for cells in gpu for cell in cells[1:-1]), gpu
    run = json.loads(out.read_text())
    assert run["workload"] == "trace" and run["timing_modes"] == ["pipelined"] and run["device_name"]
    assert {v["name"]: v["block_size"] for v in run["variants"]} == {
        "cpu-bs16": 16,
        "gpu-bs1": 1,
        "gpu-bs16": 16,
        "hybrid-bs16": 16,
    }
    assert len(run["points"]) == 2 and all(p["mode"] == "pipelined" for p in run["points"])
    steps = run["points"][0]["variants"]["hybrid-bs16"]["host_step_us"]
    assert 0 < steps["p50"] <= steps["p90"] <= steps["p99"] <= steps["max"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _map_run(modes: list[str], device_name: str) -> dict:
    """A run of the command line's JSON shape, enough for the crossover map."""
    compared = {"gpu-bs1": 0.12, "gpu-bs16": 1.3, "hybrid-bs16": 2.1}
    points = [
        {"mode": mode, "point": {"running": r, "max_prompt": p}, "speedup": compared}
        for mode in modes
        for r in (64, 256, 1024)
        for p in (2048, 16384, 65536)
    ]
    return {
        "timing_modes": modes,
        "baseline": "cpu-bs16",
        "workload": "trace",
        "device_name": device_name,
        "commit": "0123456789abcdef",
        "points": points,
        "variants": [{"name": n} for n in ("cpu-bs16", *compared)],
    }


@pytest.mark.parametrize("modes", [["pipelined"], ["synced", "pipelined"], ["synced", "pipelined", "busy"]])
def test_crossover_map_fits_and_names_the_modes_run(modes):
    """Every text of the map lies within the figure (a long card name included), and the
    title explains the timing modes that were run, no other."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from disagmoe_bench.plot import MODE_FIGURES, crossover_figure

    fig = crossover_figure(_map_run(modes, "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz " * 4))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        frame = fig.bbox
        for text in fig.findobj(Text):
            if text.get_visible() and text.get_text():
                box = text.get_window_extent(renderer)
                assert (
                    box.x0 >= frame.x0 - 1
                    and box.x1 <= frame.x1 + 1
                    and box.y0 >= frame.y0 - 1
                    and box.y1 <= frame.y1 + 1
                ), text.get_text()
        title = " ".join(fig.get_suptitle().split())
        for mode, said in MODE_FIGURES.items():
            assert (" ".join(said.split()) in title) == (mode in modes), (mode, title)
    finally:
        plt.close(fig)


def test_command_line_errors(capsys):
    for argv, message in (
        (["--timing", "pipelined"], "--timing needs --workload"),
        (["--workload", "decode", "--seq-lens", "8"], "--contexts"),
        (["--workload", "trace", "--variants", "gpu-bs0"], "gpu-bs0"),
        (["--workload", "trace", "--chunk", "0"], "--chunk 0"),
        (["--workload", "trace", "--iterations", "7"], "--window"),
    ):
        with pytest.raises(SystemExit) as info:
            bench.parse_args(argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():  # refused before anything runs
        with pytest.raises(SystemExit) as info:
            bench.main(["--workload", "decode", "--timing", "busy", "--quick"])
        assert info.value.code == 2
        assert "--timing busy needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, error, named",
    [
        (("foo", 4, 32), ValueError, "design='foo'"),
        ((["cpu"], 4, 32), ValueError, "design=['cpu']"),
        (("cpu", 10**12, 32), ValueError, "batch_size=1000000000000"),
        (("cpu", "16", 32), TypeError, "batch_size='16'"),
        (("cpu", 4, 4.5), TypeError, "context=4.5"),
        (("cpu", True, 32), TypeError, "batch_size=True"),
        (("gpu", 2**31 - 1, 1), ValueError, "num_gpu_blocks"),  # refused by arithmetic, no list of 2**31 made
    ],
)
def test_seed_managers_refuse_bad_sizes_by_name(args, error, named):
    with pytest.raises(error, match=re.escape(named)):
        seed.make_manager(*args, device="cpu")


def test_seed_check_needs_known_designs():
    with pytest.raises(ValueError, match="design='nope'"):
        seed.check_equivalent(4, 32, "cpu", designs=("cpu", "nope"))
    with pytest.raises(ValueError, match="at least one design"):
        seed.check_equivalent(4, 32, "cpu", designs=())
    seed.check_equivalent(4, 32, "cpu", designs=iter(["cpu", "hybrid"]))  # any iterable of names


def test_seed_table_is_unchanged(tmp_path):
    """The default command line still prints the seed's table, then hybrid's beside cpu, and
    says the check passed."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "disagmoe_bench",
            "--batch-sizes",
            "4",
            "--seq-lens",
            "32",
            "--iterations",
            "2",
            "--warmup",
            "1",
            "--output",
            str(tmp_path / "s.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1] == bench.HEADER
    assert lines[2].split()[:2] == ["4", "32"]
    hybrid_header = (
        "Batch Size   Seq Len   CPU Update (ms) Hybrid Update (ms) Speedup   CPU Pack (ms) Hybrid Pack (ms) Speedup"
    )
    assert bench.header("hybrid") == hybrid_header
    hybrid = lines.index(hybrid_header) + 1  # the third design, after the seed's table
    assert lines[hybrid].split()[:2] == ["4", "32"]
    speedups = [line.split()[i] for line in (lines[2], lines[hybrid]) for i in (4, 7)]
    speedups += re.findall(r"(?:mean|median|min|max) (\S+)x", proc.stdout)
    assert len(speedups) == 20 and all(re.fullmatch(r"\d+\.\d{3}", s) for s in speedups), speedups
    assert "Equivalence check passed at all 1 grid points" in proc.stdout
    point = json.loads((tmp_path / "s.json").read_text())["results"][0]
    assert set(point) >= {"update_block_table", "pack_flash_attn_metadata"}
    assert set(point["update_block_table"]["samples_ms"]) == {"cpu", "gpu", "hybrid"}


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_forward_is_calibrated_in_clock_cycles():
    device = torch.device("cuda", torch.cuda.current_device())
    short, long = timing.Forward(100.0, device), timing.Forward(300.0, device)
    # the spin is calibrated in GPU clock cycles: three times the time, more cycles (the
    # ratio is the card's clock, measured: no bound on it on a shared machine)
    assert long.cycles > short.cycles >= 1, (short.cycles, long.cycles)
    wall, host = timing.time_forwards(long, 20)
    assert wall > 0 and host > 0


@cuda
def test_busy_mode_reports_the_device_time_added():
    device = torch.device("cuda", torch.cuda.current_device())
    forward = timing.Forward(300.0, device)
    results = points.run_point(
        points.decode_point(64, 1024), VARIANTS, ["busy"], points.Timing(window=8, windows=2, warmup=4), device, forward
    )
    busy = results[0]
    assert busy["forward_median_us"] > 0  # (its length is the card's: no bound here)
    for name, v in busy["variants"].items():
        assert len(v["added_us"]) == 2, name
        # 'added' is the window's wall time less that of the forwards alone, same round (a
        # difference of two timings: its sign is the machine's, so no bound on it here)
        for added, wall, fwd in zip(v["added_us"], v["wall_us"], busy["forward_us"]):
            assert added == pytest.approx(wall - fwd, abs=1e-6), name
            assert wall > 0 and fwd > 0, name


@cuda
def test_floors_are_measured():
    from disagmoe_bench.floors import measure_floors

    floors = measure_floors(torch.device("cuda", torch.cuda.current_device()), [4096, 1 << 20], repeats=10)
    assert 0 < floors["bare_synchronize_us"] < floors["tiny_kernel_synced_us"] + 50
    assert [c["bytes"] for c in floors["copies"]] == [4096, 1 << 20]
    big = floors["copies"][1]
    assert big["pipelined_us"] <= big["synced_us"] * 1.5


@pytest.mark.parametrize("fmt", ["azure", "mooncake"])
def test_command_line_replays_a_trace_file(tmp_path, capsys, fmt):
    """A request log of either format, not one of the bundled ones, replayed by the
    scheduler through every variant: the tables, the scheduler's statistics, the JSON."""
    if fmt == "azure":
        path = tmp_path / "log.csv"
        rows = [
            f"2023-11-16 18:15:{10 + i // 4:02d}.{i % 4 * 25:02d}00000,{40 + 37 * i % 300},{3 + i % 9}"
            for i in range(40)
        ]
        path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    else:
        path = tmp_path / "log.jsonl"
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "timestamp": 250 * i,
                        "input_length": 40 + 37 * i % 300,
                        "output_length": 3 + i % 9,
                        "hash_ids": [i],
                    }
                )
                + "\n"
                for i in range(40)
            )
        )
    out = tmp_path / "r.json"
    assert (
        bench.main(
            [
                "--trace",
                str(path),
                "--timing",
                "pipelined",
                "--quick",
                "--running",
                "8",
                "--window",
                "3",
                "--windows",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "replay of " + path.name in " ".join(printed.split()) and "Scheduler, per replayed window" in printed
    assert max(len(line) for line in printed.splitlines()) <= text.width()
    run = json.loads(out.read_text())
    assert run["workload"] == "replay" and len(run["points"]) == 1
    result = run["points"][0]
    assert result["workload"]["source"] == path.name and result["workload"]["max_running"] == 8
    assert result["workload"]["steps"]["num_steps"] == result["steps_per_window"] * 2 + 4  # windows and warm-up
    assert set(result["variants"]) == {"cpu-bs16", "gpu-bs1", "gpu-bs16", "hybrid-bs16"}
    assert run["trace"] == {"source": path.name, "requests": 40, "prefix_reuse": 0.0 if fmt == "mooncake" else None}
    assert (
        f"{path.name}: 40 requests; "
        + (
            "0.0% of its 512-token prefix blocks"
            if fmt == "mooncake"
            else "prefix reuse: the trace has no prefix hashes"
        )
        in printed
    )
