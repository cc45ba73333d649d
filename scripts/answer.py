"""Which design wins where: the one answer that docs/performance.md, the README and the
landing page give, made by one piece of code from the results files in results/.

Per GPU machine, from its latest results (scripts/landing.py chooses and reads them): the
card as the results record it ("not recorded" where they do not), the commit measured, its
date, how many commits the results lag the measured code, and one sentence of where each
design wins. The docs and the README hold it between marker comments:

    python3 scripts/answer.py            # rewrite both from the committed results
    python3 scripts/answer.py --check    # exit 1 where the committed text differs

The lag is counted to a named commit, the reference: the last commit that changed the
measured code (CODE_PATHS) when the text was written. The markers name it, so the committed
text stays true as later commits come: `--check` (and tests/test_answer.py) regenerate it
against the commit the markers name. The landing page counts to the code it is published
with (the last such commit of HEAD).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys

import landing
from landing_cells import size, us

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_PATHS = ("csrc", "disagmoe", "disagmoe_bench", "benchmarks")  # what the results measure
HEADLINE = ("pipelined", "wall time per step, steps back to back")  # the mode the sentence ranks by
# what a card is, and where asv's machine.json or a results file's params could record it
CARD_FIELDS = (
    ("model", ("gpu", "gpu_model", "card")),
    ("driver", ("driver", "nvidia_driver", "driver_version")),
    ("torch", ("torch", "torch_version")),
    ("CUDA", ("cuda", "cuda_version")),
)
MARKER = "<!-- answer: begin, reference {}; written by scripts/answer.py, do not edit -->\n"
BEGIN = re.compile(re.escape(MARKER).replace(r"\{\}", "([0-9a-f]{7,40})"))
END = "<!-- answer: end -->"
DOCS = (("README.md", "summary"), ("docs/performance.md", "section"))  # file, what goes between its markers


def git(root: str, *args: str) -> str | None:
    """git's output, None where it fails (no git, not a clone, an unknown commit)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_commit(root: str) -> str | None:
    """The last commit of HEAD that changed the measured code (None in a clone without history)."""
    return git(root, "log", "-1", "--format=%H", "HEAD", "--", *CODE_PATHS) or None


def lag(root: str, commit: str, reference: str | None) -> int | None:
    """Commits in `reference`'s history that `commit`'s lacks (None: either not in this clone)."""
    found = git(root, "rev-list", "--count", f"{commit}..{reference}") if reference else None
    return int(found) if found is not None else None


@dataclasses.dataclass(frozen=True)
class Card:
    name: str  # the asv machine, named after the card
    fields: tuple[tuple[str, str | None], ...]  # (what, value or None where not recorded)

    def words(self) -> str:
        known = [f"{what} {value}" for what, value in self.fields if value]
        missing = [what for what, value in self.fields if not value]
        parts = [f"card {self.name} (the asv machine name)"] + known
        if missing:
            parts.append(", ".join(missing) + ": not recorded in its results")
        return "; ".join(parts)


def read_card(results_path: str, machine: str) -> Card:
    """The card as asv recorded it: machine.json beside the results, and the results' params."""
    recorded: dict[str, object] = {}
    machine_json = os.path.join(os.path.dirname(results_path), "machine.json")
    if os.path.exists(machine_json):
        with open(machine_json) as f:
            recorded.update(json.load(f))
    with open(results_path) as f:
        data = json.load(f)
    recorded.update(data.get("params") or {})
    recorded.update({k.lower(): v for k, v in (data.get("requirements") or {}).items()})
    fields = []
    for what, keys in CARD_FIELDS:
        value = next((recorded[k] for k in keys if recorded.get(k) not in (None, "")), None)
        fields.append((what, None if value is None else str(value)))
    return Card(machine, tuple(fields))


