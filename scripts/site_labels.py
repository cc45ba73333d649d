"""What the published asv pages say besides asv's own words: the bar at the foot of every
page (which machine, the other machines' sites, the landing page, which way the ratios
go). scripts/publish_site.py writes them into each machine's site after `asv publish`."""

from __future__ import annotations

import html
import os

DIRECTION = ("<b>Speedup pages</b> (<code>InverseSpeedup</code>): GPU time / CPU time, "
             "<b>lower is better</b>; 1 / value is the CPU/GPU speedup that "
             "<code>python -m disagmoe.bench</code> prints (0.25: the gpu backend is 4x faster). "
             "<code>RelativeTime</code>: time / reference time, lower is better.")


def footer(name: str, label: str, others: list[tuple[str, str, str]], front: str) -> str:
    """The bar at the foot of every page of machine `name`'s site; `others`: (href, name,
    label) of the other machines' sites, `front`: the landing page's href."""
    links = [f'<a href="{html.escape(href)}">{html.escape(other)}</a> ({html.escape(what)})'
             for href, other, what in others]
    also = "; other machines, each a site of its own: " + ", ".join(links) if links else ""
    return (f'<div id="disagmoe-footer"><a href="{html.escape(front)}">Which design wins where</a> &middot; '
            f'machine <b>{html.escape(name)}</b> ({html.escape(label)}){also}.<br>{DIRECTION}</div>')


# the footer's room: asv lays its panels out with absolute positions down to the bottom
FOOTER_STYLE = """<style>
      #disagmoe-footer { position: fixed; left: 0; right: 0; bottom: 0; height: 40px; z-index: 1030;
        padding: 2px 10px; font-size: 12px; line-height: 18px; background: #f8f8f8;
        border-top: 1px solid #e7e7e7; overflow: hidden; }
      #summarygrid-display, #regressions-display { height: auto !important; bottom: 40px; overflow-y: auto; }
      #summarylist-navigation, #summarylist-body, #graphdisplay-navigation { bottom: 40px !important; }
      #graph-display > div:last-child { bottom: 50px !important; }
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
