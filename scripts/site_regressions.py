"""The note above asv's regressions list on each machine's site: the factor each kind of
benchmark must pass to be listed (asv.conf.json's `regressions_thresholds`, applied by asv's
own rule), then every regression listed, largest first, in words and the benchmark's units,
and, where `time_` benchmarks are listed, what their absolute times are worth.
scripts/publish_site.py writes it into each site after `asv publish`."""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from ast import literal_eval
from types import SimpleNamespace

# ratios measured in one process, each against work timed in turn: what to read for a verdict
STEADY = (".RelativeTime.", ".InverseSpeedup.", ".RelativeStep.")
NOTE_STYLE = "margin: 10px 25px 0; padding: 6px 10px; font-size: 13px; background: #fcf8e3; border: 1px solid #faebcc;"


def threshold_of(thresholds: dict[str, float], name: str) -> float:
    """The threshold asv applies to benchmark `name`: asv's own rule (the largest of the
    patterns matching the name's start, else asv's default), called rather than copied."""
    from asv.plugins import regressions

    rule = getattr(getattr(regressions, "_GraphDataFilter", None), "_get_threshold", None)
    if rule is None:
        raise ValueError("this asv has no _GraphDataFilter._get_threshold: not asv 0.6.6, whose rule the note names")
    me = SimpleNamespace(conf=SimpleNamespace(regressions_thresholds=thresholds))
    return float(rule(me, SimpleNamespace(params={}), None, name))


def kind(name: str) -> str:
    """`module.Class` of a benchmark, with `.time_*` where its method is one, and the whole
    name of a tail figure (`*_p99`: its class's medians have another threshold)."""
    module_class, method = name.split("(", 1)[0].rsplit(".", 1)
    if method.endswith("_p99"):
        return f"{module_class}.{method}"
    return module_class + (".time_*" if method.startswith("time_") else "")


def thresholds_html(benchmarks: list[str], thresholds: dict[str, float]) -> str:
    """A line per factor: the kinds of benchmark of this site listed past it."""
    by_factor: dict[float, set[str]] = {}
    for name in benchmarks:
        by_factor.setdefault(threshold_of(thresholds, name), set()).add(kind(name))
    lines = "".join(
        f"<li><b>{1 + t:.2f}x</b> (threshold {t:g}): "
        + ", ".join(f"<code>{html.escape(k)}</code>" for k in sorted(kinds))
        + "</li>"
        for t, kinds in sorted(by_factor.items(), reverse=True)
    )
    return (
        "asv lists a benchmark whose latest value is above its best by more than a factor: "
        "1 + its threshold, the largest of <code>asv.conf.json</code>'s <code>regressions_thresholds</code> "
        f'that match its name, else asv\'s default. Here:<ul id="disagmoe-thresholds">{lines}</ul>'
    )


@dataclasses.dataclass(frozen=True)
class Jump:
    """One step up of one grid point of one benchmark, as asv's regressions.json holds it."""

    benchmark: str  # without its parameters
    params: tuple  # the grid point
    before: float
    after: float
    commit: str  # the first commit with the new value
    previous: str | None  # the commit before the step, where asv names one

    @property
    def factor(self) -> float:
        return self.after / self.before if self.before else float("inf")


def jumps(regressions: list, revisions: dict[str, str]) -> list[Jump]:
    """Every step of asv's list (entries [name, graph, params, idx, last, best, steps]), largest first."""
    out = []
    for entry in regressions:
        name, steps = entry[0], entry[6] or []
        benchmark, _, rest = name.partition("(")
        params = literal_eval("(" + rest) if rest else ()
        params = params if isinstance(params, tuple) else (params,)
        for start, end, before, after in steps:
            previous = revisions.get(str(start)) if start is not None else None
            out.append(Jump(benchmark, params, before, after, revisions.get(str(end), str(end)), previous))
    return sorted(out, key=lambda j: (-j.factor, j.benchmark, repr(j.params)))


def size(value: object) -> str:
    if isinstance(value, int) and value > 1024 and value % 1024 == 0:  # 1024 is more often a count
        return f"{value // 1024}K"
    return str(value)


