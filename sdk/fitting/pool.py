"""A device pool: a fit over several boards of one kind (``fit --device A --device B …``).

The fit measures on the first board. For every further board it starts one ``devicefit search-worker``
process on the fit's study (``--device`` that board) as soon as the study exists; the workers run their share
of the trials and measure in parallel with the fit, each against its own fp32 baseline and with its own
latency calibration (kept per device id). Before choosing, the fit waits for them and reads what they measured
through each board's own fp32 ratio (:func:`devicefit.compressor.search.studydb.candidates_from_study`); a
winner measured elsewhere is measured again on the fit's board. A board that fails does not fail the fit: its
worker's error is reported (``search.study.pool`` in report.json) and the others go on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

#: how long the fit waits for its pool's workers after its own search (they run the same share of trials)
JOIN_TIMEOUT_S = 1800.0


class WorkerPool:
    """One ``search-worker`` subprocess per extra board, on study ``study_name`` at ``storage``."""

    def __init__(self, urls: tuple[str, ...], *, storage: str, study_name: str, work: Path, trials: int | None,
                 minutes: float | None, max_measurements: int) -> None:
        self.urls, self.storage, self.study_name, self.work = urls, storage, study_name, work
        self.trials, self.minutes, self.max_measurements = trials, minutes, max_measurements
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path, Path]] = []
        self.results: list[dict[str, Any]] = []

    def start(self) -> None:
        """Start the workers (the study, with the fit's spec, must exist)."""
        self.work.mkdir(parents=True, exist_ok=True)
        share = ["--minutes", str(self.minutes)] if self.minutes else (["--trials", str(self.trials)] if self.trials else [])
        for i, url in enumerate(self.urls, start=1):
            out, log = self.work / f"pool-{i}.json", self.work / f"pool-{i}.log"
            cmd = [sys.executable, "-m", "devicefit.cli", "search-worker", "--storage", self.storage,
                   "--study", self.study_name, "--device", url, "--work", str(self.work / f"pool-{i}"),
                   "--max-measurements", str(self.max_measurements), "--json", *share]
            with open(out, "wb") as fout, open(log, "wb") as flog:
                self.procs.append((url, subprocess.Popen(cmd, stdout=fout, stderr=flog), out, log))

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> list[dict[str, Any]]:
        """Wait for every worker (at most ``timeout`` in all); one result per board: the worker's summary, or
        ``{"device": url, "error": …}``."""
        deadline = time.monotonic() + timeout
        self.results = []
        for url, proc, out, log in self.procs:
            try:
                code = proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.results.append({"device": url, "error": f"still running after {timeout:g} s; stopped"})
                continue
            lines = out.read_text(errors="replace").strip().splitlines()
            if code == 0 and lines:
                self.results.append(json.loads(lines[-1]))
            else:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                self.results.append({"device": url, "error": f"search-worker exited {code}: {' / '.join(tail)}"})
        return self.results

    def stop(self) -> None:
        for _url, proc, _out, _log in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
