"""The site's and the main job's tools without a browser: the asv plugin that finds torch
(scripts/asv_torch_site.py), the libraries' rewrite of asv's page (scripts/site_libs.py),
the per-machine copy of results (scripts/publish_site.py) and the landing page's reading
of results (scripts/landing.py). tests/test_site.py opens
the published site in Chromium."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import asv_torch_site  # noqa: E402
import landing  # noqa: E402
import landing_html  # noqa: E402
import publish_site  # noqa: E402
import site_labels  # noqa: E402
import site_libs  # noqa: E402

sys.path.pop(0)


def test_plugin_names_the_folder_of_this_pythons_torch(monkeypatch):
    import torch

    monkeypatch.delenv("DISAGMOE_TORCH_SITE", raising=False)
    asv_torch_site.setup()
    assert os.environ["DISAGMOE_TORCH_SITE"] == os.path.dirname(os.path.dirname(torch.__file__))


def test_plugin_keeps_a_folder_already_named(monkeypatch):
    monkeypatch.setenv("DISAGMOE_TORCH_SITE", "/opt/torch/site")
    asv_torch_site.setup()
    assert os.environ["DISAGMOE_TORCH_SITE"] == "/opt/torch/site"


def test_asv_conf_loads_the_plugin():
    assert publish_site.load_conf(ROOT)["plugins"] == [".scripts.asv_torch_site"]
    # asv imports a plugin named ".x.y" as x.y with the config's folder first on sys.path
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, '.'); import scripts.asv_torch_site as m; print(m.__file__)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == os.path.join(ROOT, "scripts", "asv_torch_site.py")


ASV_PAGE = (
    os.path.join(os.path.dirname(importlib.util.find_spec("asv").origin), "www", "index.html")
    if importlib.util.find_spec("asv")
    else None
)


def _fake_libs(folder) -> str:
    """A folder laid out like node_modules/ with every file the site needs (empty files)."""
    for package, version in site_libs.wanted_versions(ROOT).items():
        os.makedirs(folder / package, exist_ok=True)
        (folder / package / "package.json").write_text(json.dumps({"version": version}))
    for package, path in site_libs.all_files():
        (folder / package / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / package / path).write_text("")
    return str(folder)


@pytest.mark.skipif(ASV_PAGE is None, reason="no asv")
def test_localise_leaves_no_external_address(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(open(ASV_PAGE).read())
    changed = site_libs.localise(str(site), _fake_libs(tmp_path / "libs"))
    page = (site / "index.html").read_text()
    assert changed == len(site_libs.CDN_FILES)
    assert not site_libs.TAG.findall(page)
    assert "crossorigin" not in page and "referrerpolicy" not in page
    assert "integrity" not in page  # empty stand-ins match none of asv's hashes


def test_localise_refuses_an_address_it_has_no_file_for(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text('<script src="https://cdn.example/new-lib.js"></script>')
    with pytest.raises(ValueError, match="new-lib.js"):
        site_libs.localise(str(site), _fake_libs(tmp_path / "libs"))


def test_a_folder_with_other_versions_is_not_taken(tmp_path):
    libs = _fake_libs(tmp_path / "libs")
    (tmp_path / "libs" / "jquery" / "package.json").write_text(json.dumps({"version": "3.7.1"}))
    assert site_libs.check_folder(libs, site_libs.wanted_versions(ROOT)) == ["jquery is 3.7.1, not 3.3.1"]
    with pytest.raises(site_libs.LibsMissing, match="jquery is 3.7.1"):
        site_libs.find_folder(ROOT, [libs])


def test_staged_results_hold_one_machine_with_its_name_alone(tmp_path):
    results = tmp_path / "results"
    (results / "cpu-a").mkdir(parents=True)
    (results / "h100").mkdir()
    (results / "benchmarks.json").write_text("{}")
    info = {"arch": "x86_64", "cpu": "c", "num_cpu": "2", "os": "Linux", "ram": "1"}
    (results / "cpu-a" / "machine.json").write_text(json.dumps({"machine": "cpu-a", "version": 1, **info}))
    run = {"params": {"machine": "cpu-a", "python": "3.11", **info}, "results": {}}
    (results / "cpu-a" / "abcd1234-env.json").write_text(json.dumps(run))
    publish_site.stage_results(str(results), "cpu-a", str(tmp_path / "staged"))
    assert sorted(os.listdir(tmp_path / "staged")) == ["benchmarks.json", "cpu-a"]
    machine = json.loads((tmp_path / "staged" / "cpu-a" / "machine.json").read_text())
    staged = json.loads((tmp_path / "staged" / "cpu-a" / "abcd1234-env.json").read_text())
    assert machine == {"machine": "cpu-a", "version": 1}
    assert staged["params"] == {"machine": "cpu-a", "python": "3.11"}


def test_gpu_machines_come_first(tmp_path):
    results = tmp_path / "results"
    for name, on_cuda in (("a-cpu", 0), ("z-gpu", 1)):
        (results / name).mkdir(parents=True)
        (results / name / "machine.json").write_text(json.dumps({"machine": name}))
        run = {"results": {"bench_memory.Device.track_on_cuda": [[on_cuda]]}}
        (results / name / "abcd1234-env.json").write_text(json.dumps(run))
    machines = publish_site.find_machines(ROOT, str(results))
    assert [(m.name, m.on_cuda) for m in machines] == [("z-gpu", True), ("a-cpu", False)]


def test_serving_results_alone_tell_cuda_by_the_busy_mode(tmp_path):
    """A results file of the serving modules alone (no bench_memory) ran on CUDA when a busy
    figure was measured (the busy mode runs on CUDA only), not otherwise."""
    results = tmp_path / "results"
    busy = "bench_trace.Step.track_busy_added"
    for name, values in (("a-cpu", [None, None]), ("z-gpu", [None, 12.5])):
        (results / name).mkdir(parents=True)
        (results / name / "machine.json").write_text(json.dumps({"machine": name}))
        run = {"result_columns": ["result"], "results": {busy: [values], "bench_trace.Step.track_synced": [[1.0, 2.0]]}}
        (results / name / "abcd1234-env.json").write_text(json.dumps(run))
    machines = publish_site.find_machines(ROOT, str(results))
    assert [(m.name, m.on_cuda) for m in machines] == [("z-gpu", True), ("a-cpu", False)]


COLUMNS = ["result", "params", "version", "started_at", "duration", "samples"]


def _step(variants: list[str], rows: list[int], columns: list[int], values: list) -> list:
    params = [[repr(v) for v in variants], [str(r) for r in rows], [str(c) for c in columns]]
    return [values, params, "v", 1796166127000, 1.0, None]


def _results_file(path, commit: str, date: int, results: dict) -> str:
    data = {
        "commit_hash": commit,
        "date": date,
        "params": {"machine": "gpu-x"},
        "result_columns": COLUMNS,
        "results": {"bench_memory.Device.track_on_cuda": [[1], [], "v", 1796166000000, 1.0, None], **results},
    }
    path.write_text(json.dumps(data))
    return str(path)


def test_landing_reads_each_replayed_trace(tmp_path):
    """bench_replay's figures per trace (parameters (variant, trace)): the winner of each
    mode, a skipped point (NaN) left out, the host times by trace and variant."""
    variants, traces = [repr(v) for v in ("cpu-bs16", "gpu-bs16")], [repr(t) for t in ("azure-conv", "mooncake")]

    def replay(values: list) -> list:
        return [values, [variants, traces], "v", 1796166127000, 1.0, None]

    nan = float("nan")
    path = _results_file(
        tmp_path / "r.json",
        "abcdef1234",
        1796166000000,
        {
            "bench_replay.Step.track_pipelined": replay([30.0, 40.0, 45.0, 20.0]),  # variant-major
            "bench_replay.Step.track_synced": replay([50.0, 60.0, nan, 70.0]),
            "bench_replay.Step.track_pipelined_host_p99": replay([90.0, 80.0, 85.0, 33.0]),
        },
    )
    run = landing.read_run(path, "gpu-x")
    assert run.has_serving and not run.maps
    assert run.replays["azure-conv"]["pipelined"].winner == "cpu-bs16"
    assert run.replays["mooncake"]["pipelined"].winner == "gpu-bs16"
    assert run.replays["mooncake"]["pipelined"].speedup("gpu-bs16") == pytest.approx(2.0)
    assert run.replays["azure-conv"]["synced"].medians == {"cpu-bs16": 50.0}  # gpu-bs16's point skipped
    assert "busy" not in run.replays["mooncake"]
    assert run.replay_host[landing.HOST_P99]["mooncake"] == {"cpu-bs16": 80.0, "gpu-bs16": 33.0}


def test_landing_reads_the_winner_of_every_cell(tmp_path):
    # variant-major, then batch size, then context: asv's order of a parameter grid
    decode = _step(
        ["cpu-bs16", "gpu-bs16", "hybrid-bs16"],
        [16, 64],
        [1024, 8192],
        [
            10.0,
            20.0,
            40.0,
            None,  # cpu-bs16
            12.0,
            10.5,
            10.0,
            None,  # gpu-bs16
            11.0,
            5.0,
            10.5,
            None,
        ],
    )  # hybrid-bs16
    path = _results_file(tmp_path / "a.json", "a" * 40, 1000, {"bench_pipelined.Step.track_pipelined": decode})
    run = landing.read_run(path, "gpu-x")
    assert run.on_cuda and run.has_serving
    assert list(run.maps) == [("decode", "pipelined")]  # no trace, no other mode: no map
    grid = run.maps[("decode", "pipelined")]
    assert (grid.rows, grid.columns) == ((16, 64), (1024, 8192))
    assert (64, 8192) not in grid.cells  # measured by no variant
    winners = {point: cell.winner for point, cell in grid.cells.items()}
    assert winners == {(16, 1024): "cpu-bs16", (16, 8192): "hybrid-bs16", (64, 1024): "gpu-bs16"}
    assert grid.cells[(16, 8192)].speedup("hybrid-bs16") == 4.0
    assert grid.cells[(16, 1024)].margin == 1.1 and not grid.cells[(16, 1024)].near_tie
    assert grid.cells[(64, 1024)].near_tie and grid.cells[(64, 1024)].margin == 1.05  # hybrid-bs16 10.5
    assert grid.wins() == {"cpu-bs16": 1, "gpu-bs16": 1, "hybrid-bs16": 1}
    assert [(r.name, r.point) for r in landing.regimes(grid)] == [
        ("small batch, short context", (16, 1024)),
        ("small batch, long context", (16, 8192)),
        ("large batch, short context", (64, 1024)),
    ]
    assert run.host_p99 == {}  # track_pipelined_host_p99 not in the results: not measured


def test_landing_without_serving_benchmarks_says_so(tmp_path):
    path = _results_file(tmp_path / "a.json", "a" * 40, 1000, {})
    run = landing.read_run(path, "gpu-x")
    assert not run.has_serving
    page = landing_html.page([landing_html.MachineEntry("gpu-x", "GPU", "machines/gpu-x/index.html", run)], [], None)
    assert "<table" not in page and page.count('id="no-serving-gpu-x"') == 1
    line = page.split('id="no-serving-gpu-x">', 1)[1].split("</p>", 1)[0]
    assert line.startswith("No serving results on gpu-x: its latest results (commit <code>aaaaaaa</code>")
    assert 'href="machines/gpu-x/index.html#/regressions"' in line


def test_landing_takes_the_latest_results_in_git(tmp_path):
    old = _results_file(tmp_path / "old.json", "1" * 40, 1000, {})
    new = _results_file(tmp_path / "new.json", "2" * 40, 2000, {})
    local = _results_file(tmp_path / "local.json", "3" * 40, 3000, {})
    choice = landing.choose([local, new, old], {old, new})
    assert (choice.path, choice.in_git, choice.newer_not_in_git) == (new, True, ("3" * 40,))
    assert landing.choose([local], set()) == landing.Choice(local, False, ())


def test_landing_page_links_into_asv_graphs(tmp_path):
    decode = _step(["cpu-bs16", "gpu-bs16"], [16, 64], [1024, 8192], [10.0, 20.0, 40.0, 80.0, 12.0, 10.0, 10.0, 8.0])
    path = _results_file(tmp_path / "a.json", "a" * 40, 1000, {"bench_pipelined.Step.track_pipelined": decode})
    entry = landing_html.MachineEntry("gpu-x", "GPU", "machines/gpu-x/index.html", landing.read_run(path, "gpu-x"))
    page = landing_html.page([entry], [], "machines/gpu-x/index.html")
    assert page == landing_html.page([entry], [], "machines/gpu-x/index.html")  # deterministic
    assert (
        'href="machines/gpu-x/index.html#bench_pipelined.Step.track_pipelined?x-axis=context&amp;'
        'p-batch_size=64"' in page
    )
    assert page.count('class="cell') == 4 and 'data-winner="gpu-bs16"' in page
    assert "p99 not measured" in page


def test_units_without_a_direction_get_one(tmp_path):
    index = {
        "benchmarks": {
            "a.InverseSpeedup.track": {"unit": "variant time / cpu-bs16 time"},
            "b.Speedup.track": {"unit": "GPU time / CPU time, lower is better"},
            "c.Step.track": {"unit": "us per step"},
        }
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert site_labels.label_units(str(tmp_path)) == ["a.InverseSpeedup.track", "c.Step.track"]
    units = {k: v["unit"] for k, v in json.loads((tmp_path / "index.json").read_text())["benchmarks"].items()}
    assert units == {
        "a.InverseSpeedup.track": site_labels.UNITS["variant time / cpu-bs16 time"],
        "b.Speedup.track": "GPU time / CPU time, lower is better",
        "c.Step.track": "us per step, lower is better",
    }
    assert all("lower is better" in unit for unit in site_labels.UNITS.values())


@pytest.mark.skipif(ASV_PAGE is None, reason="no asv")
def test_axis_labels_are_centred_on_asvs_plugin(tmp_path):
    name, drawn, centred = site_labels.AXIS_LABELS
    shutil.copyfile(os.path.join(os.path.dirname(ASV_PAGE), name), tmp_path / name)
    site_labels.centre_axis_labels(str(tmp_path))
    text = (tmp_path / name).read_text()
    assert drawn not in text and text.count(centred) == 1
    with pytest.raises(ValueError, match="not the axis label plugin"):
        site_labels.centre_axis_labels(str(tmp_path))  # already centred: not the file it knows


def test_machine_labels_count_commits():
    assert publish_site.Machine("h200", 1, 0, True).label == "GPU; history in git, 1 commit"
    assert publish_site.Machine("cpu-a", 0, 2, False).label == (
        "no CUDA: the gpu design on torch's CPU device; 2 commits measured in this clone, not in git"
    )


def test_landing_page_shows_the_tail_where_measured(tmp_path):
    params = (["cpu-bs16", "gpu-bs16"], [16], [1024])
    results = {
        f"bench_pipelined.Step.{method}": _step(*params, values)
        for method, values in (
            ("track_pipelined", [10.0, 5.0]),
            ("track_pipelined_host", [9.0, 4.0]),
            ("track_pipelined_host_p99", [30.0, 12.5]),
        )
    }
    run = landing.read_run(_results_file(tmp_path / "a.json", "a" * 40, 1000, results), "gpu-x")
    assert run.host_p99 == {"decode": {(16, 1024): {"cpu-bs16": 30.0, "gpu-bs16": 12.5}}}
    page = landing_html.page([landing_html.MachineEntry("gpu-x", "GPU", "s/index.html", run)], [], None)
    assert "4 &middot; 12.5" in page and "p99 not measured" not in page


def test_landing_page_without_a_gpu_machine_says_so():
    cpu = landing_html.MachineEntry("cpu-a", "no CUDA", "machines/cpu-a/index.html", None)
    page = landing_html.page([], [cpu], None)
    assert "No GPU machine has results" in page and 'href="machines/cpu-a/index.html"' in page


PREFIX_VARIANTS, PREFIX_TRACES, PREFIX_MODES = (
    ("cpu-bs16", "gpu-bs16", "hybrid-bs16"),
    ("mooncake", "servegen-offline"),
    ("off", "miss", "on"),
)


def _prefix_entry(values: list, *params: tuple[str, ...]) -> list:
    return [values, [[repr(p) for p in values_of] for values_of in params], "v", 1796166127000, 1.0, None]


def _prefix_results() -> dict:
    """bench_prefix's figures (variant-major, then trace, then mode: asv's order): mooncake's
    miss row skipped for hybrid-bs16 (NaN), servegen-offline's off row failed for all (None),
    busy measured for gpu-bs16 alone, the hit rate of servegen-offline's miss row skipped."""
    nan = float("nan")
    grid = (PREFIX_VARIANTS, PREFIX_TRACES, PREFIX_MODES)
    p50 = [10.0, 11.0, 9.0, None, 12.0, 12.5] + [20.0, 4.0, 4.5, None, 6.0, 13.0] + [9.5, nan, 8.0, None, 5.0, 13.5]
    p99 = [v * 3 if v is not None else None for v in p50]
    busy = [nan] * 6 + [1.5, 2.0, 2.5, nan, 3.0, 3.5] + [nan] * 6
    cache = (PREFIX_TRACES, PREFIX_MODES[1:])
    return {
        "bench_prefix.PrefixStep.track_pipelined_host_p50": _prefix_entry(p50, *grid),
        "bench_prefix.PrefixStep.track_pipelined_host_p99": _prefix_entry(p99, *grid),
        "bench_prefix.PrefixStep.track_busy_added": _prefix_entry(busy, *grid),
        "bench_prefix.Cache.track_hit_rate": _prefix_entry([0.0, 0.4, nan, 0.25], *cache),
        "bench_prefix.Cache.track_bound": _prefix_entry([0.0, 0.55, 0.3, 0.3], *cache),
    }


