"""A rich progress bar for runs: items/s, tokens/s, errors, ETA and estimated cost."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class RunProgress:
    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]moderating"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.progress.add_task("run", total=None, stats="")
        self.start = time.perf_counter()

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, summary: Any, total: int | None) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-6)
        tokens = summary.prompt_tokens + summary.completion_tokens
        cost = summary.cost_usd
        stats = (
            f"{summary.processed / elapsed:.1f} items/s {tokens / elapsed:.0f} tok/s "
            f"errors {summary.errors} cache {summary.cache_hits}"
            + (f" ${cost:.4f}" if cost is not None else "")
        )
        remaining_total = None if total is None else max(total - summary.resumed_skipped, 1)
        self.progress.update(self.task, completed=summary.processed + summary.dead_lettered, total=remaining_total, stats=stats)
