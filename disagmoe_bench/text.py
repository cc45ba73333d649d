"""How the command line prints: within the terminal's width, prose wrapped, tables whose
columns fit their values, times in units a reader takes in at a glance."""

from __future__ import annotations

import shutil
import sys
import textwrap
import time

DEFAULT_WIDTH = 120
"""The width when the output is not a terminal (a file, a pipe) and COLUMNS is not set."""
MIN_WIDTH = 60
"""Narrower terminals get lines of this width (and wrap them)."""


def width() -> int:
    """The terminal's width (COLUMNS if set), DEFAULT_WIDTH when the output is no terminal;
    never below MIN_WIDTH."""
    return max(MIN_WIDTH, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


def wrap(text: str, indent: str = "") -> str:
    """`text`, each of its lines wrapped at the terminal's width; a line's continuations are
    indented as the line is, plus `indent`."""
    out = []
    for line in text.split("\n"):
        lead = line[: len(line) - len(line.lstrip(" "))]
        out.append(
            textwrap.fill(
                line,
                width(),
                subsequent_indent=lead + indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
            or line
        )
    return "\n".join(out)


def duration(us: float | None) -> str:
    """A time given in microseconds, in us below a millisecond, in ms below a second, else in s."""
    if us is None:
        return "-"
    if abs(us) < 1e3:
        return f"{us:.1f} us"
    if abs(us) < 1e6:
        return f"{us / 1e3:.1f} ms"
    return f"{us / 1e6:.2f} s"


def table(head: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    """Lines of a table: each column as wide as its widest cell, two spaces between columns;
    columns whose index is in `right` aligned right."""
    right = right or set()
    cells = [head, *rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(head))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths))).rstrip()

    return [line(row) for row in cells]


class Progress:
    """A progress bar on stderr, within the terminal's width (a line every tenth of the way
    when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = max(total, 1), 0, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.label = ""
        self._last_tenth = -1

    def advance(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        fraction = min(self.done / self.total, 1.0)
        if self.tty:
            body = f"{self.done}/{self.total} {self.label} {elapsed:.0f} s, ~{left:.0f} s left"
            room = width() - 1
            bar = max(10, min(30, room - len(body) - 3))
            line = f"[{'#' * int(bar * fraction):<{bar}}] {body}"[:room]
            print(f"\r{line:<{room}}", end="", file=sys.stderr, flush=True)
        elif int(10 * fraction) > self._last_tenth:
            self._last_tenth = int(10 * fraction)
            print(
                f"[{100 * fraction:3.0f}%] {self.label} ({elapsed:.0f} s, ~{left:.0f} s left)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)
