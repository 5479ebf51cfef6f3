"""report.html: self-contained, renders in headless Chromium with the Pareto plot present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devicefit.report_html import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _report() -> dict[str, Any]:
    pareto = [
        {"trial": 3, "source": "measured", "predicted_ms": 20.0, "measured_ms": 21.0, "metric_drop": 0.004,
         "predicted_drop": 0.003, "size_bytes": 30_000_000, "passes": True, "chosen": True, "on_front": True,
         "summary": {"int8_dynamic": 36}},
        {"trial": 7, "source": "measured", "predicted_ms": 30.0, "measured_ms": 28.0, "metric_drop": 0.001,
         "predicted_drop": 0.001, "size_bytes": 50_000_000, "passes": False, "chosen": False, "on_front": True,
         "summary": {"int8_dynamic": 30, "float": 6}},
        {"trial": 11, "source": "predicted", "predicted_ms": 15.0, "measured_ms": None, "metric_drop": None,
         "predicted_drop": 0.03, "size_bytes": None, "passes": False, "chosen": False, "on_front": True, "summary": {}},
    ]
    return {
        "model": {"name": "minilm-l6", "params": 22_700_000, "macs": 1_400_000_000, "size_bytes": 90_000_000},
        "profile": {"id": "localhost", "name": "this machine"},
        "budget": {"latency_ms": 25.0, "size_mb": None, "memory_mb": 6000.0, "accuracy_drop": 0.02,
                   "origin": {"latency_ms": "given", "accuracy_drop": "given", "memory_mb": "profile", "size_mb": "profile"}},
        "result": {"params": 22_700_000, "macs": 1, "size_bytes": 30_000_000, "compression_ratio": 3.0,
                   "metric": {"name": "cosine", "baseline": 1.0, "compressed": 0.996, "drop": 0.004},
                   "latency": {"p50_ms": 21.0, "p90_ms": 22.0, "source": "measured", "device": "host"},
                   "budget_met": True, "shortfall": {}, "plan_summary": {"int8_dynamic": 36}},
        "baseline": {"latency": {"p50_ms": 41.0, "source": "measured"}},
        "pareto": pareto,
        "search": {"trials": 60, "measurements": 2, "minutes": 3.2, "device": "host", "measured_on": "host",
                   "prediction_error": {"median": 0.06, "points": [
                       {"label": "trial 3", "predicted_ms": 20.0, "measured_ms": 21.0},
                       {"label": "trial 7", "predicted_ms": 30.0, "measured_ms": 28.0}]},
                   "sensitivity": {"method": "fake quant", "data": "16 samples"}},
        "layers": [{"name": "encoder.layer.0.attention.self.query", "kind": "linear", "params": 147_840, "macs": 9_437_184,
                    "choice": "int8_dynamic", "predicted_ms": 0.4, "sensitivity_drop": 0.0001}],
    }


def test_render_is_self_contained() -> None:
    html = render_html(_report())
    assert html.startswith("<!DOCTYPE html>")
    assert 'id="pareto-plot"' in html and 'id="pred-vs-meas"' in html
    assert html.count('class="measured"') == 2 and html.count('class="predicted"') == 1
    assert html.count('class="budget-line"') == 2 and 'class="chosen"' in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "<script" not in html
    assert "encoder.layer.0.attention.self.query" in html


def _png_nonblank(path: Path) -> bool:
    """True when the screenshot has real content: many distinct colours and a fair share of non-white pixels."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20) or []
    white = sum(n for n, c in colors if min(c) > 245)
    total = img.width * img.height
    return len(colors) > 32 and white < 0.995 * total


@pytest.mark.slow
def test_report_opens_in_headless_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page = tmp_path / "report.html"
    page.write_text(render_html(_report()), encoding="utf-8")
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 5000
    assert _png_nonblank(shot)
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
    start = dom.find('id="pareto-plot"')
    assert start >= 0, "the Pareto plot element is missing from the rendered DOM"
    plot = dom[start:dom.find("</svg>", start)]
    assert plot.count("<circle") >= 3 and 'class="budget-line"' in plot
