"""What the published asv pages say besides asv's own words: the bar at the foot of every
page (which machine, the other machines' sites, the landing page, which way the ratios
go), the units that say which way is better, and what the regressions page is worth.
scripts/publish_site.py writes them into each machine's site after `asv publish`."""

from __future__ import annotations

import html
import json
import os
import re

DIRECTION = (
    "<b>Speedup pages</b> (<code>bench_speedup.InverseSpeedup</code>): GPU time / CPU time, "
    "<b>lower is better</b> (1 / the CPU/GPU speedup that <code>python -m disagmoe_bench</code> prints; "
    "0.25: the gpu backend is 4x faster). <code>RelativeTime</code>: time / reference time, lower is "
    "better.<br><b>Serving pages</b> (<code>bench_pipelined</code>, <code>bench_trace</code>): "
    "<code>InverseSpeedup</code>: variant time / cpu-bs16 time, <b>lower is better</b> (0.25: the variant "
    "is 4x faster than cpu-bs16). <code>RelativeStep</code>: step time / reference step time, lower is "
    "better. <code>Step</code>: us per step, lower is better."
)
# Units (the graphs' y axis, the list's values) that do not say which way is better. The
# benchmarks keep theirs (asv's history); the published index.json says more.
# asv's copy of jquery.flot.axislabels draws a y label from the plot's middle upwards, so a
# label longer than a third of the plot is cut at the top; centred, it has the plot's height.
AXIS_LABELS = (
    "jquery.flot.axislabels.js",
    "y = plot.getPlotOffset().top + plot.height()/2 - width/2;",
    "y = plot.getPlotOffset().top + plot.height()/2 + width/2;",
)
UNITS = {
    "variant time / cpu-bs16 time": "variant time / cpu-bs16 time, lower is better",
    "step time / reference step time": "step time / reference step time, lower is better",
    "us per step": "us per step, lower is better",
}


def footer(name: str, label: str, others: list[tuple[str, str, str]], front: str) -> str:
    """The bar at the foot of every page of machine `name`'s site; `others`: (href, name,
    label) of the other machines' sites, `front`: the landing page's href."""
    links = [
        f'<a href="{html.escape(href)}">{html.escape(other)}</a> ({html.escape(what)})' for href, other, what in others
    ]
    also = "; other machines, each a site of its own: " + ", ".join(links) if links else ""
    return (
        f'<div id="disagmoe-footer"><a href="{html.escape(front)}">Which design wins where</a> &middot; '
        f"machine <b>{html.escape(name)}</b> ({html.escape(label)}){also}.<br>{DIRECTION}</div>"
    )


# the footer's room: asv lays its panels out with absolute positions down to the bottom
FOOTER_STYLE = """<style>
      #disagmoe-footer { position: fixed; left: 0; right: 0; bottom: 0; height: 72px; z-index: 1030;
        padding: 2px 10px; font-size: 12px; line-height: 17px; background: #f8f8f8;
        border-top: 1px solid #e7e7e7; overflow: hidden; }
      #summarygrid-display, #regressions-display { height: auto !important; bottom: 72px; overflow-y: auto; }
      #summarylist-navigation, #summarylist-body, #graphdisplay-navigation { bottom: 72px !important; }
      #graph-display > div:last-child { bottom: 82px !important; }
    </style>"""


def label_pages(site: str, footer_html: str) -> None:
    index = os.path.join(site, "index.html")
    with open(index) as f:
        page = f.read()
    if "</head>" not in page or "</body>" not in page:
        raise ValueError(f"{index}: not the page of asv 0.6.6 this script labels")
    page = page.replace("</head>", FOOTER_STYLE + "\n  </head>", 1)
    page = page.replace("</body>", footer_html + "\n  </body>", 1)
    with open(index, "w") as f:
        f.write(page)


def label_units(site: str) -> list[str]:
    """Units of UNITS in the site's index.json replaced by their longer words; returns the
    benchmarks relabelled."""
    path = os.path.join(site, "index.json")
    with open(path) as f:
        index = json.load(f)
    changed = sorted(name for name, b in index["benchmarks"].items() if b.get("unit") in UNITS)
    for name in changed:
        index["benchmarks"][name]["unit"] = UNITS[index["benchmarks"][name]["unit"]]
    with open(path, "w") as f:
        json.dump(index, f)
    return changed