def test_landing_reads_a_row_per_trace_and_prefix_cache_mode(tmp_path):
    run = landing.read_run(_results_file(tmp_path / "p.json", "a" * 40, 1000, _prefix_results()), "gpu-x")
    assert run.has_serving and not run.maps and not run.replays
    rows = {(r.trace, r.mode): r for r in run.prefix}
    assert [(r.trace, r.mode) for r in run.prefix] == [
        ("mooncake", "off"),
        ("mooncake", "miss"),
        ("mooncake", "on"),
        ("servegen-offline", "miss"),  # its off row measured nothing: no row
        ("servegen-offline", "on"),
    ]
    miss = rows[("mooncake", "miss")]
    assert miss.p50 == {"cpu-bs16": 11.0, "gpu-bs16": 4.0}  # hybrid-bs16's NaN left out
    assert miss.host.winner == "gpu-bs16" and miss.host.speedup("gpu-bs16") == 2.75
    assert miss.p99 == {"cpu-bs16": 33.0, "gpu-bs16": 12.0} and miss.busy == {"gpu-bs16": 2.0}
    assert (miss.hit_rate, miss.bound) == (0.0, 0.0)
    assert rows[("mooncake", "off")].host.winner == "hybrid-bs16"
    assert (rows[("mooncake", "off")].hit_rate, rows[("mooncake", "off")].bound) == (None, None)
    assert rows[("servegen-offline", "miss")].hit_rate is None and rows[("servegen-offline", "miss")].bound == 0.3
    assert rows[("servegen-offline", "on")].host.winner == "cpu-bs16"
    assert rows[("servegen-offline", "on")].host.near_tie  # gpu-bs16 13.0 within 1.10x of 12.5
    assert rows[("servegen-offline", "on")].busy == {"gpu-bs16": 3.5}


