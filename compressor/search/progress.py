"""How the engine reports its phases (``devicefit.fit`` plugs in a rich implementation; tests none)."""

from __future__ import annotations

from typing import Protocol


class PhaseProgress(Protocol):
    """One progress line per phase: started, advanced, finished; :meth:`note` logs one event."""

    def start(self, phase: str, total: int | None = None, description: str = "") -> None: ...

    def update(self, phase: str, completed: int, total: int | None = None, description: str | None = None) -> None: ...

    def finish(self, phase: str, description: str | None = None) -> None: ...

    def note(self, phase: str, text: str) -> None: ...


class NoProgress:
    """Reports nothing."""

    def start(self, phase: str, total: int | None = None, description: str = "") -> None:
        return None

    def update(self, phase: str, completed: int, total: int | None = None, description: str | None = None) -> None:
        return None

    def finish(self, phase: str, description: str | None = None) -> None:
        return None

    def note(self, phase: str, text: str) -> None:
        return None
