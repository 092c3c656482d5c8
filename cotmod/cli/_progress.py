"""Progress on stderr (never stdout, so ``--json`` output stays clean).

On a terminal: a rich spinner and bar (items done, elapsed, rates). Otherwise: plain lines, one
every ``PLAIN_INTERVAL`` seconds while work goes on (plus one-off notes such as "starting the
embedded model", shown at once), so logs show that something is happening; a command that
finishes within the interval prints nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_INTERVAL = 10.0  # seconds between plain progress lines


class Reporter:
    """Progress of a command over N items: rich on a terminal, occasional plain lines otherwise.

    ``clock`` and ``stream`` are injectable for tests. Use as a context manager.
    """

    def __init__(
        self,
        *,
        rich: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
        label: str = "moderating",
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.rich = self.stream.isatty() if rich is None else rich
        self.clock = clock
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.label = label
        self.start = clock()
        self.last_line = self.start  # the first plain line comes after one interval
        self.phase = ""
        self.lines = 0
        self.done = 0
        self.total: int | None = None
        self.stats = ""
        self._progress: Progress | None = None
        self._task: Any = None
        if self.rich:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=Console(file=self.stream, stderr=stream is None),
                transient=True,
                # print()s to stdout go above the bar only when stdout is the terminal too;
                # otherwise they must stay on stdout (e.g. --json piped to a file)
                redirect_stdout=sys.stdout.isatty(),
                redirect_stderr=False,
            )
            self._task = self._progress.add_task(label, total=None, stats="")

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        if exc_type is None and self.lines and not self.rich:
            self.phase = "done"
            self._line(f"{self._counts()} in {self.elapsed():.0f} s")

    def elapsed(self) -> float:
        return self.clock() - self.start

    def _line(self, text: str) -> None:
        self.stream.write(f"cotmod: {text}\n")
        self.stream.flush()
        self.last_line = self.clock()
        self.lines += 1

    def _counts(self) -> str:
        if self.total is None and self.done == 0:
            return self.phase or "working"
        total = "?" if self.total is None else str(self.total)
        return (f"{self.phase}: " if self.phase else "") + f"{self.done}/{total} items" + (f", {self.stats}" if self.stats else "")

    def note(self, text: str) -> None:
        """A one-off status line (e.g. starting the embedded model), shown at once."""
        self.phase = text
        if self._progress is not None:
            self._progress.update(self._task, description=text)
            self._progress.console.print(f"[dim]{text}[/dim]")
        else:
            self._line(text)

    def begin(self, total: int | None, description: str) -> None:
        """The work starts: ``total`` items (None if unknown), described in plain lines."""
        self.total = total
        self.phase = description
        if self._progress is not None:
            self._progress.update(self._task, total=total, description=self.label)
            self._progress.console.print(f"[dim]{description}[/dim]")

    def show(self, done: int, total: int | None = None, stats: str = "") -> None:
        """``done`` items finished; a plain line only if ``interval`` has passed since the last."""
        self.done = done
        if total is not None:
            self.total = total
        self.stats = stats
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=self.total, stats=stats)
        else:
            self.tick()

    def tick(self) -> None:
        """A heartbeat: in plain mode print the state if ``interval`` has passed since the last line."""
        if self._progress is not None:
            return
        if self.clock() - self.last_line >= self.interval:
            self._line(f"{self._counts()}, {self.elapsed():.0f} s elapsed")


class RunProgress(Reporter):
    """Progress of ``cotmod run``: items/s, tokens/s, errors, ETA and estimated cost."""

    def __init__(self, *, rich: bool | None = None, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rich=rich, stream=stream, clock=clock)

    def __enter__(self) -> RunProgress:
        super().__enter__()
        return self

    def update(self, summary: Any, total: int | None) -> None:
        """An ``on_progress`` hook for :meth:`cotmod.batch.Runner.run`."""
        elapsed = max(self.elapsed(), 1e-6)
        tokens = summary.prompt_tokens + summary.completion_tokens
        cost = summary.cost_usd
        stats = (
            f"{summary.processed / elapsed:.1f} items/s {tokens / elapsed:.0f} tok/s "
            f"dead-lettered {summary.dead_lettered} cache {summary.cache_hits}"
            + (f" ${cost:.4f}" if cost is not None else "")
        )
        remaining_total = None if total is None else max(total - summary.resumed_skipped, 1)
        handled = sum(summary.by_decision.values()) + summary.dead_lettered  # verdicts + dead letters
        self.show(handled, remaining_total, stats)