def test_landing_page_draws_the_prefix_rows(tmp_path):
    run = landing.read_run(_results_file(tmp_path / "p.json", "a" * 40, 1000, _prefix_results()), "gpu-x")
    entry = landing_html.MachineEntry("gpu-x", "GPU", "machines/gpu-x/index.html", run)
    page = landing_html.page([entry], [], None)
    assert page == landing_html.page([entry], [], None)  # deterministic
    assert page.count("<tr data-trace=") == 5 and 'id="prefix-none"' not in page
    assert '<tr data-trace="mooncake" data-mode="miss" data-winner="gpu-bs16"' in page
    assert "40.0% (bound 55.0%)" in page and "not measured (bound 30.0%)" in page
    assert "4 &middot; 12<br>" in page and "device +2 us" in page  # gpu-bs16 in mooncake's miss row
    assert (
        'href="machines/gpu-x/index.html#bench_prefix.PrefixStep.track_pipelined_host_p50?'
        'p-trace=%27mooncake%27&amp;p-prefix_cache=%27miss%27"' in page
    )
    assert "table.prefix" in page


def test_landing_page_says_when_no_machine_has_prefix_results(tmp_path):
    decode = _step(["cpu-bs16", "gpu-bs16"], [16], [1024], [10.0, 5.0])
    run = landing.read_run(
        _results_file(tmp_path / "a.json", "a" * 40, 1000, {"bench_pipelined.Step.track_pipelined": decode}), "gpu-x"
    )
    assert run.prefix == ()
    for entries in ([landing_html.MachineEntry("gpu-x", "GPU", "machines/gpu-x/index.html", run)], []):
        page = landing_html.page(entries, [], None)
        assert page.count('id="prefix-none"') == 1 and "no GPU machine's latest results hold them yet" in page
        assert "table.prefix" not in page and "bench_prefix." not in page  # no rows, no style, no link
