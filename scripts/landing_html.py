"""The site's landing page: "which design wins where", drawn from scripts/landing.py's reading
of each GPU machine's latest results, as one HTML file with its style inline (no script
but the one that sends an old address of asv's front page on to that site, no request
outside the page). Deterministic: the same results give the same bytes."""

from __future__ import annotations

import dataclasses
import json

from landing import (
    BASELINE,
    HOST,
    HOST_P99,
    MODES,
    NEAR_TIE,
    P50,
    PREFIX,
    REPLAY,
    TRACES,
    WORKLOADS,
    CrossoverMap,
    PrefixRow,
    Run,
    Workload,
    regimes,
    step_benchmark,
)
from landing_cells import cell_verdict, esc, graph_href, link, medians, size, us, verdict

COLOURS = {"cpu-bs16": "#b9d3ee", "gpu-bs1": "#f7c58f", "gpu-bs16": "#a8dba0", "hybrid-bs16": "#d6bde8"}
SPARE_COLOURS = ("#f4a9a8", "#f1e59a", "#9fdfe0", "#d9c2a7")
DESIGNS = {
    "cpu-bs16": "C++ host tables, copied to the device each pack",
    "gpu-bs1": "device pools and free stack, token level (block size 1)",
    "gpu-bs16": "device pools and free stack, paged (block size 16)",
    "hybrid-bs16": "host allocation, device tables updated from staged diffs",
}


@dataclasses.dataclass(frozen=True)
class MachineEntry:
    """A machine as the landing page shows it."""

    name: str
    label: str  # what publish_site says of it (GPU or not, commits in git)
    site: str  # its asv site's index.html, relative to the landing page
    run: Run | None  # the results its maps come from (GPU machines only)
    run_in_git: bool = True
    newer_not_in_git: tuple[str, ...] = ()  # commits of later runs of this clone


def colour(variant: str, variants: tuple[str, ...]) -> str:
    if variant in COLOURS:
        return COLOURS[variant]
    spare = [v for v in variants if v not in COLOURS]
    return SPARE_COLOURS[spare.index(variant) % len(SPARE_COLOURS)]


def map_table(grid: CrossoverMap, site: str) -> str:
    w = grid.workload
    bench = step_benchmark(w, grid.mode.method)
    (rs, cs), (row_axis, column_axis) = w.symbols, w.axes
    head = "".join(
        f"<th>{link(graph_href(site, bench, row_axis, {column_axis: c}), f'{cs} = {size(c)}')}</th>"
        for c in grid.columns
    )
    rows = []
    for r in grid.rows:
        cells = []
        for c in grid.columns:
            cell = grid.cells.get((r, c))
            if cell is None:
                cells.append('<td class="cell none">not measured</td>')
                continue
            cells.append(
                f'<td class="cell{" tie" if cell.near_tie else ""}" data-winner="{esc(cell.winner)}" '
                f'style="background-color:{colour(cell.winner, grid.variants)}">'
                f"{verdict(grid, (r, c))}{medians(cell, grid.variants)}</td>"
            )
        row_link = link(graph_href(site, bench, column_axis, {row_axis: r}), f"{rs} = {r}")
        rows.append(f"<tr><th>{row_link}</th>{''.join(cells)}</tr>")
    wins = ", ".join(f"{esc(v)} {n}" for v, n in grid.wins().items())
    return (
        f'<table class="map" data-workload="{w.name}" data-mode="{grid.mode.name}">'
        f"<caption><b>{grid.mode.name}</b>: {esc(grid.mode.what)} (medians below each winner)<br>cells won: {wins} "
        f"of {len(grid.cells)}</caption>"
        f'<tr><th class="corner">{rs} \\ {cs}</th>{head}</tr>{"".join(rows)}</table>'
    )


def legend(variants: tuple[str, ...]) -> str:
    keys = "".join(
        f'<span class="key" style="background-color:{colour(v, variants)}">{esc(v)}</span> '
        f"{esc(DESIGNS.get(v, ''))}<br>"
        for v in variants
    )
    return (
        f'<div class="legend">{keys}Each cell: the design with the lowest median there, and its speedup over '
        f"{BASELINE} ({BASELINE}'s median / the winner's, &gt; 1: faster); where {BASELINE} wins, its lead "
        f"over the runner-up. &asymp; and hatching: the runner-up, named, within {NEAR_TIE:.2f}x (a near tie: "
        "single points move more than that from run to run). Below, every design's median there, us (the "
        "winner's in bold); the axis labels open asv's graph of that row or column, the other axis on the x "
        "axis.</div>"
    )


