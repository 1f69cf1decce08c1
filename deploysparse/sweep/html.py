"""sweep.html: the Pareto fronts of a sweep (accuracy vs latency, accuracy vs size) as one page.

Like report.html it must open from a CI artifact store or an air-gapped machine: inline SVG and CSS,
no script, nothing fetched. Each point carries an SVG <title>, which browsers show on hover, with
its settings and figures; the chosen point is ringed and labelled.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from deploysparse import __version__
from deploysparse.atomic import write_text
from deploysparse.sweep.config import BUDGET_KEYS, Sweep
from deploysparse.sweep.progress import describe
from deploysparse.sweep.select import pareto_front

PALETTE = ("#2f6fdb", "#d9822b", "#2b9d6a", "#a23fb0", "#c23b3b", "#5b6b7b")
CHOSEN = "#111111"
FRONT = "#9aa5b1"
WIDTH, HEIGHT = 560, 360
MARGIN = {"left": 64, "right": 20, "top": 20, "bottom": 48}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_sweep_html(sweep: Sweep, rows: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """The page as one HTML string."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("accuracy") is not None]
    criteria = sorted({r["criterion"] for r in ok})
    colors = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(criteria)}
    charts = (
        _chart(ok, "p50_ms", "p50 latency (ms)", best, colors, "latency")
        + _chart(ok, "size_bytes", "model size (KiB)", best, colors, "size", scale=1 / 1024)
        if ok
        else "<p>No point finished with an accuracy to plot.</p>"
    )
    legend = "".join(
        f'<span class="key"><svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="{c}"/></svg>'
        f"{_e(name)}</span>"
        for name, c in colors.items()
    )
    chosen = (
        f'<p class="chosen">Chosen ({_e(_rule(sweep))}): <b>{_e(describe(best))}</b> — '
        f"<code>points/{_e(best['key'])}/report.json</code>, copied to <code>best.json</code>.</p>"
        if best
        else f'<p class="chosen none">No point meets the rule ({_e(_rule(sweep))}); no best.json.</p>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{_e(f"deploysparse sweep: {sweep.name}")}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1f2933; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 24px 0 8px; }}
.sub {{ color: #616e7c; margin: 0 0 16px; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 24px; }}
figure {{ margin: 0; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #3e4c59; }}
.point {{ stroke: #fff; stroke-width: 1; }}
.point:hover {{ r: 8; stroke: #111; }}
.key {{ margin-right: 16px; }} .key svg {{ vertical-align: middle; margin-right: 4px; }}
table {{ border-collapse: collapse; font-size: 12px; margin-top: 8px; }}
th, td {{ border-bottom: 1px solid #e4e7eb; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.best td {{ background: #eef4ff; font-weight: 600; }} tr.failed td {{ color: #c23b3b; }}
.chosen.none {{ color: #c23b3b; }}
</style></head><body>
<h1>{_e(f"deploysparse sweep: {sweep.name}")}</h1>
<p class="sub">{len(rows)} points, {len(rows) - len(ok)} without a result · hover a point for its settings ·
grey line: Pareto front · ringed: the chosen point</p>
{chosen}
<div>{legend}</div>
<div class="charts">{charts}</div>
<h2>Every point</h2>
{_table(rows, best)}
<p class="sub">deploysparse {_e(__version__)}</p>
</body></html>
"""


def write_sweep_html(
    sweep: Sweep, rows: list[dict[str, Any]], best: dict[str, Any] | None, path: Path
) -> Path:
    write_text(path, render_sweep_html(sweep, rows, best))
    return path


def _rule(sweep: Sweep) -> str:
    rule = sweep.select
    limits = [
        f"p50 <= {rule.max_p50_ms} ms" if rule.max_p50_ms is not None else "",
        f"accuracy drop <= {rule.max_accuracy_drop * 100:g} pt" if rule.max_accuracy_drop is not None else "",
        f"size <= {rule.max_size_bytes} B" if rule.max_size_bytes is not None else "",
        "validation passed" if rule.require_passed else "",
    ]
    text = rule.goal.replace("_", " ")
    limits = [x for x in limits if x]
    return text + (" with " + ", ".join(limits) if limits else "")


def _chart(
    rows: list[dict[str, Any]],
    key: str,
    label: str,
    best: dict[str, Any] | None,
    colors: dict[str, str],
    name: str,
    scale: float = 1.0,
) -> str:
    xs = [r[key] * scale for r in rows]
    ys = [r["accuracy"] for r in rows]
    x0, x1 = _padded(min(xs), max(xs), floor_zero=True)
    y0, y1 = _padded(min(ys), max(ys))
    y1 = min(y1, max(1.0, max(ys) + 1e-3))  # accuracy never exceeds 1: no axis above it
    left, top = MARGIN["left"], MARGIN["top"]
    inner_w = WIDTH - left - MARGIN["right"]
    inner_h = HEIGHT - top - MARGIN["bottom"]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * inner_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * inner_h

    parts = [
        f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="#fafbfc" stroke="#cbd2d9"/>'
    ]
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        parts.append(
            f'<text x="{px(xv):.1f}" y="{top + inner_h + 16}" text-anchor="middle">{_tick(xv)}</text>'
        )
        parts.append(f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:.4f}</text>')
    parts.append(f'<text x="{left + inner_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">{_e(label)}</text>')
    parts.append(
        f'<text x="14" y="{top + inner_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + inner_h / 2})">accuracy</text>'
    )
    front = pareto_front(rows, key)
    if len(front) > 1:
        path = " ".join(f"{px(r[key] * scale):.1f},{py(r['accuracy']):.1f}" for r in front)
        parts.append(
            f'<polyline class="front" points="{path}" fill="none" stroke="{FRONT}" stroke-width="2"/>'
        )
    for row in rows:
        x, y = px(row[key] * scale), py(row["accuracy"])
        on_front = " (Pareto front)" if row in front else ""
        parts.append(
            f'<circle class="point" data-key="{_e(row["key"])}" cx="{x:.1f}" cy="{y:.1f}" r="5" '
            f'fill="{colors[row["criterion"]]}"><title>{_e(describe(row) + on_front)}</title></circle>'
        )
    if best is not None and best.get("accuracy") is not None:
        x, y = px(best[key] * scale), py(best["accuracy"])
        parts.append(
            f'<circle class="chosen-mark" cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" '
            f'stroke="{CHOSEN}" stroke-width="2.5"><title>chosen: {_e(describe(best))}</title></circle>'
        )
        parts.append(f'<text x="{x + 13:.1f}" y="{y - 8:.1f}" font-weight="700">chosen</text>')
    svg = (
        f'<svg class="pareto-chart" id="pareto-{name}" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">{"".join(parts)}</svg>'
    )
    return f"<figure><figcaption>accuracy vs {_e(label)}</figcaption>{svg}</figure>"


def _tick(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _padded(low: float, high: float, floor_zero: bool = False) -> tuple[float, float]:
    span = high - low
    pad = span * 0.08 if span > 0 else max(abs(high) * 0.01, 1e-3)
    low, high = low - pad, high + pad
    if floor_zero:
        low = max(low, 0.0)
    return low, high


def _table(rows: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    head = (
        "<tr><th>model</th><th>criterion</th><th>budget</th><th>precision</th><th>backend</th><th>batch</th>"
        "<th>accuracy</th><th>drop (pt)</th><th>p50 ms</th><th>KiB</th><th>FLOPs</th><th>passed</th>"
        "<th>key</th></tr>"
    )
    body = []
    for r in rows:
        budget = next((f"{k} {r[k]:g}" for k in BUDGET_KEYS if r.get(k) is not None), "—")
        if r.get("status") != "ok":
            body.append(
                f'<tr class="failed"><td>{_e(r["model"])}</td><td>{_e(r["criterion"])}</td><td>{_e(budget)}</td>'
                f"<td>{_e(r['precision'])}</td><td>{_e(r['backend'])}</td><td>{_e(r['batch'])}</td>"
                f'<td colspan="6">failed: {_e(r.get("error"))}</td><td>{_e(r["key"])}</td></tr>'
            )
            continue
        css = ' class="best"' if best is not None and r["key"] == best["key"] else ""
        acc = "—" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        drop = "—" if r.get("accuracy_drop") is None else f"{r['accuracy_drop'] * 100:.2f}"
        body.append(
            f"<tr{css}><td>{_e(r['model'])}</td><td>{_e(r['criterion'])}</td><td>{_e(budget)}</td>"
            f"<td>{_e(r['precision'])}</td><td>{_e(r['backend'])}</td><td>{_e(r['batch'])}</td>"
            f"<td>{acc}</td><td>{drop}</td><td>{r['p50_ms']:.3f}</td><td>{r['size_bytes'] / 1024:.0f}</td>"
            f"<td>{r['flops_ratio']:.0%}</td><td>{'yes' if r.get('passed') else 'no'}</td>"
            f"<td>{_e(r['key'])}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"
