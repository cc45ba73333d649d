"""The landing page's small pieces (scripts/landing_html.py draws the page with them): escaping,
sizes and times in words, links into asv's graphs, and one cell of a map: its winner, the
speedup, a near tie's runner-up and every design's median."""

from __future__ import annotations

import html
import urllib.parse

from landing import BASELINE, Cell, CrossoverMap


def esc(text: object) -> str:
    return html.escape(str(text))


def size(value: int) -> str:
    return f"{value // 1024}K" if value >= 1024 and value % 1024 == 0 else str(value)


def us(value: float) -> str:
    return f"{value:.0f}" if value >= 1000 else f"{value:.3g}"


def graph_href(site: str, benchmark: str, x_axis: str | None, fixed: dict[str, object]) -> str:
    """An address of asv's graph page: `benchmark` with parameter `x_axis` on the x axis (None:
    the commits) and the others fixed (asv 0.6's hash: #<benchmark>?x-axis=<name>&p-<name>=<value>)."""
    query = ([("x-axis", x_axis)] if x_axis else []) + [(f"p-{k}", str(v)) for k, v in fixed.items()]
    return f"{site}#{benchmark}?" + "&".join(f"{urllib.parse.quote(k)}={urllib.parse.quote(v)}" for k, v in query)


def link(href: str, text: str, cls: str = "graph") -> str:
    return f'<a class="{cls}" href="{esc(href)}">{text}</a>'


def verdict(grid: CrossoverMap, point: tuple[int, int]) -> str:
    return cell_verdict(grid.cells[point])


def cell_verdict(cell: Cell) -> str:
    """The winner and its speedup over the baseline (its lead over the runner-up where the
    baseline wins), and in a near tie the runner-up named with its median / the winner's,
    as a map cell and the regime tables show it."""
    runner_up = (
        f' <span class="r">&asymp; {esc(cell.ranked[1])}, {cell.margin:.2f}x</span>'
        if cell.near_tie and cell.margin is not None
        else ""
    )
    if cell.winner == BASELINE:
        lead = f"lead {cell.margin:.2f}x" if cell.margin is not None else "alone"
        return f'<span class="w">{esc(cell.winner)}</span> <span class="s">{lead}</span>{runner_up}'
    speedup = cell.speedup(cell.winner)
    figure = f"{speedup:.2f}x" if speedup is not None else f"{BASELINE} not measured"
    return f'<span class="w">{esc(cell.winner)}</span> <span class="s">{figure}</span>{runner_up}'


WIN = ' class="win"'


def medians(cell: Cell, variants: tuple[str, ...]) -> str:
    """Every design's median in a cell, us, the winner's in bold."""
    rows = "".join(
        f"<tr{WIN if v == cell.winner else ''}><td>{esc(v)}</td><td>{us(cell.medians[v])}</td></tr>"
        for v in variants
        if v in cell.medians
    )
    return f'<table class="t">{rows}</table>'