def row_links(benchmark: str, w: Workload, rows: tuple[int, ...], site: str) -> str:
    return " &middot; ".join(
        link(graph_href(site, benchmark, w.axes[1], {w.axes[0]: r}), f"{w.symbols[0]} = {r}") for r in rows
    )


def workload_section(run: Run, w: Workload, site: str) -> str:
    grids = [run.maps[(w.name, m.name)] for m in MODES if (w.name, m.name) in run.maps]
    if not grids:
        return f"<p>{w.name}: not in these results.</p>"
    missing = [m.name for m in MODES if (w.name, m.name) not in run.maps]
    note = f'<p class="note">Not measured: {", ".join(missing)}.</p>' if missing else ""
    speedups = [
        f"{w.module}.InverseSpeedup.{m.method}"
        for m in MODES
        if f"{w.module}.InverseSpeedup.{m.method}" in run.benchmarks
    ]
    graphs = "".join(
        f"<li>{esc(b.split('.', 1)[1])} (variant time / {BASELINE} time, lower is better), "
        f"{w.labels[1]} on the x axis: {row_links(b, w, grids[0].rows, site)}</li>"
        for b in speedups
    )
    return (
        f'<h3 id="{esc(run.machine)}-{w.name}">{w.name.capitalize()}: {w.labels[0]} {w.symbols[0]} x '
        f"{w.labels[1]} {w.symbols[1]} (<code>{w.module}</code>)</h3>"
        f'<div class="maps">{"".join(map_table(g, site) for g in grids)}</div>{note}'
        f'<ul class="links">{graphs}</ul>'
    )


def regime_table(run: Run, site: str) -> str:
    head = (
        "<tr><th>workload</th><th>regime</th><th>pipelined: winner, speedup</th>"
        "<th>its host us per step: median &middot; p99</th><th>synced</th><th>busy</th><th>graph</th></tr>"
    )
    rows, no_p99 = [], []
    for w in WORKLOADS:
        pipelined = run.maps.get((w.name, "pipelined"))
        if pipelined is None:
            continue
        if w.name not in run.host_p99:
            no_p99.append(w.module)
        for regime in regimes(pipelined):
            point = regime.point
            winner = pipelined.cells[point].winner
            median = run.host.get(w.name, {}).get(point, {}).get(winner)
            p99 = run.host_p99.get(w.name, {}).get(point, {}).get(winner)
            tail = (
                f"{us(median) if median is not None else 'not measured'} &middot; "
                f"{us(p99) if p99 is not None else 'not measured'}"
            )
            others = []
            for mode in ("synced", "busy"):
                grid = run.maps.get((w.name, mode))
                others.append(verdict(grid, point) if grid and point in grid.cells else "not measured")
            href = graph_href(site, step_benchmark(w, "track_pipelined"), w.axes[1], {w.axes[0]: point[0]})
            where = f"{w.symbols[0]} = {point[0]}, {w.symbols[1]} = {size(point[1])}"
            rows.append(
                f"<tr><td>{w.name}</td><td>{regime.name} ({where})</td><td>{verdict(pipelined, point)}</td>"
                f"<td>{tail}</td><td>{others[0]}</td><td>{others[1]}</td>"
                f"<td>{link(href, f'{w.symbols[1]} on the x axis')}</td></tr>"
            )
    note = (
        (
            f'<p class="note">p99 not measured: the results of {run.commit[:7]} predate '
            f"<code>Step.track_pipelined_host_p99</code> ({', '.join(no_p99)}).</p>"
        )
        if no_p99
        else ""
    )
    return f'<table class="regimes">{head}{"".join(rows)}</table>{note}'


def replay_table(run: Run, site: str) -> str:
    """Per production trace that bench_replay replays: the winners, as the regime table."""
    head = (
        "<tr><th>trace</th><th>pipelined: winner, speedup; every design's median, us</th>"
        "<th>its host us per step: median &middot; p99</th>"
        "<th>synced</th><th>busy</th><th>graph</th></tr>"
    )
    rows = []
    for trace, cells in sorted(run.replays.items()):
        pipelined = cells.get("pipelined")
        if pipelined is None:
            continue
        figures = [run.replay_host.get(m, {}).get(trace, {}).get(pipelined.winner) for m in (HOST, HOST_P99)]
        tail = " &middot; ".join(us(v) if v is not None else "not measured" for v in figures)
        others = [cell_verdict(cells[m]) if m in cells else "not measured" for m in ("synced", "busy")]
        href = graph_href(site, f"{REPLAY}.Step.track_pipelined", None, {"trace": repr(trace)})
        every = medians(pipelined, tuple(sorted(pipelined.medians)))
        rows.append(
            f'<tr data-trace="{esc(trace)}" data-winner="{esc(pipelined.winner)}">'
            f"<td>{esc(trace)}: {esc(TRACES.get(trace, ''))}</td><td>{cell_verdict(pipelined)}{every}</td>"
            f"<td>{tail}</td><td>{others[0]}</td><td>{others[1]}</td>"
            f"<td>{link(href, 'every variant over the commits', 'history')}</td></tr>"
        )
    return (
        f'<h3 id="{esc(run.machine)}-replay">Production traces: the busiest stretch of each, scheduled as an '
        f"engine would (<code>{REPLAY}</code>)</h3>"
        f'<table class="replays">{head}{"".join(rows)}</table>'
    )