def jump_html(jump: Jump, info: dict) -> str:
    names = info.get("param_names") or [f"p{k}" for k in range(len(jump.params))]
    where = ", ".join(f"{html.escape(n)} {html.escape(size(v))}" for n, v in zip(names, jump.params))
    unit = info.get("unit", "")
    since = f" (after <code>{jump.previous[:7]}</code>)" if jump.previous else ""
    return (
        f'<li data-benchmark="{html.escape(jump.benchmark)}" data-commit="{html.escape(jump.commit[:7])}">'
        f"<b>{jump.factor:.2f}x</b> higher at commit <code>{html.escape(jump.commit[:7])}</code>{since}: "
        f"<code>{html.escape(jump.benchmark)}</code>{', ' + where if where else ''}: "
        f"{jump.before:.3g} &rarr; {jump.after:.3g} {html.escape(unit)}</li>"
    )


def _timed(name: str) -> bool:
    return name.split("(", 1)[0].rsplit(".", 1)[-1].startswith("time_")


def timed_caveat(found: list[Jump], benchmarks: list[str]) -> str:
    """Where `time_` benchmarks are listed: what their absolute times are worth, and the ratios to read."""
    timed = [j for j in found if _timed(j.benchmark)]
    if not timed:
        return ""
    factors = [j.factor for j in timed]
    steady = [b for b in benchmarks if any(k in b for k in STEADY)]
    links = ", ".join(f'<a href="#{html.escape(b)}">{html.escape(b)}</a>' for b in sorted(steady)) or "none here"
    which = "all of them are" if len(timed) == len(found) else f"{len(timed)} of the {len(found)} are"
    return (
        f"<p><b>Read with care:</b> {which} of <code>time_</code> benchmarks (factor "
        f"{min(factors):.2f}-{max(factors):.2f}x), the absolute time of one call, which moves from run to run "
        "here: a lent machine's host speed changes between processes, and a history can span several "
        "machines of one kind (results/README.md). A step is a change of code only where the ratios measured "
        f"in one process, each against work timed in turn, agree (docs/benchmarking.md): {links}.</p>"
    )


def regressions_note(
    regressions: list, index: dict, benchmarks: list[str], num_commits: int, thresholds: dict[str, float]
) -> str:
    """The note above asv's regressions list, from the site's regressions.json entries, its
    index.json and the benchmarks with data in the site."""
    rule = thresholds_html(benchmarks, thresholds)
    found = jumps([r for r in regressions if r[6]], index.get("revision_to_hash", {}))
    if not found:
        why = "one set of results, nothing to compare yet" if num_commits < 2 else f"{num_commits} commits compared"
        return (
            f'<div id="disagmoe-regressions-note" style="{NOTE_STYLE}"><b>No regressions</b> in this '
            f"machine's history ({why}). {rule}</div><style>#regressions-body {{ display: none; }}</style>"
        )
    infos = index.get("benchmarks", {})
    items = "".join(jump_html(j, infos.get(j.benchmark, {})) for j in found)
    return (
        f'<div id="disagmoe-regressions-note" style="{NOTE_STYLE}"><b>{len(found)} '
        f"{'regression' if len(found) == 1 else 'regressions'}</b> in this machine's history, largest first "
        f'(asv\'s list, below, groups them by benchmark):<ol id="disagmoe-regressions-list">{items}</ol>'
        f"{rule}{timed_caveat(found, benchmarks)}</div>"
    )


def label_regressions(site: str, num_commits: int, thresholds: dict[str, float]) -> str:
    """Writes the note of `regressions_note` into the site's page; returns it."""
    with open(os.path.join(site, "regressions.json")) as f:
        regressions = json.load(f)["regressions"]
    with open(os.path.join(site, "index.json")) as f:
        index = json.load(f)
    benchmarks = [
        b for b in index["benchmarks"] if os.path.exists(os.path.join(site, "graphs", "summary", b + ".json"))
    ]
    note = regressions_note(regressions, index, benchmarks, num_commits, thresholds)
    page = os.path.join(site, "index.html")
    with open(page) as f:
        text = f.read()
    opening = re.search(r'<div id="regressions-display"[^>]*>', text)
    if opening is None:
        raise ValueError(f"{page}: no regressions view, not the page of asv 0.6.6 this script labels")
    with open(page, "w") as f:
        f.write(text[: opening.end()] + note + text[opening.end() :])
    return note
