"""Progress of a fit: one line per phase on stderr (rich), silent when disabled.

:class:`Phases` implements the engine's :class:`~devicefit.compressor.search.progress.PhaseProgress`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any


class Phases:
    """``with Phases(enabled) as ph: ph.start("sensitivity", total); ph.advance(...); ph.finish(...)``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._lines: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Phases:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = Console(stderr=True)
            if not console.is_terminal:  # a log file / CI: one line per phase start and end, no redraws
                self._lines = console
                return self
            self._progress = Progress(
                TextColumn("[bold]{task.fields[phase]:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.description}"), console=Console(stderr=True), transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, phase: str, text: str) -> None:
        """One timestamped line (log files and CI; a terminal shows it in the phase's bar)."""
        self._line(phase, text)

    def _line(self, phase: str, text: str) -> None:
        if self._lines is not None:
            import time

            self._lines.print(f"[{time.strftime('%H:%M:%S')}] {phase:<12} {text}", highlight=False, soft_wrap=True)

    def start(self, phase: str, total: int | None = None, description: str = "") -> None:
        self._line(phase, description or "started")
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
            self._line(phase, description)
        if self._progress is None or phase not in self._tasks:
            return
        task = self._tasks[phase]
        total = self._progress.tasks[[t.id for t in self._progress.tasks].index(task)].total or 1
        self._progress.update(task, completed=total, total=total, **({"description": description} if description else {}))