PREFIX_MODE_WORDS = {  # bench_prefix's prefix-cache modes, in words
    "off": "off: no hashes",
    "miss": "miss: every hash unique",
    "on": "on",
}


def share(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1%}"


def prefix_figures(row: PrefixRow, variant: str) -> str:
    """A variant's p50 and p99 host us per step, and the device us a step adds where measured."""
    if variant not in row.p50 and variant not in row.p99:
        return "not measured"
    host = " &middot; ".join(us(f[variant]) if variant in f else "not measured" for f in (row.p50, row.p99))
    return host + (f'<br><span class="s">device +{us(row.busy[variant])} us</span>' if variant in row.busy else "")


def prefix_table(run: Run, site: str) -> str:
    """Per trace and prefix-cache mode that bench_prefix replayed: the hit rate beside its bound,
    the winner by the p50 of each step's host time, and every variant's figures."""
    variants = sorted({v for row in run.prefix for v in (*row.p50, *row.p99, *row.busy)})
    head = (
        "<tr><th>trace</th><th>prefix cache</th><th>hit rate (bound)</th><th>winner: host us p50, speedup</th>"
        + "".join(f"<th>{esc(v)}: host us p50 &middot; p99</th>" for v in variants)
        + "<th>graph</th></tr>"
    )
    rows = []
    for row in run.prefix:
        cell = row.host
        rate = "no cache" if row.mode == "off" else f"{share(row.hit_rate)} (bound {share(row.bound)})"
        href = graph_href(
            site, f"{PREFIX}.PrefixStep.{P50}", None, {"trace": repr(row.trace), "prefix_cache": repr(row.mode)}
        )
        times = " | ".join(f"{v} {us(t)} us" for v, t in sorted(row.p50.items()))
        winner = f' data-winner="{esc(cell.winner)}"' if cell else ""
        rows.append(
            f'<tr data-trace="{esc(row.trace)}" data-mode="{esc(row.mode)}"{winner} title="{esc(times)}">'
            f"<td>{esc(row.trace)}: {esc(TRACES.get(row.trace, ''))}</td>"
            f"<td>{esc(PREFIX_MODE_WORDS.get(row.mode, row.mode))}</td><td>{rate}</td>"
            f"<td>{cell_verdict(cell) if cell else 'not measured'}</td>"
            + "".join(f"<td>{prefix_figures(row, v)}</td>" for v in variants)
            + f"<td>{link(href, 'every variant over the commits', 'history')}</td></tr>"
        )
    return (
        f'<h3 id="{esc(run.machine)}-prefix">Shared prefixes: the busiest stretch of each trace in each '
        f"prefix-cache mode (<code>{PREFIX}</code>)</h3>"
        '<p class="note">Modes: <b>off</b> (no hashes), <b>miss</b> (the prefix cache on, every hash unique: '
        "its cost at a 0% hit rate), <b>on</b> (matched prompt tokens shorten the prefills). Hit rate: prompt "
        "tokens served from the cache / prompt tokens prefilled, beside the bound (a cache that keeps every "
        f"block). Winner: the lowest p50 of each step's host us (pipelined), its speedup over {BASELINE}; "
        "device: the us a step adds behind a stand-in forward (CUDA only).</p>"
        f'<table class="prefix">{head}{"".join(rows)}</table>'
    )


def when(run: Run) -> str:
    measured = f", measured {run.measured:%Y-%m-%d %H:%M} UTC" if run.measured else ""
    return f"commit <code>{run.commit[:7]}</code> of {run.commit_date:%Y-%m-%d}{measured}"


