"""Progress of long work: a rich progress bar (rows, rows/s, ETA) for people, nothing for
scripts (`--quiet`, `--json`). The sync's functions take any `Progress`; tests pass none."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBar
from rich.text import Text


class Progress(Protocol):
    def start(self, total: int | None, done: int) -> None: ...

    def advance(self, rows: int) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    """Reports nothing (quiet and JSON modes, and programmatic callers)."""

    def start(self, total: int | None, done: int) -> None:
        return None

    def advance(self, rows: int) -> None:
        return None

    def stop(self) -> None:
        return None


class _RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="progress.data.speed")


class BarProgress:
    """A rich bar on stderr: label, bar, rows done/total, rows/s, elapsed, ETA."""

    def __init__(self, label: str, console: Console | None = None) -> None:
        self._bar = RichBar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RowsPerSecond(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._label = label
        self._task: TaskID | None = None

    def start(self, total: int | None, done: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task(self._label, total=total, completed=done)

    def advance(self, rows: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, rows)

    def stop(self) -> None:
        self._bar.stop()

    def __enter__(self) -> BarProgress:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()
