"""The published asv site in a real browser, with no network: scripts/publish_site.py
publishes a small results set (two commits of the committed H100 history, the committed
H200 results with the serving benchmarks, bench_prefix's figures added by the test, and
a CPU machine's run of an H100 commit), a local web server serves it, and headless
Chromium opens the pages with every host but 127.0.0.1 unreachable. The landing page
must draw the H200's crossover maps and link into graphs that draw, the speedup graph
must draw its points, each machine's site must show that machine alone, and the pages
must make no request outside the local server.

Needs Chromium (Debian's `chromium`; DISAGMOE_CHROMIUM names another binary), Python's
`playwright` (the test extra; it drives the installed Chromium, it downloads none),
asv and the site's libraries (`npm ci`, or a .sitelibs folder). The module skips,
saying which is missing, where one is; with DISAGMOE_SITE_TEST=required (.ci/run sets
it) it fails instead, except under the sanitizer build, where it always skips.
"""

from __future__ import annotations

import ast
import functools
import glob
import http.server
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HISTORY = os.path.join(ROOT, "results", "h100-80gb-hbm3")
SERVING = os.path.join(ROOT, "results", "h200")  # committed results with the serving benchmarks
SPEEDUP = "bench_speedup.InverseSpeedup.track_pack_flash_attn_metadata"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
CPU_MACHINE = "cpu-sitetest"