def site_links(entry: MachineEntry) -> str:
    """Links to the machine's asv site: its graphs and its regressions page."""
    graphs = link(entry.site, f"all graphs of {esc(entry.name)}", "site")
    regressions = link(entry.site + "#/regressions", "its regressions", "regressions")
    return f"{graphs} &middot; {regressions}"


def machine_section(entry: MachineEntry) -> str:
    run = entry.run
    opening = f'<section class="machine" id="machine-{esc(entry.name)}"><h2>{esc(entry.name)}</h2>'
    if run is not None and not run.has_serving:
        return (
            f'{opening}<p class="plain" id="no-serving-{esc(entry.name)}">No serving results on '
            f"{esc(entry.name)}: its latest results ({when(run)}) time the operations alone (update, pack), "
            f"so no map. {site_links(entry)}.</p></section>"
        )
    head = (
        f'{opening}<p class="meta">Card <b>{esc(entry.name)}</b> (the asv machine, named after its GPU); '
        f"{esc(entry.label)}. {site_links(entry)}.</p>"
    )
    if run is None:
        return head + "<p>No results.</p></section>"
    source = "in git" if entry.run_in_git else "measured in this clone, not in git"
    newer = ", ".join(f"<code>{c[:7]}</code>" for c in entry.newer_not_in_git)
    later = f" Later runs of this clone, not in git: {newer}." if newer else ""
    used = f'<p class="meta">Results used: {when(run)} ({source}: <code>{esc(run.path)}</code>).{later}</p>'
    variants = next(iter(run.maps.values())).variants if run.maps else tuple(COLOURS)
    sections = "".join(workload_section(run, w, entry.site) for w in WORKLOADS)
    replays = replay_table(run, entry.site) if run.replays else ""
    prefix = prefix_table(run, entry.site) if run.prefix else ""
    return (
        head
        + used
        + legend(variants)
        + "<h3>In short: the winner per regime</h3>"
        + regime_table(run, entry.site)
        + replays
        + prefix
        + sections
        + "</section>"
    )


def answer_section(lines: tuple[str, ...]) -> str:
    """Where each design wins, per machine: scripts/answer.py's lines, as the README and
    docs/performance.md give them."""
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return (
        f'<section id="answer"><h2>Where each design wins</h2><ul>{items}</ul>'
        '<p class="note">The same lines open docs/performance.md and the README '
        "(<code>scripts/answer.py</code>); the lag is counted to the last commit of the code published "
        "here that changed what the benchmarks measure.</p></section>"
    )


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.0f}%"


def sensitivity_section(sensitivity: dict[str, dict | None]) -> str:
    """What the last injected-regression runs say a verdict could see, per machine
    (benchmarks/verdict_set.py's SENSITIVITY): the move of identical code in that run (the
    minimum detectable change, medians and tail), or that it is not measured yet."""
    if not sensitivity:
        return ""
    items = []
    for machine, run in sensitivity.items():
        if run is None:
            items.append(
                f"<li><b>{esc(machine)}</b>: not measured yet (the command is in docs/performance.md, "
                "&ldquo;Verdict sensitivity&rdquo;).</li>"
            )
            continue
        identical = {name: mdc["identical"] for name, mdc in run["mdc"].items() if "identical" in mdc}
        tail = max((v for n, v in identical.items() if n.endswith("_p99")), default=None)
        median = max((v for n, v in identical.items() if not n.endswith("_p99")), default=None)
        said = ", ".join(f"{what} {_pct(v)}" for what, v in (("medians", median), ("tail", tail)) if v is not None)
        items.append(
            f"<li><b>{esc(machine)}</b> ({esc(run['date'])}, commit <code>{esc(run['commit'])}</code>): "
            f"identical code moved by up to {said} between processes, so a verdict there tells from noise "
            "only a change beyond that; each verdict prints its own run's figure.</li>"
        )
    return (
        '<section id="sensitivity"><h2>What a verdict can see</h2><p>The minimum detectable change of the '
        "last injected-regression run on each machine (<code>scripts/check_regression.sh --injected</code>; "
        "<code>scripts/verdicts.sh</code> says <i>inconclusive</i> where a change is below it); the "
        "thresholds each kind of benchmark must pass head each machine's regressions page.</p>"
        f"<ul>{''.join(items)}</ul></section>"
    )


