"""What the published asv pages say besides asv's own words: the bar at the foot of every
page (which machine, the other machines' sites, the landing page, which way the ratios
go) and the units that say which way is better (the regressions page's note:
scripts/site_regressions.py). scripts/publish_site.py writes them into each machine's site
after `asv publish`."""

from __future__ import annotations

import html
import json
import os

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


# the footer's room: asv lays its panels out with absolute positions down to the bottom, so
# each ends FOOTER_PX above it (the graph's box OVERVIEW_PX more: asv's overview plot, 100 px
# high with a 24 px padding inside a 100 px box, hangs 24 px below the box); the footer
# scrolls where its words need more room than it has.
FOOTER_PX, OVERVIEW_PX = 96, 34
FOOTER_STYLE = f"""<style>
      #disagmoe-footer {{ position: fixed; left: 0; right: 0; bottom: 0; height: {FOOTER_PX}px; z-index: 1030;
        padding: 2px 10px; font-size: 12px; line-height: 17px; background: #f8f8f8;
        border-top: 1px solid #e7e7e7; overflow-y: auto; box-sizing: border-box; }}
      #summarygrid-display, #regressions-display {{ height: auto !important; bottom: {FOOTER_PX}px; overflow-y: auto; }}
      #summarylist-navigation, #summarylist-body, #graphdisplay-navigation {{ bottom: {FOOTER_PX}px !important; }}
      #graph-display > div:last-child {{ bottom: {FOOTER_PX + OVERVIEW_PX}px !important; }}
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
