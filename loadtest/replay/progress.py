"""Progress of a run: requests done of those planned, errors, and the recent median TTFT."""

from __future__ import annotations

import statistics
from collections import deque
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from loadtest.metrics import RequestSample

RECENT = 512
"""The running TTFT median is over this many latest completed requests."""


class ProgressSink(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, sample: RequestSample) -> None: ...
    def skip(self, requests: int) -> None:
        """Requests that will not be sent (their agent stopped at an error)."""
        ...

    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, sample: RequestSample) -> None:
        pass

    def skip(self, requests: int) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress:
    """A rich progress bar on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("errors {task.fields[errors]}"),
            TextColumn("p50 TTFT {task.fields[ttft]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self._task: TaskID | None = None
        self._total = 0
        self._errors = 0
        self._ttfts: deque[float] = deque(maxlen=RECENT)

    def start(self, total: int) -> None:
        self._total = total
        self._progress.start()
        self._task = self._progress.add_task("replay", total=total, errors=0, ttft="–")

    def advance(self, sample: RequestSample) -> None:
        if self._task is None:
            return
        if sample.ok and sample.ttft_s is not None:
            self._ttfts.append(sample.ttft_s)
        elif not sample.ok:
            self._errors += 1
        ttft = f"{statistics.median(self._ttfts):.3f}s" if self._ttfts else "–"
        self._progress.update(self._task, advance=1, errors=self._errors, ttft=ttft)

    def skip(self, requests: int) -> None:
        if self._task is not None and requests:
            self._total = max(self._total - requests, 0)
            self._progress.update(self._task, total=self._total)

    def stop(self) -> None:
        self._progress.stop()
