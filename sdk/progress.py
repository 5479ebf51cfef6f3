"""Progress on stderr for every long SDK call — one abstraction (rich), silent when disabled.

:class:`Progress` shows

* **phases** with counts (``start`` / ``update`` / ``finish`` / ``note``: a fit, through the engine's
  :class:`~devicefit.compressor.search.progress.PhaseProgress`); one bar per phase on a terminal, one
  timestamped line per phase start and end elsewhere (a log file, CI);
* **steps** (``with progress.step(name, what):`` — ``devicefit.compress``): a spinner, then "✓ name 1.2s —
  what"; the seconds of each step are kept in :attr:`Progress.seconds`;
* **a transfer** in bytes (:meth:`Progress.transfer`: a deploy's upload): called as ``bar(done, total)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any


class Progress:
    """``with Progress(enabled) as p: p.start("sensitivity", total); p.update(...); p.finish(...)``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._console: Any = None
        self._progress: Any = None
        self._lines: Any = None
        self._tasks: dict[str, Any] = {}
        #: seconds per :meth:`step`
        self.seconds: dict[str, float] = {}
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    # ------------------------------------------------------------------------------ phases with bars
    def __enter__(self) -> Progress:
        if self._console is not None:
            if not self._console.is_terminal:  # a log file / CI: one line per phase start and end, no redraws
                self._lines = self._console
                return self
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

            self._start_bars(TextColumn("[bold]{task.fields[phase]:<12}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("{task.description}"))
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _start_bars(self, *columns: Any) -> None:
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(*columns, console=self._console, transient=False)
        self._progress.start()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, phase: str, text: str) -> None:
        """One timestamped line (log files and CI; a terminal shows the phase's bar)."""
        if self._lines is not None:
            self._lines.print(f"[{time.strftime('%H:%M:%S')}] {phase:<12} {text}", highlight=False, soft_wrap=True)

    def start(self, phase: str, total: int | None = None, description: str = "") -> None:
        self.note(phase, description or "started")
        if self._progress is None:
            return
        if phase in self._tasks:
            self._progress.update(self._tasks[phase], total=total, description=description)
            return
        self._tasks[phase] = self._progress.add_task(description, total=total, phase=phase)

    def update(self, phase: str, completed: int, total: int | None = None, description: str | None = None) -> None:
        if self._progress is None:
            return
        if phase not in self._tasks:
            self.start(phase, total, description or "")
        kw: dict[str, Any] = {"completed": completed}
        if total is not None:
            kw["total"] = total
        if description is not None:
            kw["description"] = description
        self._progress.update(self._tasks[phase], **kw)

    def finish(self, phase: str, description: str | None = None) -> None:
        if description:
            self.note(phase, description)
        if self._progress is None or phase not in self._tasks:
            return
        task = self._tasks[phase]
        total = self._progress.tasks[[t.id for t in self._progress.tasks].index(task)].total or 1
        self._progress.update(task, completed=total, total=total, **({"description": description} if description else {}))

    # ------------------------------------------------------------------------------ steps
    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        """A spinner while the block runs, then one "✓" line with its seconds (kept in :attr:`seconds`)."""
        t0 = time.perf_counter()
        if self._console is None:
            yield
        else:
            with self._console.status(f"[bold]{name}[/]: {what}"):
                yield
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        if self._console is not None:
            self._console.print(f"[green]✓[/] {name} [dim]{self.seconds[name]:.1f}s[/] — {what}")

    def say(self, msg: str) -> None:
        """One dim line under the current step."""
        if self._console is not None:
            self._console.print(f"  [dim]{msg}[/]")

    # ------------------------------------------------------------------------------ transfer
    @classmethod
    def transfer(cls, enabled: bool, description: str, total: int) -> Progress:
        """A started bytes bar (no-op when disabled): call it with ``(done, total)``, then :meth:`close`."""
        p = cls(enabled)
        if p._console is not None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            p._start_bars(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn())
            p._tasks["transfer"] = p._progress.add_task(description, total=total)
        return p

    def __call__(self, done: int, total: int) -> None:
        if self._progress is not None and "transfer" in self._tasks:
            self._progress.update(self._tasks["transfer"], completed=done, total=total)