@dataclasses.dataclass(frozen=True)
class MachineAnswer:
    run: landing.Run
    card: Card
    reference: str | None
    lag: int | None

    @property
    def header(self) -> str:
        run = self.run
        measured = f", measured {run.measured:%Y-%m-%d %H:%M} UTC" if run.measured else ""
        if self.reference is None:
            behind = "lag unknown (this clone has no history of the measured code)"
        elif self.lag is None:
            behind = f"lag unknown (commit {run.commit[:7]} is not in this clone)"
        else:
            count = f"{self.lag} {'commit' if self.lag == 1 else 'commits'}"
            behind = f"{count} behind {self.reference[:7]}, the last commit that changed the measured code"
        return (
            f"{run.machine}: results of commit {run.commit[:7]} of {run.commit_date:%Y-%m-%d}{measured}, "
            f"{behind}; {self.card.words()}."
        )

    @property
    def sentence(self) -> str:
        return where_each_wins(self.run)

    @property
    def lines(self) -> tuple[str, str]:
        return self.header, self.sentence


def where(grid: landing.CrossoverMap, point: landing.Point) -> str:
    (rs, cs), cell = grid.workload.symbols, grid.cells[point]
    tie = f", near tie: {cell.ranked[1]} {cell.margin:.2f}x" if cell.near_tie else ""
    return f"{rs} {point[0]}, {cs} {size(point[1])}{tie}"


def times(value: float) -> str:
    return f"{value:.3g}x"


def design_words(design: str, grids: list[landing.CrossoverMap]) -> str:
    """Where `design` wins among the headline maps: every cell by name when it wins few,
    else how many and by how much over the baseline."""
    parts = []
    for grid in grids:
        won = sorted(p for p, cell in grid.cells.items() if cell.winner == design)
        if not won:
            continue
        cells = f"{len(won)} of {len(grid.cells)} {grid.workload.name} cells"
        if len(won) <= 2:
            parts.append(f"{cells} ({'; '.join(where(grid, p) for p in won)})")
            continue
        known = [s for s in (grid.cells[p].speedup(design) for p in won) if s is not None]
        lead = (
            f" (up to {times(max(known))} faster than {landing.BASELINE})"
            if known and design != landing.BASELINE
            else ""
        )
        parts.append(cells + lead)
    return f"{design} wins " + (" and ".join(parts) if parts else "no cell")


def where_each_wins(run: landing.Run) -> str:
    """One sentence: where each design wins, by the headline mode, then the production traces."""
    if not run.has_serving:
        return (
            f"{run.machine} has no serving results: its latest results time the operations alone "
            "(update, pack), so they say nothing of which design wins where."
        )
    mode, what = HEADLINE
    grids = [run.maps[(w.name, mode)] for w in landing.WORKLOADS if (w.name, mode) in run.maps]
    won: dict[str, int] = {}
    for grid in grids:
        for variant in grid.variants:
            won.setdefault(variant, 0)
        for variant, count in grid.wins().items():
            won[variant] = won.get(variant, 0) + count
    said = "; ".join(design_words(d, grids) for d in sorted(won, key=lambda d: (-won[d], d)))
    replays: dict[str, list[str]] = {}
    for trace, cells in sorted(run.replays.items()):
        if mode in cells:
            replays.setdefault(cells[mode].winner, []).append(trace)
    traces = "; on the production traces, " + ", ".join(
        f"{winner} wins {' and '.join(traces)}" for winner, traces in sorted(replays.items())
    )
    return f"On {run.machine}, {mode} ({what}): {said or 'no map measured'}{traces if replays else ''}."


def answer_of(root: str, run: landing.Run, card: Card, reference: str | None) -> MachineAnswer:
    return MachineAnswer(run, card, reference, lag(root, run.commit, reference))


def order(run: landing.Run) -> tuple:
    """Machines with serving results first, then the latest results first."""
    return (not run.has_serving, -run.commit_date.timestamp(), run.machine)


def answers(root: str, results: str, reference: str | None) -> list[MachineAnswer]:
    """Every GPU machine's answer from its latest results in git (landing.choose), in `order`."""
    found = []
    for machine in sorted(os.listdir(results)):
        folder = os.path.join(results, machine)
        if not os.path.isdir(folder):
            continue
        tracked = {
            os.path.join(root, p) for p in (git(root, "ls-files", "--", os.path.relpath(folder, root)) or "").split()
        }
        choice = landing.choose([p for p in landing.results_files(folder) if p in tracked], tracked)
        if choice is None:
            continue
        run = landing.read_run(choice.path, machine, os.path.relpath(choice.path, root))
        if run.on_cuda:
            found.append(answer_of(root, run, read_card(choice.path, machine), reference))
    return sorted(found, key=lambda a: order(a.run))


