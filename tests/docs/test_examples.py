"""Every fenced Python and shell example of README.md and docs/ runs here, so no example can rot.

Blocks of one page run in order, each in a fresh process (a block must be self-contained: its own
imports), in one working directory per page, with ``$HOME`` pointed at a scratch folder. Device URLs
(``grpc://pi.local:50051`` and the like) are rewritten to a real agent started by this test on loopback.
Markers, an HTML comment on the line right before a fence:

* ``<!-- no-test: REASON -->`` — not run (only where the example needs real hardware or cannot run inside the
  suite); the reason is shown in the page and must not be empty.
* ``<!-- background: until "TEXT" -->`` — a server: started in the background (``0.0.0.0:PORT`` becomes
  ``127.0.0.1:0``), ready once its output contains TEXT; later device URLs of the page point at it, and it
  is stopped when the page is done.
* ``<!-- run-in: repository root -->`` — run in the repository root instead of the page's scratch folder.
* ``<!-- output: of the block above -->`` — on a shown (not run) block: its lines must appear, in order and
  contiguous, in what the previous example printed (stdout, then stderr), so printed output cannot rot either.

Fence languages: ``python`` and ``bash`` run; the languages in :data:`NOT_CODE` are shown, never run; any
other language fails the test (so an example cannot escape by its spelling).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGS = {"python": "python", "bash": "bash"}
NOT_CODE = {"text", "toml", "yaml", "json", "ini", "diff", ""}
_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(no-test|background|run-in|output)\s*:\s*(.*?)\s*-->\s*$")
_DEVICE_URL = re.compile(r"grpc://[A-Za-z0-9_.-]+:\d+")
BLOCK_TIMEOUT = 900


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marks: dict[str, str]

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if ROOT in self.page.parents else self.page
        return f"{page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with the markers right before them."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        marks: dict[str, str] = {}
        j = start - 1
        while j >= 0 and (mk := _MARK.match(lines[j])):
            marks[mk.group(1)] = mk.group(2)
            j -= 1
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", marks))
        i += 1
    return out


def test_every_fence_has_a_known_language_and_exceptions_give_a_reason() -> None:
    seen = 0
    for page in pages():
        for b in blocks(page):
            assert b.lang in RUN_LANGS or b.lang in NOT_CODE, f"{b.where}: fence language {b.lang!r} is neither run nor known"
            if "no-test" in b.marks:
                assert len(b.marks["no-test"]) >= 10, f"{b.where}: a no-test marker needs its reason"
            if b.lang in RUN_LANGS:
                seen += 1
    assert seen >= 10, f"only {seen} runnable examples found: is the extractor broken?"


def _runnable_pages() -> list[Path]:
    return [p for p in pages() if any(b.lang in RUN_LANGS and "no-test" not in b.marks for b in blocks(p))]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from devicefit.agent.launch import spawn_agent

    with spawn_agent(tmp_path_factory.mktemp("docs-agent") / "store", device_id="docs-examples") as proc:
        yield proc.url


@pytest.fixture(scope="module")
def shared_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One config dir for every page: the ``localhost`` profile is measured once, not once per page."""
    return tmp_path_factory.mktemp("docs-config")


class _Server:
    """A background block: its output is collected; ready once ``text`` shows up."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str], text: str, where: str) -> None:
        self.out: list[str] = []
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.out.append(line)
                if text in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError(f"{where}: the background example did not print {text!r}:\n{''.join(self.out)[-3000:]}")

    def url(self) -> str | None:
        for line in self.out:
            m = _DEVICE_URL.search(line)
            if m:
                return m.group(0)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


def _run_page(page: Path, work: Path, agent_url: str, config: Path) -> list[str]:
    """Run the page's examples in order; returns what each printed (for the assertions)."""
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "HOME": str(home), "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
           "DEVICEFIT_CONFIG_DIR": str(config), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "COLUMNS": "120"}
    servers: list[_Server] = []
    outputs: list[str] = []
    device = agent_url
    try:
        for i, b in enumerate(blocks(page)):
            if "output" in b.marks:
                assert outputs, f"{b.where}: an output block needs an example that ran before it"
                shown = "\n".join(line.rstrip() for line in b.code.strip("\n").splitlines())
                printed = "\n".join(line.rstrip() for line in outputs[-1].splitlines())
                assert shown in printed, f"{b.where}: the page shows output the example no longer prints:\n{printed[-3000:]}"
                continue
            if b.lang not in RUN_LANGS or "no-test" in b.marks:
                continue
            code = _DEVICE_URL.sub(device, b.code)
            cwd = ROOT if "run-in" in b.marks else work
            script = work / f"block{i:02d}.{'py' if b.lang == 'python' else 'sh'}"
            header = f"# {b.where}\n" if b.lang == "python" else f"# {b.where}\nset -euo pipefail\n"
            script.write_text(header + code, encoding="utf-8")
            cmd = [sys.executable, str(script)] if b.lang == "python" else ["bash", str(script)]
            if "background" in b.marks:
                m = re.search(r'"([^"]+)"', b.marks["background"])
                assert m, f"{b.where}: background marker needs the readiness text in quotes"
                script.write_text(header + re.sub(r"0\.0\.0\.0:\d+", "127.0.0.1:0", code), encoding="utf-8")
                srv = _Server(cmd, cwd, env, m.group(1), b.where)
                servers.append(srv)
                device = srv.url() or device
                continue
            t0 = time.monotonic()
            res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
            took = time.monotonic() - t0
            out = res.stdout + "\n" + res.stderr
            sys.stderr.write(f"{b.where}: exit {res.returncode} in {took:.1f} s\n")
            assert res.returncode == 0, f"{b.where} failed (exit {res.returncode}):\n{code}\n--- output ---\n{out[-4000:]}"
            outputs.append(out)
    finally:
        for srv in servers:
            srv.stop()
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_of_page_run(page: Path, agent: str, shared_config: Path, tmp_path: Path) -> None:
    outputs = _run_page(page, tmp_path, agent, shared_config)
    assert outputs, f"{page.relative_to(ROOT)}: no example ran"


def test_the_runner_honours_markers_rewrites_urls_and_checks_output(tmp_path: Path) -> None:
    page = tmp_path / "selftest.md"
    text = "\n".join([
        "<!-- no-test: would fail, so it must be skipped -->", "```bash", "exit 1", "```",
        "```bash", "echo device grpc://pi.local:50051", "```",
        "<!-- output: of the block above -->", "```text", "device grpc://127.0.0.1:9", "```",
        "```python", "print('py', 6 * 7)", "```",
        "<!-- output: of the block above -->", "```text", "py 42", "```", ""])
    page.write_text(text, encoding="utf-8")
    bs = blocks(page)
    assert [b.lang for b in bs] == ["bash", "bash", "text", "python", "text"]
    assert bs[0].marks == {"no-test": "would fail, so it must be skipped"} and bs[2].marks == {"output": "of the block above"}
    outputs = _run_page(page, tmp_path / "ok", "grpc://127.0.0.1:9", tmp_path / "cfg")
    assert len(outputs) == 2 and "py 42" in outputs[1]
    page.write_text(text.replace("py 42", "py 43"), encoding="utf-8")
    with pytest.raises(AssertionError, match="no longer prints"):
        _run_page(page, tmp_path / "stale", "grpc://127.0.0.1:9", tmp_path / "cfg")