def _chromium() -> str | None:
    for name in (os.environ.get("DISAGMOE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _site_libs() -> str | None:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import site_libs

        return site_libs.find_folder(ROOT, [os.environ.get("DISAGMOE_SITELIBS") or ".sitelibs", "node_modules"])
    except Exception:
        return None
    finally:
        sys.path.pop(0)


def _missing() -> str | None:
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        return "under the sanitizer build (scripts/sanitize.sh), whose LD_PRELOAD the browser would inherit"
    if _chromium() is None:
        return "no Chromium (apt-get install chromium, or DISAGMOE_CHROMIUM=/path/to/chrome)"
    for module, how in (("playwright", "pip install -e '.[test]'"), ("asv", "pip install -e '.[bench]'")):
        if importlib.util.find_spec(module) is None:
            return f"no Python module {module} ({how})"
    if _site_libs() is None:
        return "no site libraries (npm ci, or a .sitelibs folder: docs/site.md)"
    if len(glob.glob(os.path.join(HISTORY, "*-*.json"))) < 2:
        return f"fewer than two results files in {HISTORY}"
    if not glob.glob(os.path.join(SERVING, "*-*.json")):
        return f"no results file in {SERVING}"
    return None


MISSING = _missing()
if MISSING and os.environ.get("DISAGMOE_SITE_TEST") == "required" and "asan" not in os.environ.get("LD_PRELOAD", ""):
    raise RuntimeError(f"DISAGMOE_SITE_TEST=required, but the site test cannot run: {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"site test: {MISSING or ''}")


# the step up that the H200's history holds: benchmark, grid point, the commit where it shows
REGRESSION = (
    "bench_pipelined.InverseSpeedup.track_pipelined",
    "variant gpu-bs1, batch_size 1024, context 64K",
    "77eee94",
)


def _by_date() -> list[str]:
    def date(path: str) -> int:
        with open(path) as f:
            return json.load(f)["date"]

    return sorted(glob.glob(os.path.join(SERVING, "*-*.json")), key=date)


def _latest_serving() -> str:
    """The H200's latest results file (by commit date): the one the landing page draws."""
    return _by_date()[-1]


def _serving_set() -> list[str]:
    """The H200's files of the test's set: the one of REGRESSION's commit, the one before it
    and the latest, so that its regressions page has the step to list."""
    files = _by_date()
    at = next(k for k, path in enumerate(files) if os.path.basename(path).startswith(REGRESSION[2]))
    return sorted({files[at - 1], files[at], files[-1]})


def _cpu_run(source: str, target_dir: str) -> None:
    """A CPU machine's results file, as `asv run` writes one: every value 50x the
    GPU's, and the machine fields that `asv machine --yes` records."""
    with open(source) as f:
        data = json.load(f)
    for name, row in data["results"].items():
        if name != "bench_memory.Device.track_on_cuda" and isinstance(row[0], list):
            row[0] = [None if v is None else v * 50 for v in row[0]]
    data["results"]["bench_memory.Device.track_on_cuda"][0] = [0]
    info = {"arch": "x86_64", "cpu": "Test CPU", "num_cpu": "2", "os": "Linux", "ram": "24000000"}
    data["params"] = {**data["params"], **info, "machine": CPU_MACHINE}
    os.makedirs(target_dir)
    with open(os.path.join(target_dir, os.path.basename(source)), "w") as f:
        json.dump(data, f)
    with open(os.path.join(target_dir, "machine.json"), "w") as f:
        json.dump({"machine": CPU_MACHINE, "version": 1, **info}, f)


PREFIX_P50 = "bench_prefix.PrefixStep.track_pipelined_host_p50"


def _with_prefix(source: str, target: str) -> None:
    """The H200's results file with bench_prefix's figures added (no GPU run has measured them
    yet): every point of the suite's grid (results/benchmarks.json), each variant's p50 its
    place in the variant list plus one, under the benchmark's version so that asv draws it."""
    with open(source) as f:
        data = json.load(f)
    with open(os.path.join(ROOT, "results", "benchmarks.json")) as f:
        suite = json.load(f)
    started = max(row[3] for row in data["results"].values() if row[3])
    for name in [n for n in suite if n.startswith("bench_prefix.")]:
        params, values = suite[name]["params"], []
        for point in itertools.product(*(range(len(p)) for p in params)):
            values.append(0.25 if ".Cache." in name else float(point[0] + 1) * (3 if "p99" in name else 1))
        row = [values, params, suite[name]["version"], started, 1.0] + [None] * (len(data["result_columns"]) - 5)
        data["results"][name] = row
    with open(target, "w") as f:
        json.dump(data, f)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The published site, served on 127.0.0.1: its base address."""
    tmp = tmp_path_factory.mktemp("site")
    results = tmp / "results"
    history = results / "h100-80gb-hbm3"
    history.mkdir(parents=True)
    shutil.copyfile(os.path.join(ROOT, "results", "benchmarks.json"), results / "benchmarks.json")
    shutil.copyfile(os.path.join(HISTORY, "machine.json"), history / "machine.json")
    files = sorted(glob.glob(os.path.join(HISTORY, "*-*.json")))[:2]
    for path in files:
        shutil.copyfile(path, history / os.path.basename(path))
    _cpu_run(files[-1], str(results / CPU_MACHINE))
    (results / "h200").mkdir()
    shutil.copyfile(os.path.join(SERVING, "machine.json"), results / "h200" / "machine.json")
    for path in _serving_set():
        if path != _latest_serving():
            shutil.copyfile(path, results / "h200" / os.path.basename(path))
    _with_prefix(_latest_serving(), str(results / "h200" / os.path.basename(_latest_serving())))
    html = tmp / "html"
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "publish_site.py"),
            "--results",
            str(results),
            "--html-dir",
            str(html),
        ],
        check=True,
        cwd=ROOT,
    )
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, site):
    """A page whose every request outside the local server is recorded and refused, and
    whose console errors are recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.external_requests = []
    page.console_errors = []
    page.on("console", lambda message: page.console_errors.append(message.text) if message.type == "error" else None)

    def route(route):
        if route.request.url.startswith(site):
            route.continue_()
        else:
            page.external_requests.append(route.request.url)
            route.abort()

    page.route("**/*", route)
    yield page
    page.close()


def _graph_points(page, url: str) -> list[int]:
    """Opens a graph page and returns how many points each of its series drew."""
    page.goto(url)
    page.wait_for_function(
        "() => window.jQuery && $('#main-graph').data('plot') && $('#main-graph').data('plot').getData().length > 0",
        timeout=30000,
    )
    return page.evaluate(
        "() => $('#main-graph').data('plot').getData().map(s => s.data.filter(p => p[1] !== null).length)"
    )


def test_gpu_history_site_draws_the_speedup(page, site):
    points = _graph_points(page, f"{site}machines/h100-80gb-hbm3/index.html#{SPEEDUP}")
    assert points and all(n == 2 for n in points), points  # both commits, every series
    main = page.evaluate("() => $.asv.main_json")
    assert main["params"]["machine"] == ["h100-80gb-hbm3"]
    assert not {"arch", "cpu", "num_cpu", "os", "ram"} & set(main["params"])
    assert main["benchmarks"][SPEEDUP]["unit"] == "GPU time / CPU time, lower is better"
    footer = page.inner_text("#disagmoe-footer")
    assert "h100-80gb-hbm3" in footer and CPU_MACHINE in footer and "h200" in footer
    assert page.get_attribute("#disagmoe-footer a", "href") == "../../index.html"  # the landing page
    assert "GPU time / CPU time, lower is better" in footer
    assert "disagmoe on h100-80gb-hbm3" in page.title()
    assert page.external_requests == []


def test_cpu_machine_has_a_site_of_its_own(page, site):
    points = _graph_points(page, f"{site}machines/{CPU_MACHINE}/index.html#{SPEEDUP}")
    assert points and all(n == 1 for n in points), points
    main = page.evaluate("() => $.asv.main_json")
    assert main["params"]["machine"] == [CPU_MACHINE]
    assert not {"arch", "cpu", "num_cpu", "os", "ram"} & set(main["params"])
    assert page.external_requests == []


def test_every_view_loads_offline(page, site):
    for view in ("", "#/summarylist", "#/regressions"):
        page.goto(f"{site}machines/h100-80gb-hbm3/index.html{view}")
        page.wait_for_function("() => window.jQuery && $.asv && $.asv.main_json", timeout=30000)
        assert "error.html" not in page.url  # asv's page for "dependencies failed to load"
    assert page.external_requests == []


def test_landing_page_draws_the_maps(page, site):
    page.goto(f"{site}index.html")
    assert page.title() == "disagmoe: which design wins where"
    h200 = page.locator("#machine-h200")
    assert h200.locator("table.map").count() == 6  # decode and trace, three timing modes each
    for workload, points in (("decode", 12), ("trace", 9)):
        cells = h200.locator(f'table.map[data-workload="{workload}"][data-mode="pipelined"] td.cell')
        assert cells.count() == points
        winners = cells.evaluate_all("cells => cells.map(c => c.dataset.winner)")
        assert all(w in ("cpu-bs16", "gpu-bs1", "gpu-bs16", "hybrid-bs16") for w in winners), winners
    assert h200.locator("table.regimes tr").count() == 1 + 8  # four corners of each workload
    with open(_latest_serving()) as f:
        p99 = json.load(f)["results"].get("bench_pipelined.Step.track_pipelined_host_p99")
    measured = p99 is not None and any(v is not None for v in p99[0])
    assert ("p99 not measured" in h200.inner_text()) == (not measured)  # 6e82aea's results predate it
    line = page.locator("#no-serving-h100-80gb-hbm3")
    assert line.count() == 1 and line.inner_text().startswith("No serving results on h100-80gb-hbm3: its latest")
    assert page.locator("#machine-h100-80gb-hbm3 table, #machine-h100-80gb-hbm3 p").count() == 1  # that line alone
    assert CPU_MACHINE in page.inner_text("#other-machines")
    assert page.console_errors == [] and page.external_requests == []


def test_landing_page_links_open_graphs(page, site):
    """One link of every benchmark the landing page links to opens asv's graph of it, with
    the link's parameter on the x axis and a point for each of its values."""
    page.goto(f"{site}index.html")
    hrefs = page.eval_on_selector_all("#machine-h200 a.graph", "links => links.map(a => a.getAttribute('href'))")
    first = {}
    for href in hrefs:
        assert href.startswith("machines/h200/index.html#bench_"), href
        first.setdefault(href.split("#")[1].split("?")[0], href)
    assert len(first) == 10  # Step: three modes, InverseSpeedup: two; decode and trace
    for benchmark, href in sorted(first.items()):
        page.goto("about:blank")  # a fresh load each time: no graph left from the previous one
        points = _graph_points(page, site + href)
        x_axis = href.split("x-axis=")[1].split("&")[0]
        values = page.evaluate(f"() => $.asv.main_json.benchmarks['{benchmark}']")
        num_x = len(values["params"][values["param_names"].index(x_axis)])
        assert points and all(n == num_x for n in points), (href, points)
        fixed = href.split("&p-")[1].split("=")[1]
        active = page.evaluate("() => $('#graphdisplay-navigation .active').map((i, e) => $(e).text().trim()).get()")
        assert x_axis in active and fixed in active, (href, active)  # the buttons asv lit from the address
    assert page.console_errors == [] and page.external_requests == []


def test_landing_page_shows_the_production_traces(page, site):
    """Each trace bench_replay replayed has its row (winner, its host times, the other modes),
    and its link opens asv's graph of every variant over the commits (one here)."""
    page.goto(f"{site}index.html")
    rows = page.locator("#machine-h200 table.replays tr[data-trace]")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.trace)") == ["azure-conv", "mooncake"]
    winners = rows.evaluate_all("rows => rows.map(r => r.dataset.winner)")
    assert all(w in ("cpu-bs16", "gpu-bs1", "gpu-bs16", "hybrid-bs16") for w in winners), winners
    assert "not measured" not in page.inner_text("#machine-h200 table.replays")
    shown = rows.evaluate_all("rows => rows.map(r => r.querySelectorAll('table.t tr').length)")
    assert shown == [4, 4]  # every design's median, visible
    hrefs = rows.evaluate_all("rows => rows.map(r => r.querySelector('a.history').getAttribute('href'))")
    for href in hrefs:
        page.goto("about:blank")
        points = _graph_points(page, site + href)
        assert len(points) == 4 and len(set(points)) == 1 and points[0] >= 1, (href, points)  # a line per variant
    assert page.console_errors == [] and page.external_requests == []


def test_landing_page_shows_the_prefix_rows(page, site):
    """A row per trace and prefix-cache mode of bench_prefix (the test's figures: cpu-bs16 the
    fastest everywhere), and its link opens asv's graph of every variant over the commits."""
    page.goto(f"{site}index.html")
    assert page.locator("#prefix-none").count() == 0
    rows = page.locator("#machine-h200 table.prefix tr[data-trace]")
    keys = rows.evaluate_all("rows => rows.map(r => [r.dataset.trace, r.dataset.mode])")
    assert [mode for _, mode in keys] == ["off", "miss", "on"] * 3, keys
    assert sorted({trace for trace, _ in keys}) == ["mooncake", "servegen-offline", "servegen-offline-poisson"]
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.winner)")) == {"cpu-bs16"}
    text = page.inner_text("#machine-h200 table.prefix")
    assert "25.0% (bound 25.0%)" in text and "no cache" in text
    assert rows.first.locator("td").nth(4).inner_text().startswith("1 \u00b7 3")  # cpu-bs16: p50 · p99
    hrefs = rows.evaluate_all("rows => rows.map(r => r.querySelector('a.history').getAttribute('href'))")
    assert all(h.startswith(f"machines/h200/index.html#{PREFIX_P50}?p-trace=") for h in hrefs), hrefs
    for href in (hrefs[0], hrefs[-1]):
        page.goto("about:blank")
        points = _graph_points(page, site + href)
        assert points == [1, 1, 1], (href, points)  # a line per variant, the one commit of this set
    assert page.console_errors == [] and page.external_requests == []


def test_serving_ratios_say_which_way_is_better(page, site):
    """The serving benchmarks' units name no direction (and stay so: asv's history); the
    published pages add it, on the y axis and in the footer."""
    _graph_points(page, f"{site}machines/h200/index.html#bench_trace.InverseSpeedup.track_pipelined")
    unit = "variant time / cpu-bs16 time, lower is better"
    assert page.evaluate("() => $.asv.main_json.benchmarks['bench_trace.InverseSpeedup.track_pipelined'].unit") == unit
    assert page.evaluate("() => $('#main-graph').data('plot').getOptions().yaxes[0].axisLabel") == unit
    assert "variant time / cpu-bs16 time, lower is better" in page.inner_text("#disagmoe-footer")


def test_regressions_pages_say_what_their_list_is_worth(page, site):
    page.goto(f"{site}index.html")
    href = page.get_attribute("#machine-h200 a.regressions", "href")
    assert href == "machines/h200/index.html#/regressions"
    page.goto(site + href)
    page.wait_for_selector("#disagmoe-regressions-list", state="visible", timeout=30000)
    benchmark, where, commit = REGRESSION
    items = page.locator(f'#disagmoe-regressions-list li[data-benchmark="{benchmark}"][data-commit="{commit}"]')
    texts = items.evaluate_all("items => items.map(i => i.innerText)")
    assert any(f"{where}: " in t and "variant time / cpu-bs16 time, lower is better" in t for t in texts), texts
    lines = page.locator("#disagmoe-thresholds li").evaluate_all("items => items.map(i => i.innerText)")
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import publish_site
    import site_regressions

    sys.path.pop(0)
    conf = publish_site.load_conf(ROOT).get("regressions_thresholds", {})
    for name in (benchmark, "bench_pipelined.Step.track_pipelined"):
        threshold = site_regressions.threshold_of(conf, name)
        line = next(li for li in lines if site_regressions.kind(name) + "," in li + ",")
        assert line.startswith(f"{1 + threshold:.2f}x (threshold {threshold:g})"), (name, lines)
    page.goto(f"{site}machines/h100-80gb-hbm3/index.html#/regressions")
    page.wait_for_function("() => window.jQuery && $('#regressions-body table').length > 0", timeout=30000)
    listed = page.evaluate(
        "() => $.getJSON('regressions.json').then(d => d.regressions.filter(r => r[6]).map(r => r[0]))"
    )
    timed = [name for name in listed if name.split("(")[0].rsplit(".", 1)[1].startswith("time_")]
    note = page.inner_text("#disagmoe-regressions-note") if page.locator("#disagmoe-regressions-note").count() else ""
    assert ("time_" in note) == bool(timed), (listed, note)
    if not listed:
        assert note.startswith("No regressions")
    assert page.external_requests == []


def test_old_addresses_of_the_front_page_open_the_gpu_history(page, site):
    page.goto(f"{site}index.html#/regressions")
    page.wait_for_url("**/machines/h100-80gb-hbm3/index.html#*", timeout=30000)
    page.wait_for_function("() => window.jQuery && $.asv && $.asv.main_json", timeout=30000)
    assert page.evaluate("() => $.asv.main_json.params.machine") == ["h100-80gb-hbm3"]


VARIANTS = ("cpu-bs16", "gpu-bs1", "gpu-bs16", "hybrid-bs16")


def test_landing_page_opens_with_where_each_design_wins(page, site):
    """A sentence per machine, after the line that names its card, commit, date and lag."""
    page.goto(f"{site}index.html")
    lines = page.locator("#answer li").evaluate_all("items => items.map(i => i.innerText)")
    assert [line.split(":", 1)[0].split(",", 1)[0] for line in lines[::2]] == ["h200", "h100-80gb-hbm3"]
    for header in lines[::2]:
        assert " results of commit " in header and " card " in header
        assert " behind " in header or "lag unknown" in header
    h200, h100 = lines[1], lines[3]
    assert h200.startswith("On h200, pipelined") and all(f"{v} wins " in h200 for v in VARIANTS)
    assert h100.startswith("h100-80gb-hbm3 has no serving results")


def test_map_cells_show_every_median_and_name_the_runner_up(page, site):
    page.goto(f"{site}index.html")
    with open(_latest_serving()) as f:
        row = json.load(f)["results"]["bench_trace.Step.track_pipelined"]
    variants, runs, prompts = ([ast.literal_eval(v) for v in p] for p in row[1])
    values = dict(zip(itertools.product(variants, runs, prompts), row[0]))
    grid = page.locator('#machine-h200 table.map[data-workload="trace"][data-mode="pipelined"]')
    cells = grid.locator("td.cell")
    for k, (r, p) in enumerate(itertools.product(runs, prompts)):
        cell = cells.nth(k)
        shown = cell.locator("table.t tr").evaluate_all("rows => rows.map(r => r.innerText.split('\\t'))")
        assert cell.locator("table.t").is_visible()
        medians = {v: values[(v, r, p)] for v in variants if values[(v, r, p)] is not None}
        assert [name for name, _ in shown] == list(medians)
        for name, figure in shown:
            assert float(figure) == pytest.approx(medians[name], rel=0.01), (r, p, name, figure)
        ranked = sorted(medians, key=lambda v: (medians[v], v))
        tie = medians[ranked[1]] / medians[ranked[0]] < 1.10
        assert cell.locator(".r").count() == int(tie)
        if tie:
            margin = medians[ranked[1]] / medians[ranked[0]]
            assert cell.locator(".r").inner_text() == f"\u2248 {ranked[1]}, {margin:.2f}x"
    assert grid.locator("td.tie .r").count() >= 1  # the committed results hold near ties


def test_no_blank_tile_on_any_machines_site(page, site):
    """Every benchmark a machine's site lists has its graph (a tile without one is blank)."""
    failed = []
    page.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
    for machine in ("h200", "h100-80gb-hbm3", CPU_MACHINE):
        page.goto(f"{site}machines/{machine}/index.html")
        page.wait_for_function("() => window.jQuery && $.asv && $.asv.main_json", timeout=30000)
        page.wait_for_function("() => $.asv.main_json.benchmarks", timeout=30000)
        statuses = page.evaluate(
            "() => Promise.all(Object.keys($.asv.main_json.benchmarks).map("
            "n => fetch('graphs/summary/' + n + '.json').then(r => [n, r.status])))"
        )
        assert statuses and [s for s in statuses if s[1] != 200] == [], machine
        page.wait_for_load_state("networkidle")
    assert failed == [] and page.external_requests == []


def test_the_footer_covers_no_graph(page, site):
    """On a graph page, the graphs and the menu end above the fixed footer; the views that
    scroll end above it too."""
    _graph_points(page, f"{site}machines/h200/index.html#bench_trace.Step.track_pipelined")
    bottoms = page.evaluate(
        "() => [...document.querySelectorAll('#graph-display canvas, #graphdisplay-navigation')]"
        ".map(e => e.getBoundingClientRect().bottom)"
    )
    top = page.evaluate("() => document.getElementById('disagmoe-footer').getBoundingClientRect().top")
    assert bottoms and max(bottoms) <= top, (bottoms, top)
    footer = page.evaluate("() => [document.getElementById('disagmoe-footer').scrollHeight, innerHeight]")
    assert footer[0] < footer[1] / 2
    for view, box in (("", "#summarygrid-display"), ("#/regressions", "#regressions-display")):
        page.goto(f"{site}machines/h200/index.html{view}")
        page.wait_for_selector(box, state="visible", timeout=30000)
        assert page.evaluate(f"() => document.querySelector('{box}').getBoundingClientRect().bottom") <= top