def summary(found: list[MachineAnswer]) -> str:
    """The README's text: a bullet per line of each machine's answer."""
    if not found:
        return "- No GPU machine has results in results/.\n"
    return "".join(f"- {line}\n" for a in found for line in a.lines)


def table(grid: landing.CrossoverMap) -> str:
    """A headline map as a markdown table: every design's median, the winner's in bold."""
    (rs, cs), variants = grid.workload.symbols, grid.variants
    lines = [
        f"| {rs} | {cs} | " + " | ".join(variants) + " | winner (runner-up) |",
        "|---:|---:|" + "---:|" * len(variants) + "---|",
    ]
    for point in sorted(grid.cells):
        cell = grid.cells[point]
        figures = [
            "" if v not in cell.medians else f"**{us(cell.medians[v])}**" if v == cell.winner else us(cell.medians[v])
            for v in variants
        ]
        second = f"{cell.ranked[1]} {cell.margin:.2f}x" if cell.margin is not None else "alone"
        tie = ", near tie" if cell.near_tie else ""
        lines.append(
            f"| {point[0]} | {size(point[1])} | " + " | ".join(figures) + f" | {cell.winner} ({second}{tie}) |"
        )
    return "\n".join(lines) + "\n"


def section(found: list[MachineAnswer]) -> str:
    """docs/performance.md's text: the summary, then each machine's headline maps in full."""
    out = [summary(found)]
    for a in found:
        for w in landing.WORKLOADS:
            grid = a.run.maps.get((w.name, HEADLINE[0]))
            if grid is None:
                continue
            out.append(
                f"\n**{a.run.machine}, {w.name}** ({w.labels[0]} {w.symbols[0]} x {w.labels[1]} {w.symbols[1]}), "
                f"{HEADLINE[0]}, us per step (median); runner-up: its median / the winner's:\n\n{table(grid)}"
            )
    return "".join(out)


def fill(text: str, body: str, reference: str, path: str) -> str:
    """`text` with what lies between its markers replaced by `body` (ValueError without them)."""
    begin = BEGIN.search(text)
    end = text.find(END, begin.end()) if begin else -1
    if begin is None or end < 0:
        raise ValueError(f"{path}: no answer markers ({BEGIN.pattern!r} ... {END!r})")
    return text[: begin.start()] + MARKER.format(reference[:12]) + body + text[end:]


def named_reference(text: str, path: str) -> str:
    begin = BEGIN.search(text)
    if begin is None:
        raise ValueError(f"{path}: no answer markers")
    return begin.group(1)


def render(root: str, name: str, reference: str) -> str:
    """The file `name` of DOCS with the answer of the committed results against `reference`."""
    found = answers(root, os.path.join(root, "results"), reference)
    body = {"summary": summary, "section": section}[dict(DOCS)[name]](found)
    with open(os.path.join(root, name)) as f:
        return fill(f.read(), body, reference, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 where the committed text differs")
    parser.add_argument(
        "--reference",
        help="the commit the lag is counted to (default: the last commit that changed " + ", ".join(CODE_PATHS) + ")",
    )
    args = parser.parse_args(argv)
    stale = []
    for name, _ in DOCS:
        with open(os.path.join(ROOT, name)) as f:
            text = f.read()
        reference = args.reference or (named_reference(text, name) if args.check else code_commit(ROOT))
        full = git(ROOT, "rev-parse", "--verify", "-q", f"{reference}^{{commit}}") if reference else None
        if full is None:
            raise SystemExit(f"answer: reference {reference!r} is not a commit of this clone")
        new = render(ROOT, name, full)
        if new == text:
            continue
        stale.append(name)
        if not args.check:
            with open(os.path.join(ROOT, name), "w") as f:
                f.write(new)
    verb = "differ from" if args.check else "rewritten from"
    for name in stale:
        print(f"answer: {name} {verb} the committed results")
    if args.check and stale:
        print("answer: run `python3 scripts/answer.py` and commit the result", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
