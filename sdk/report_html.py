"""report.html: one self-contained page (inline CSS + SVG, no scripts, no network) rendering report.json.

Sections: summary and budgets; the Pareto plot (metric drop vs latency; measured candidates filled,
predicted-only hollow; budget lines; the chosen candidate ringed) with ``id="pareto-plot"``; the
predicted-vs-measured latency scatter with the ±15% band (``id="pred-vs-meas"``); the per-layer plan.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

W, H, PAD = 660, 400, 64

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.ok{color:#0a7d38;font-weight:600}.bad{color:#b3261e;font-weight:600}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e3e6ec;padding:4px 10px;text-align:left}
th{background:#f4f6f9}.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #e3e6ec;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:18px}.muted{color:#667}
svg text{font-size:11px;fill:#333} .legend{font-size:12px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) < 1e5 else f"{x:.3g}"
    return _e(x)


class _Axes:
    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, x0: float | None = None, y0: float | None = None) -> None:
        xs = [v for v in xs if v is not None and math.isfinite(v)] or [0.0, 1.0]
        ys = [v for v in ys if v is not None and math.isfinite(v)] or [0.0, 1.0]
        lo_x = min(xs) if x0 is None else min(x0, min(xs))
        lo_y = min(ys) if y0 is None else min(y0, min(ys))
        self.x0, self.x1 = lo_x, max(xs)
        self.y0, self.y1 = lo_y, max(ys)
        dx = (self.x1 - self.x0) or abs(self.x1) or 1.0
        dy = (self.y1 - self.y0) or abs(self.y1) or 1.0
        # a floor of 0 stays 0 (latency, drop); anything below it gets a margin
        self.x0 = self.x0 - 0.05 * dx if self.x0 < 0 or x0 is None else self.x0
        self.y0 = self.y0 - 0.05 * dy if self.y0 < 0 or y0 is None else self.y0
        self.x1, self.y1 = self.x1 + 0.08 * dx, self.y1 + 0.08 * dy

    def x(self, v: float) -> float:
        return PAD + (v - self.x0) / (self.x1 - self.x0) * (W - 2 * PAD)

    def y(self, v: float) -> float:
        return H - PAD - (v - self.y0) / (self.y1 - self.y0) * (H - 2 * PAD)

    def clip(self, cid: str) -> str:
        """A clipPath for the plot area (data never spills over the axes)."""
        return (f'<defs><clipPath id="{cid}"><rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" '
                f'height="{H - 2 * PAD}"/></clipPath></defs>')

    def frame(self, xlabel: str, ylabel: str) -> str:
        parts = [f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" fill="#fff" stroke="#99a"/>']
        for i in range(5):
            xv = self.x0 + (self.x1 - self.x0) * i / 4
            yv = self.y0 + (self.y1 - self.y0) * i / 4
            parts.append(f'<text x="{self.x(xv):.1f}" y="{H - PAD + 16}" text-anchor="middle">{xv:.3g}</text>')
            parts.append(f'<text x="{PAD - 6}" y="{self.y(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
            parts.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{self.y(yv):.1f}" y2="{self.y(yv):.1f}" stroke="#eef0f4"/>')
        parts.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">{_e(xlabel)}</text>')
        parts.append(f'<text x="12" y="{H / 2}" text-anchor="middle" transform="rotate(-90 12 {H / 2})">{_e(ylabel)}</text>')
        return "".join(parts)


def pareto_svg(report: dict[str, Any]) -> str:
    pts = report.get("pareto", [])
    budget = report.get("budget", {})
    base = report.get("baseline", {})
    lat = lambda p: p["measured_ms"] if p.get("measured_ms") is not None else p["predicted_ms"]  # noqa: E731
    drop = lambda p: p["metric_drop"] if p.get("metric_drop") is not None else p["predicted_drop"]  # noqa: E731
    xs = [lat(p) for p in pts] + [base.get("latency", {}).get("p50_ms") or 0.0]
    measured_drops = [drop(p) for p in pts if p.get("measured_ms") is not None]
    ys = [*measured_drops, 0.0]
    if budget.get("latency_ms") is not None:
        xs.append(budget["latency_ms"])
    if budget.get("accuracy_drop") is not None:
        ys.append(budget["accuracy_drop"])
    # focus on what matters: up to 3x the drop budget (or the measured drops); predicted-only points
    # beyond it are drawn on the top edge as triangles
    top = max([*ys, 3 * (budget.get("accuracy_drop") or 0.0)]) or max([drop(p) for p in pts] + [1e-3])
    ax = _Axes(xs, [*ys, top], x0=0.0, y0=0.0)
    out = [f'<svg id="pareto-plot" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'role="img" aria-label="Pareto plot: metric drop vs latency">', ax.clip("pareto-clip"),
           ax.frame("latency p50 (ms)", "metric drop"), '<g clip-path="url(#pareto-clip)">']
    if budget.get("latency_ms") is not None:
        bx = ax.x(budget["latency_ms"])
        out.append(f'<line class="budget-line" x1="{bx:.1f}" x2="{bx:.1f}" y1="{PAD}" y2="{H - PAD}" stroke="#b3261e" stroke-dasharray="6 4"/>'
                   f'<text x="{bx + 4:.1f}" y="{PAD + 12}" fill="#b3261e">latency budget</text>')
    if budget.get("accuracy_drop") is not None:
        by = ax.y(budget["accuracy_drop"])
        out.append(f'<line class="budget-line" x1="{PAD}" x2="{W - PAD}" y1="{by:.1f}" y2="{by:.1f}" stroke="#b3261e" stroke-dasharray="6 4"/>'
                   f'<text x="{W - PAD - 4}" y="{by - 4:.1f}" text-anchor="end" fill="#b3261e">accuracy-drop budget</text>')
    y_top = ax.y1
    for p in sorted(pts, key=lambda p: p.get("measured_ms") is not None):
        measured = p.get("measured_ms") is not None
        color = "#0a7d38" if p.get("passes") else ("#1f5fbf" if measured else "#8a93a6")
        fill = color if measured else "none"
        title = f"trial {p.get('trial')}: {lat(p):.3f} ms ({'measured' if measured else 'predicted'}), drop {drop(p):.4f}"
        if not measured and drop(p) > y_top:  # off scale: a triangle on the top edge
            cx, cy = ax.x(lat(p)), PAD + 6
            out.append(f'<path class="predicted off-scale" d="M{cx:.1f},{cy - 5:.1f} L{cx - 5:.1f},{cy + 4:.1f} '
                       f'L{cx + 5:.1f},{cy + 4:.1f} Z" fill="none" stroke="{color}"><title>{_e(title)} (off scale)</title></path>')
            continue
        out.append(f'<circle class="{"measured" if measured else "predicted"}" cx="{ax.x(lat(p)):.1f}" cy="{ax.y(drop(p)):.1f}" '
                   f'r="{5 if measured else 4}" fill="{fill}" stroke="{color}" stroke-width="1.5"><title>{_e(title)}</title></circle>')
        if measured and p.get("predicted_ms") is not None:
            out.append(f'<line x1="{ax.x(p["predicted_ms"]):.1f}" x2="{ax.x(lat(p)):.1f}" y1="{ax.y(drop(p)):.1f}" '
                       f'y2="{ax.y(drop(p)):.1f}" stroke="{color}" stroke-opacity="0.35"/>')
        if p.get("chosen"):
            out.append(f'<circle class="chosen" cx="{ax.x(lat(p)):.1f}" cy="{ax.y(drop(p)):.1f}" r="10" fill="none" stroke="#d98e04" stroke-width="2.5"/>')
    b_ms = base.get("latency", {}).get("p50_ms")
    if b_ms is not None:
        out.append(f'<rect class="baseline" x="{ax.x(b_ms) - 5:.1f}" y="{ax.y(0.0) - 5:.1f}" width="10" height="10" fill="#333">'
                   f'<title>fp32 baseline {b_ms:.3f} ms</title></rect>')
    out.append("</g>")
    lx = PAD + 8
    for i, (label, col, filled) in enumerate([("measured, passes", "#0a7d38", True), ("measured", "#1f5fbf", True),
                                              ("predicted only", "#8a93a6", False)]):
        y = PAD + 14 + 16 * i
        out.append(f'<circle cx="{lx + 4}" cy="{y - 4}" r="4" fill="{col if filled else "none"}" stroke="{col}"/>'
                   f'<text class="legend" x="{lx + 14}" y="{y}">{label}</text>')
    out.append(f'<rect x="{lx}" y="{PAD + 56}" width="8" height="8" fill="#333"/><text class="legend" x="{lx + 14}" y="{PAD + 64}">fp32</text>')
    out.append("</svg>")
    return "".join(out)


def scatter_svg(report: dict[str, Any]) -> str:
    pts = [p for p in report.get("search", {}).get("prediction_error", {}).get("points", [])
           if p.get("measured_ms") and p.get("predicted_ms") is not None]
    vals = [p["measured_ms"] for p in pts] + [p["predicted_ms"] for p in pts]
    ax = _Axes(vals or [0.0, 1.0], vals or [0.0, 1.0], x0=0.0, y0=0.0)
    lo, hi = ax.x0, ax.x1
    out = [f'<svg id="pred-vs-meas" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'role="img" aria-label="predicted vs measured latency">', ax.clip("scatter-clip"),
           ax.frame("predicted p50 (ms)", "measured p50 (ms)"), '<g clip-path="url(#scatter-clip)">']
    band = " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in [(lo, lo * 0.85), (hi, hi * 0.85), (hi, hi * 1.15), (lo, lo * 1.15)])
    out.append(f'<polygon points="{band}" fill="#1f5fbf" fill-opacity="0.08"/>')
    out.append(f'<line x1="{ax.x(lo):.1f}" y1="{ax.y(lo):.1f}" x2="{ax.x(hi):.1f}" y2="{ax.y(hi):.1f}" stroke="#667" stroke-dasharray="4 3"/>')
    for p in pts:
        title = f"{p.get('label', '')}: predicted {p['predicted_ms']:.3f} ms, measured {p['measured_ms']:.3f} ms"
        out.append(f'<circle cx="{ax.x(p["predicted_ms"]):.1f}" cy="{ax.y(p["measured_ms"]):.1f}" r="5" fill="#1f5fbf">'
                   f'<title>{_e(title)}</title></circle>')
    out.append("</g>")
    if not pts:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no candidate measured after calibration</text>')
    out.append(f'<text x="{PAD + 8}" y="{PAD + 14}" class="legend">dashed: predicted = measured; band: ±15%</text></svg>')
    return "".join(out)


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{_e(t)}</th>" for _, t in cols)
    body = []
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{_fmt(v, 4)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_html(report: dict[str, Any]) -> str:
    r = report["result"]
    m = report["model"]
    b = report["budget"]
    s = report["search"]
    err = s.get("prediction_error", {}).get("median")
    status = ('<span class="ok">budget met</span>' if r["budget_met"]
              else f'<span class="bad">budget not met</span> — shortfall {_e(r.get("shortfall"))}')
    batch = int((report.get("benchmark") or {}).get("batch_size") or 1)
    threads = (report.get("benchmark") or {}).get("threads")
    per_run = (f", batch {batch}" if batch != 1 else "") + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")
    cards = [
        ("latency p50", f"{_fmt(r['latency']['p50_ms'])} ms",
         f"{r['latency']['source']} on {r['latency'].get('device') or '–'}{per_run}"),
        ("fp32 p50", f"{_fmt(report['baseline']['latency']['p50_ms'])} ms", "measured"),
        (f"{r['metric'].get('name')} drop", _fmt(r["metric"].get("drop"), 4), f"baseline {_fmt(r['metric'].get('baseline'), 4)}"),
        ("size", f"{(r['size_bytes'] or 0) / 1e6:.2f} MB", f"{_fmt(r.get('compression_ratio'), 2)}× smaller"),
        ("search", f"{s['trials']} trials", f"{s['measurements']} measured, {s['minutes']:.1f} min"),
        ("prediction error", "–" if err is None else f"{100 * err:.1f}%", "median |pred−meas|/meas"),
    ]
    card_html = "".join(f'<div class="card"><span class="muted">{_e(t)}</span><b>{v}</b><span class="muted">{_e(sub)}</span></div>'
                        for t, v, sub in cards)
    budget_rows = [{"budget": k, "limit": b.get(k), "origin": b.get("origin", {}).get(k)}
                   for k in ("latency_ms", "size_mb", "memory_mb", "accuracy_drop")]
    pareto_rows = [{**p, "summary": ", ".join(f"{k}×{v}" for k, v in (p.get("summary") or {}).items())}
                   for p in report.get("pareto", [])]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>devicefit report — {_e(m['name'])} on {_e(report['profile']['id'])}</title>
<style>{CSS}</style></head><body>
<h1>{_e(m['name'])} → {_e(report['profile'].get('name', report['profile']['id']))}</h1>
<p>{status}. {m.get('params') or 0:,} params, {m.get('macs') or 0:,} MACs/sample, {(m.get('size_bytes') or 0) / 1e6:.2f} MB fp32.
Latencies are the p50 of one inference on a batch of {batch} input{'s' if batch != 1 else ''}
({_e(threads) if threads else "the runner's default"} intra-op thread{'s' if threads != 1 else ''}).</p>
<div class="cards">{card_html}</div>
<h2>Budgets</h2>{_table(budget_rows, [("budget", "budget"), ("limit", "limit"), ("origin", "from")])}
<h2>Pareto: metric drop vs latency</h2>
{pareto_svg(report)}
<h2>Predicted vs measured latency</h2>
{scatter_svg(report)}
<h2>Candidates</h2>
{_table(pareto_rows, [("trial", "trial"), ("source", "source"), ("predicted_ms", "predicted ms"), ("measured_ms", "measured ms"),
                       ("metric_drop", "drop"), ("predicted_drop", "pred. drop"), ("size_bytes", "bytes"), ("passes", "passes"),
                       ("chosen", "chosen"), ("summary", "plan")])}
<h2>Per-layer plan</h2>
{_table(report.get('layers', []), [("name", "layer"), ("kind", "kind"), ("params", "params"), ("macs", "MACs"),
                                     ("choice", "choice"), ("predicted_ms", "pred. ms"), ("sensitivity_drop", "sens. drop")])}
<p class="muted">Sensitivity: {_e(s.get('sensitivity', {}).get('method', ''))}; {_e(s.get('sensitivity', {}).get('data', ''))}.
Latencies marked measured were timed on {_e(s.get('device'))} ({_e(s.get('measured_on'))}).</p>
</body></html>
"""
