"""What a benchmark shows as it runs and when it ends: its progress and its table.

On a terminal, rich (the `bench` extra) draws them: a progress bar with the time left above the
finished steps, and a table with the first column of figures (the broker's) in bold and each target met or not
in colour. Anywhere else (a pipe, a file, CI's log), or without rich, the same as plain lines:
`[ 3/78] what ... result (1.2 s, 40 s in all)` on stderr as each step ends, and the table in
columns of text on stdout.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any, Sequence


def _rich_on(file: IO[str]) -> bool:
    """Draw with rich? Only on a terminal, and only where rich is installed."""
    try:
        if not file.isatty():
            return False
        import rich  # noqa: F401
    except (ImportError, AttributeError, ValueError):  # no rich; a file object without isatty, or closed
        return False
    return True


class Progress:
    """progress.start(what) ... progress.end(result), `total` times; on a terminal the bar goes when the
    last step ends, or at close_all() (report() calls it, whatever ends the run)."""

    def __init__(self, total: int, file: IO[str] | None = None) -> None:
        self.total, self.done = total, 0
        self.t0 = self.t1 = time.monotonic()
        self.file = file if file is not None else sys.stderr
        self._what = ""
        self._bar: Any = None  # rich's Progress while it is drawn
        if _rich_on(self.file):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar, TimeRemainingColumn

            # no refresh thread (auto_refresh=False: the benchmarks fork, and a thread would be copied
            # mid-draw) and no capture of sys.stdout (a child's output goes where it went)
            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("left"), TimeRemainingColumn(), console=Console(file=self.file),
                            auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
            self._task = self._bar.add_task("starting", total=total)
            self._bar.start()
            _drawn.append(self)

    def start(self, what: str) -> None:
        self.done += 1
        self.t1 = time.monotonic()
        self._what = what
        if self._bar is not None:
            self._bar.update(self._task, description=what)
            self._bar.refresh()
        else:
            print(f"[{self.done:2d}/{self.total}] {what} ...", end="", file=self.file, flush=True)

    def end(self, result: str) -> None:
        now = time.monotonic()
        took = f"({now - self.t1:.1f} s, {now - self.t0:.0f} s in all)"
        if self._bar is None:
            print(f" {result} {took}", file=self.file, flush=True)
            return
        from rich.markup import escape

        self._bar.console.print(f"[dim]{self.done:2d}/{self.total}[/] {escape(self._what)}: [bold]{escape(result)}[/] "
                                f"[dim]{took}[/]", highlight=False)
        self._bar.advance(self._task)
        self._bar.refresh()
        if self.done >= self.total:
            self.close()

    def close(self) -> None:
        """Stop drawing (a run cut short leaves the terminal as it found it); again is harmless."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            _drawn.remove(self)


_drawn: list[Progress] = []  # the bars on the terminal now


def close_all() -> None:
    """Take every progress bar off the terminal (a run cut short by Ctrl-C or an error)."""
    for p in list(_drawn):
        p.close()


class Table:
    """A suite's table: the lines above it, its rows (the first is the head: figure, unit, the
    transports' figures, then the last column, the targets, as is), the lines below it. str() is the
    plain text; show() draws it with rich on a terminal."""

    def __init__(self, above: Sequence[str], rows: Sequence[tuple[str, ...]], below: Sequence[str]) -> None:
        self.above, self.rows, self.below = list(above), [tuple(r) for r in rows], list(below)

    def lines(self) -> list[str]:
        """The rows in columns: figure and unit left-aligned, the numbers right-aligned, the last
        column as is; a rule under the head."""
        rows = self.rows
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        last = len(rows[0]) - 1
        out: list[str] = []
        for i, r in enumerate(rows):
            cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(r[2:last], widths[2:last])] + [r[last]]
            out.append("  ".join(cells).rstrip())
            if i == 0:
                out.append("-" * len(out[-1]))
        return out

    def __str__(self) -> str:
        return "\n".join([*self.above, *self.lines(), *self.below])

    def show(self, file: IO[str] | None = None) -> None:
        """Print it to `file` (stdout): drawn by rich on a terminal, plain text elsewhere."""
        file = file if file is not None else sys.stdout
        if not _rich_on(file):
            print(self, file=file, flush=True)
            return
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable
        from rich.text import Text

        console = Console(file=file)
        head, *body = self.rows
        t = RichTable(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
        last = len(head) - 1
        for i, name in enumerate(head):
            numbers = 1 < i < last
            t.add_column(name, justify="right" if numbers else "left", style="bold" if i == 2 else None,
                         no_wrap=i < last)
        for r in body:
            target = Text(r[last], style="red" if "NOT met" in r[last] else "green" if "met" in r[last] else "")
            t.add_row(*r[:last], target)
        for line in self.above:
            console.print(line, highlight=False, markup=False)
        console.print(t)
        for line in self.below:
            console.print(line, highlight=False, markup=False, style="dim")