def centre_axis_labels(site: str) -> None:
    """The y axis label centred on the axis (AXIS_LABELS); ValueError where the site's copy of
    the plugin is not the one this fixes."""
    name, drawn, centred = AXIS_LABELS
    path = os.path.join(site, name)
    with open(path) as f:
        text = f.read()
    if text.count(drawn) != 1:
        raise ValueError(f"{path}: not the axis label plugin of asv 0.6.6 (no line {drawn!r})")
    with open(path, "w") as f:
        f.write(text.replace(drawn, centred))


# ratios measured in one process, each against work timed in turn: what to read for a verdict
STEADY = (".RelativeTime.", ".InverseSpeedup.", ".RelativeStep.")
NOTE_STYLE = "margin: 10px 25px 0; padding: 6px 10px; font-size: 13px; background: #fcf8e3; border: 1px solid #faebcc;"


def _timed(name: str) -> bool:
    return name.split("(", 1)[0].rsplit(".", 1)[-1].startswith("time_")


def regressions_note(regressions: list, benchmarks: list[str], num_commits: int, thresholds: bool) -> str:
    """The note above asv's regressions list, from the site's regressions.json entries and
    the benchmarks with data in the site; "" where the list needs none."""
    listed = [r for r in regressions if r[6]]
    if not listed:
        why = "one set of results, nothing to compare yet" if num_commits < 2 else f"{num_commits} commits compared"
        return (
            f'<div id="disagmoe-regressions-note" style="{NOTE_STYLE}"><b>No regressions</b> in this '
            f"machine's history ({why}).</div><style>#regressions-body {{ display: none; }}</style>"
        )
    timed = [r for r in listed if _timed(r[0])]
    if not timed:
        return ""
    factors = [after / before for r in timed for _, _, before, after in r[6]]
    steady = [b for b in benchmarks if any(k in b for k in STEADY)]
    links = ", ".join(f'<a href="#{html.escape(b)}">{html.escape(b)}</a>' for b in sorted(steady)) or "none here"
    which = (
        "all the regressions below are"
        if len(timed) == len(listed)
        else f"{len(timed)} of the {len(listed)} regressions below are"
    )
    rule = (
        " The factor each benchmark must pass is asv.conf.json's <code>regressions_thresholds</code>."
        if thresholds
        else ""
    )
    return (
        f'<div id="disagmoe-regressions-note" style="{NOTE_STYLE}"><b>Read with care:</b> {which} '
        f"of <code>time_</code> benchmarks (factor {min(factors):.2f}-{max(factors):.2f}x), the absolute time of "
        "one call, which moves from run to run here: a lent machine's host speed changes between processes, "
        "and a history can span several machines of one kind (results/README.md). A step is a change of code "
        "only where the ratios measured in one process, each against work timed in turn, agree "
        f"(docs/benchmarking.md): {links}.{rule}</div>"
    )


def label_regressions(site: str, num_commits: int, thresholds: bool) -> str:
    """Writes the note of `regressions_note` into the site's page; returns it."""
    with open(os.path.join(site, "regressions.json")) as f:
        regressions = json.load(f)["regressions"]
    with open(os.path.join(site, "index.json")) as f:
        names = json.load(f)["benchmarks"]
    benchmarks = [b for b in names if os.path.exists(os.path.join(site, "graphs", "summary", b + ".json"))]
    note = regressions_note(regressions, benchmarks, num_commits, thresholds)
    index = os.path.join(site, "index.html")
    with open(index) as f:
        page = f.read()
    opening = re.search(r'<div id="regressions-display"[^>]*>', page)
    if opening is None:
        raise ValueError(f"{index}: no regressions view, not the page of asv 0.6.6 this script labels")
    with open(index, "w") as f:
        f.write(page[: opening.end()] + note + page[opening.end() :])
    return note
