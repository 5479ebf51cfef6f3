"""Per-device rollout report: ``rollout-<id>.json`` and ``rollout-<id>.html`` (a table, and the p90 of every
device as a bar against the gate's budget), self-contained (no scripts, no links)."""

from __future__ import annotations

import html
import json
from pathlib import Path

from devicefit.fleet.state import Rollout

_CSS = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}.failed{color:#b00}"
        ".rolled_back{color:#a60}")


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def _plot(r: Rollout) -> str:
    rows = [d for d in r.devices if d.p90_ms is not None]
    if not rows:
        return "<p>no measurements</p>"
    budget = r.gate.get("max_p90_ms")
    top = max([d.p90_ms or 0.0 for d in rows] + [budget or 0.0]) * 1.1 or 1.0
    bar_h, width = 14, 600
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 160}" height="{bar_h * len(rows) + 20}">']
    for i, d in enumerate(rows):
        w = (d.p90_ms or 0.0) / top * width
        parts.append(f'<text x="0" y="{i * bar_h + 11}" font-size="10">{html.escape(d.device_id)}</text>'
                     f'<rect x="150" y="{i * bar_h + 2}" width="{w:.1f}" height="{bar_h - 4}" fill="#4a7"/>'
                     f'<text x="{155 + w:.1f}" y="{i * bar_h + 11}" font-size="9">{d.p90_ms:.3f} ms</text>')
    if budget:
        x = 150 + budget / top * width
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{bar_h * len(rows)}" stroke="#b00"/>')
    parts.append("</svg>")
    return "".join(parts)


def write_report(r: Rollout, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the JSON and HTML report of rollout ``r`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = r.to_dict()
    jpath = out / f"rollout-{r.id}.json"
    jpath.write_text(json.dumps(data, indent=1, default=str))
    head = ("device", "wave", "state", "model", "p50 ms", "p90 ms", "previous p90 ms", "peak RSS MB", "error")
    body = "".join(
        f'<tr class="{d.state}"><td>{html.escape(d.device_id)}</td><td>{d.wave + 1}</td><td>{d.state}</td>'
        f"<td>{html.escape(d.model_id or '')}</td><td>{_fmt(d.p50_ms)}</td><td>{_fmt(d.p90_ms)}</td>"
        f"<td>{_fmt(d.prev_p90_ms)}</td><td>{_fmt(d.peak_rss_mb)}</td><td>{html.escape(d.error or '')}</td></tr>"
        for d in r.devices
    )
    waves = "".join(
        f"<li>wave {w['wave'] + 1} ({r.waves[w['wave']]:.0%}): {w['state']}, host bytes {w['host_bytes']}"
        + (f" — {html.escape('; '.join(w['verdict']['reasons']))}" if w["verdict"] and w["verdict"]["reasons"] else "")
        + "</li>"
        for w in r.wave_rows
    )
    title = f"rollout {r.id}: {r.manifest.get('model_id')} to fleet {r.fleet} — {r.state}"
    hpath = out / f"rollout-{r.id}.html"
    hpath.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>gate: {html.escape(json.dumps(r.gate))}</p><ul>{waves}</ul>"
        f"<h2>p90 per device</h2>{_plot(r)}<h2>devices</h2><table><tr>"
        + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{body}</table></body></html>"
    )
    return jpath, hpath
