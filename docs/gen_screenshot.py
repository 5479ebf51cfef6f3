"""Picture of a real ``report.html``: run ``devicefit demo``, then screenshot its report with headless Chromium.

    python docs/gen_screenshot.py                  # runs the demo (0.5–3 min), writes docs/report.png
    python docs/gen_screenshot.py --report DIR     # screenshot DIR/report.html from an earlier demo or fit

Needs Chromium (Debian: ``apt-get install chromium``; ``.ci/install-system-deps.sh`` installs it). The demo's
summary is saved next to the picture (``docs/report.txt``) so the page can say what was measured, and when.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(f"no Chromium found (tried {', '.join(BROWSERS)}): apt-get install chromium")


def run_demo(out: Path) -> str:
    """``devicefit demo -o out``; returns its printed summary (exit 3 = budget not met, still a report)."""
    exe = Path(sys.executable).parent / "devicefit"
    res = subprocess.run([str(exe), "demo", "-o", str(out)], capture_output=True, text=True, timeout=1800)
    if res.returncode not in (0, 3):
        raise SystemExit(f"devicefit demo failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout


def screenshot(html: Path, png: Path, *, width: int = 1100, height: int = 1500) -> None:
    with tempfile.TemporaryDirectory(prefix="devicefit-chromium-") as profile:
        cmd = [browser(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", html.resolve().as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if res.returncode != 0 or not png.is_file():
        raise SystemExit(f"chromium failed (exit {res.returncode}):\n{res.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="screenshot a real report.html into docs/report.png")
    ap.add_argument("--report", type=Path, default=None, help="folder holding report.html (default: run the demo)")
    ap.add_argument("-o", "--output", type=Path, default=DOCS / "report.png", help="PNG to write")
    ap.add_argument("--height", type=int, default=1500, help="viewport height in pixels (default 1500)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="devicefit-shot-") as tmp:
        folder = args.report
        if folder is None:
            folder = Path(tmp) / "demo"
            summary = run_demo(folder)
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            (DOCS / "report.txt").write_text(f"# devicefit demo, {stamp}\n{summary}", encoding="utf-8")
        screenshot(folder / "report.html", args.output, height=args.height)
    sys.stdout.write(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