STYLE = """
body { font: 14px/1.4 sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 16px 32px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 19px; border-bottom: 1px solid #ccc; } h3 { font-size: 15px; }
nav a, .site { font-weight: bold; }
.maps { display: flex; flex-wrap: wrap; gap: 18px; }
table { border-collapse: collapse; }
table.map caption { caption-side: top; text-align: left; font-size: 12px; padding-bottom: 4px; }
table.map th, table.map td, table.regimes th, table.regimes td, table.replays th, table.replays td {
  border: 1px solid #bbb; padding: 3px 6px;
}
table.map td.cell { width: 118px; text-align: center; font-size: 12px; vertical-align: top; }
td.cell .w, td.cell .r { display: block; } td.cell .w { font-weight: bold; }
table.t { margin: 2px auto 0; font-size: 11px; } table.t td { padding: 0 3px; border: 0; }
table.t td + td { text-align: right; } table.t tr.win { font-weight: bold; }
#answer li { margin: 4px 0; } .r { font-size: 11px; }
td.tie { background-image: repeating-linear-gradient(45deg, rgba(255,255,255,.6) 0 4px, transparent 4px 9px); }
td.none { color: #888; background: #eee; }
table.regimes, table.replays { font-size: 13px; } table.regimes .w, table.replays .w { font-weight: bold; }
.legend { font-size: 12px; margin: 10px 0; } .key { display: inline-block; min-width: 90px; padding: 0 4px; }
.note, .meta { font-size: 12px; color: #444; } .plain { font-size: 15px; }
ul.links { font-size: 12px; }
"""
PREFIX_STYLE = """table.prefix { font-size: 13px; } table.prefix .w { font-weight: bold; }
table.prefix th, table.prefix td { border: 1px solid #bbb; padding: 3px 6px; }
"""  # added only to a page with bench_prefix rows: a page without them keeps its bytes
REDIRECT = """<script>
  // asv's front page used to be here: an address of it (#<benchmark>..., #/regressions) opens that site
  var h = window.location.hash;
  if (h.length > 1 && !document.getElementById(decodeURIComponent(h.slice(1)))) {
    window.location.replace(%s + h);
  }
</script>"""


def page(
    entries: list[MachineEntry],
    others: list[MachineEntry],
    old_front: str | None,
    answer: tuple[str, ...] = (),
    sensitivity: dict[str, dict | None] | None = None,
) -> str:
    """The landing page: where each design wins (`answer`: scripts/answer.py's lines), a
    section per GPU machine, what the verdicts can see (`sensitivity`), links to the other
    machines' sites."""
    nav = " &middot; ".join(link(f"#machine-{e.name}", esc(e.name), "") for e in entries)
    other = "".join(f"<li>{esc(e.name)}: {esc(e.label)}; {site_links(e)}</li>" for e in others)
    other_html = (
        (
            f'<section id="other-machines"><h2>Other machines</h2><p>No maps: these ran the gpu backend '
            "on torch's CPU device (no CUDA), where its times say nothing of a GPU; each has its site of asv "
            f"graphs.</p><ul>{other}</ul></section>"
        )
        if others
        else ""
    )
    sections = "".join(machine_section(e) for e in entries) or (
        '<p class="plain">No GPU machine has results in <code>results/</code>: no map to draw.</p>'
    )
    has_prefix = any(e.run is not None and e.run.prefix for e in entries)
    no_prefix = (
        ""
        if has_prefix
        else f'<p class="note" id="prefix-none">Shared prefixes (<code>{PREFIX}</code>): no GPU machine\'s '
        "latest results hold them yet.</p>"
    )
    style = STYLE + (PREFIX_STYLE if has_prefix else "")
    redirect = REDIRECT % json.dumps(old_front) if old_front else ""
    to_others = ' &middot; <a href="#other-machines">other machines</a>' if others else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>disagmoe: which design wins '
        f"where</title><style>{style}</style></head><body><h1>disagmoe: which design wins where</h1>"
        f"<p>The KV-cache bookkeeping designs side by side on each GPU machine, from the latest results of "
        f"the serving benchmarks kept in <code>results/</code>: decode steps of B requests at context L, "
        f"a continuous-batching trace of R running requests with prompts up to P, and two production "
        f"traces replayed through a continuous-batching scheduler. Timing modes: "
        f"<b>pipelined</b> (steps back to back, one synchronise at the end), <b>synced</b> (every call "
        f"until the device is done), <b>busy</b> (the device time a step adds behind a stand-in forward). "
        f"Lower times are better; a speedup is {BASELINE}'s median / the design's.</p>"
        f"<nav>Machines: {nav}{to_others}"
        f"</nav>{answer_section(answer)}{no_prefix}{sections}{sensitivity_section(sensitivity or {})}{other_html}"
        f'<p class="note">Written by <code>scripts/publish_site.py</code> (<code>scripts/landing.py</code>) '
        f"from the results files named above.</p>{redirect}</body></html>\n"
    )
