"""report.html: one self-contained page (inline CSS and SVG, no scripts, no network) from a report.

The page must open from a CI artifact store or an air-gapped machine, so nothing is fetched at view
time: the charts are SVG drawn here, the styles are inline, and every text from the report is
escaped (node names and paths come from user models).
"""

from __future__ import annotations

import html
import importlib.resources
import json
from pathlib import Path
from string import Template
from typing import Any

from deploysparse import __version__, atomic
from deploysparse.budget.outcome import BudgetOutcome
from deploysparse.report.schema import BudgetResult, Latency, LatencyPoint, Report, parse_report

_ORIGINAL = "#9aa5b1"
_COMPACT = "#2f6fdb"
_PINNED = "#d9822b"
_MUTED = "#616e7c"


def render_html(report: Report | dict[str, Any]) -> str:
    """The report page as one HTML string."""
    rep = report if isinstance(report, Report) else parse_report(report)
    template = Template(
        (importlib.resources.files("deploysparse") / "report" / "template.html").read_text("utf-8")
    )
    model_name = Path(rep.model.path).name
    subtitle = (
        f"recipe {rep.recipe.name} · {rep.target.backend} {rep.target.precision}"
        + (f" · {rep.target.device}" if rep.target.device else "")
        + f" · {rep.timestamps.finished:%Y-%m-%d %H:%M}"
    )
    body = "\n".join(
        [
            _cards(rep),
            _warnings(rep),
            _channels_section(rep),
            _latency_section(rep),
            _layers_section(rep),
            _quantization_section(rep),
            _validation_section(rep),
            _pinned_section(rep),
            _plan_section(rep),
            _provenance_section(rep),
        ]
    )
    return template.substitute(
        title=_e(f"deploysparse report: {model_name}"),
        subtitle=_e(subtitle),
        body=body,
        version=_e(__version__),
    )


def write_report(report: Report | dict[str, Any], outdir: str | Path) -> tuple[Path, Path]:
    """Validate `report`, then write outdir/report.json and outdir/report.html, each atomically."""
    rep = report if isinstance(report, Report) else parse_report(report)
    outdir = Path(outdir)
    json_path, html_path = outdir / "report.json", outdir / "report.html"
    atomic.write_text(json_path, json.dumps(rep.model_dump(mode="json"), indent=2) + "\n")
    atomic.write_text(html_path, render_html(rep))
    return json_path, html_path


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pct_drop(before: int, after: int) -> str:
    return f"−{(1 - after / before) * 100:.1f}%" if before else "n/a"


def _card(label: str, value: str, sub: str) -> str:
    return (
        f'<div class="card"><div class="label">{_e(label)}</div>'
        f'<div class="value">{value}</div><div class="sub">{_e(sub)}</div></div>'
    )


def _badge(passed: bool) -> str:
    return '<span class="badge ok">PASS</span>' if passed else '<span class="badge bad">FAIL</span>'


def _cards(rep: Report) -> str:
    cost, pruning = rep.cost, rep.pruning
    cards = [
        _card(
            "Parameters",
            _e(f"{cost.params_after:,}"),
            f"from {cost.params_before:,} ({_pct_drop(cost.params_before, cost.params_after)})",
        ),
        _card(
            "FLOPs (MACs / sample)",
            _e(_si(cost.flops_after)),
            f"from {_si(cost.flops_before)} ({_pct_drop(cost.flops_before, cost.flops_after)})",
        ),
        _card(
            "Channels removed",
            _e(f"{pruning.channels_removed:,}"),
            f"of {pruning.channels_total:,} in {pruning.groups_pruned} of {pruning.groups} groups ({pruning.criterion})",
        ),
        _card("Validation", _badge(rep.validation.passed), f"cosine {rep.validation.cosine:.8f}"),
    ]
    if pruning.budget is not None:
        cards.append(_budget_card(pruning.budget))
    speedup = _speedup(rep, min((p.batch for p in rep.latency.compact), default=1))
    if speedup:
        cards.append(_card("Speed-up", _e(speedup[0]), speedup[1]))
    return f'<div class="cards">{"".join(cards)}</div>'


def _budget_card(budget: BudgetResult) -> str:
    """The target asked against the value reached; NOT MET in red when the plan missed it."""
    badge = '<span class="badge ok">MET</span>' if budget.met else '<span class="badge bad">NOT MET</span>'
    return _card("Budget", badge, BudgetOutcome.from_json(budget.model_dump()).describe())


def _speedup(rep: Report, batch: int, flushed: bool = False) -> tuple[str, str] | None:
    """Speed-up of the compact model over the original (`flushed`: over the original with its
    denormal weights set to zero, which is what pruning alone bought)."""
    at = rep.latency.original_flushed_at if flushed else rep.latency.original_at
    original, compact = at(batch), rep.latency.compact_at(batch)
    if original is None or compact is None or compact.median_p50 == 0:
        return None
    ratio = original.median_p50 / compact.median_p50
    sub = f"p50 at batch {batch}: {original.median_p50:.3f} → {compact.median_p50:.3f} ms"
    if not flushed and rep.latency.original_flushed_at(batch):
        by_pruning = _speedup(rep, batch, flushed=True)
        sub += f"; {by_pruning[0]} over the original with denormals flushed" if by_pruning else ""
    return f"{ratio:.2f}×", sub


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:g}"


def _warnings(rep: Report) -> str:
    if not rep.warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in rep.warnings)
    return f'<section id="warnings"><h2>Warnings</h2><ul class="warnings">{items}</ul></section>'


def _legend(*entries: tuple[str, str]) -> str:
    spans = "".join(f'<span><i style="background:{color}"></i>{_e(text)}</span>' for color, text in entries)
    return f'<p class="legend">{spans}</p>'


def _channels_section(rep: Report) -> str:
    groups = rep.plan.groups
    if not groups:
        return '<section id="channels"><h2>Channels kept per group</h2><p class="hint">No channel groups.</p></section>'
    return (
        '<section id="channels"><h2>Channels kept per group</h2>'
        '<p class="hint">Each row is one channel group (a conv and every layer that shares its channels). '
        "The grey bar is the original width, the blue bar what the plan keeps; orange marks pinned channels.</p>"
        + _legend((_ORIGINAL, "original"), (_COMPACT, "kept"), (_PINNED, "pinned"))
        + _channels_chart(rep)
        + "</section>"
    )


def _channels_chart(rep: Report) -> str:
    """Horizontal bars, one row per group: original size behind, kept channels in front."""
    groups = rep.plan.groups
    row, label_w, bar_w, value_w = 20, 300, 620, 110
    width, height = label_w + bar_w + value_w, row * len(groups) + 24
    widest = max(g.size for g in groups)
    parts = [
        f'<svg id="channels-chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="channels kept per group">'
    ]
    for i, group in enumerate(groups):
        y = 4 + i * row
        full = bar_w * group.size / widest
        kept = bar_w * group.kept / widest
        pinned = bar_w * min(group.pinned, group.kept) / widest
        name = f"{group.id}  {group.label}" if group.label else group.id
        parts += [
            f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end" font-size="12" fill="#1f2933">'
            f"{_e(_clip(name, 42))}<title>{_e(name)}</title></text>",
            f'<rect class="bar-original" x="{label_w}" y="{y + 2}" width="{full:.1f}" height="{row - 6}" '
            f'fill="{_ORIGINAL}" rx="2"/>',
            f'<rect class="bar-kept" x="{label_w}" y="{y + 2}" width="{kept:.1f}" height="{row - 6}" '
            f'fill="{_COMPACT}" rx="2"/>',
        ]
        if pinned > 0:
            parts.append(
                f'<rect class="bar-pinned" x="{label_w}" y="{y + row - 7}" width="{pinned:.1f}" height="3" fill="{_PINNED}"/>'
            )
        parts.append(
            f'<text x="{label_w + full + 6:.1f}" y="{y + 13}" font-size="12" fill="{_MUTED}">'
            f"{group.kept}/{group.size}</text>"
        )
    axis_y = 4 + row * len(groups) + 14
    parts.append(
        f'<text x="{label_w}" y="{axis_y}" font-size="11" fill="{_MUTED}">0</text>'
        f'<text x="{label_w + bar_w}" y="{axis_y}" font-size="11" fill="{_MUTED}" text-anchor="end">'
        f"{widest} channels</text></svg>"
    )
    return "".join(parts)


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _latency_section(rep: Report) -> str:
    batches = sorted({p.batch for p in rep.latency.compact} | {p.batch for p in rep.latency.original})
    charts = "".join(
        _latency_chart(b, rep.latency.original_at(b), rep.latency.compact_at(b)) for b in batches
    )
    flushed = bool(rep.latency.original_flushed)
    rows = []
    for b in batches:
        original, compact = rep.latency.original_at(b), rep.latency.compact_at(b)
        speed = _speedup(rep, b)
        cells = f"<td class='num'>{_e(speed[0]) if speed else '–'}</td>"
        if flushed:
            point = rep.latency.original_flushed_at(b)
            honest = _speedup(rep, b, flushed=True)
            cells += (
                f"<td class='num'>{point.median_p50:.3f}</td>" if point else "<td class='num'>–</td>"
            ) + f"<td class='num'>{_e(honest[0]) if honest else '–'}</td>"
        rows.append(
            f"<tr><td class='num'>{b}</td>{_latency_cells(original)}{_latency_cells(compact)}{cells}"
            f"<td>{_e(_spread(compact)) if compact else '–'}</td></tr>"
        )
    head = "".join(
        f"<th class='num'>{h}</th>"
        for h in (
            "batch",
            *(f"{w} {m}" for w in ("original", "compact") for m in ("p50", "p99", "per s")),
            "speed-up",
            *(("original flushed p50", "speed-up vs flushed") if flushed else ()),
        )
    )
    note = (
        " The original carries denormal float32 weights, which prune sets to zero: "
        "<em>speed-up vs flushed</em> compares with the original with them flushed too, so it is "
        "what pruning alone bought."
        if flushed
        else ""
    )
    return (
        '<section id="latency"><h2>Latency before and after</h2>'
        '<p class="hint">Bars: median over repeated runs of each run\'s p50 (ms); the dark tick marks p99. '
        f"Each batch size has its own scale.{note}</p>"
        + _legend((_ORIGINAL, "original"), (_COMPACT, "compact"))
        + f'<div class="charts">{charts}</div>'
        + f'<table id="latency-table"><tr>{head}<th>compact runs</th></tr>{"".join(rows)}</table>'
        + _measured(rep.latency)
        + "</section>"
    )


_LAYER_ROWS = 30
_MODEL_NAMES = {
    "original": "original",
    "original_flushed": "original, denormals flushed",
    "compact": "compact",
}


def _layers_section(rep: Report) -> str:
    """Per-layer latency, original beside compact: which layers the pruning made faster."""
    layers = rep.layers
    if layers is None or not layers.rows:
        return ""
    models = [m for m in layers.models if m in _MODEL_NAMES]
    base = "original_flushed" if "original_flushed" in models else "original"
    rows = layers.rows[:_LAYER_ROWS]
    totals = {m: sum(r.ms.get(m, 0.0) for r in layers.rows) for m in models}
    head = "".join(f"<th class='num'>{_e(_MODEL_NAMES[m])} ms</th>" for m in models)
    body = []
    for row in rows:
        cells = "".join(
            f"<td class='num'>{row.ms[m]:.3f}</td>" if m in row.ms else "<td class='num'>removed</td>"
            for m in models
        )
        saved = row.ms.get(base, 0.0) - row.ms.get("compact", 0.0)
        body.append(
            f"<tr><td><code>{_e(_clip(row.node, 60))}</code></td><td>{_e(row.op)}</td>{cells}"
            f"<td class='num'>{saved:+.3f}</td><td>{_layer_bars(row, base, rows)}</td></tr>"
        )
    total_cells = "".join(f"<td class='num'><b>{totals[m]:.3f}</b></td>" for m in models)
    saved_total = totals.get(base, 0.0) - totals.get("compact", 0.0)
    more = len(layers.rows) - len(rows)
    return (
        '<section id="layers"><h2>Where the time goes</h2>'
        f'<p class="hint">ONNX Runtime profiler, batch {layers.batch}: median kernel time per run over '
        f"{layers.runs} runs, the models run interleaved. One row per node of the model (a conv with the "
        "BatchNormalization and activation ONNX Runtime fuses into it is one row; the layout reorders it "
        f"inserts are pooled), slowest in the {_e(_MODEL_NAMES[base])} first; "
        f"<em>saved</em> is {_e(_MODEL_NAMES[base])} minus compact.</p>"
        + _legend((_ORIGINAL, _MODEL_NAMES[base]), (_COMPACT, "compact"))
        + f'<table id="layers-table"><tr><th>node</th><th>op</th>{head}<th class="num">saved ms</th>'
        f"<th></th></tr>{''.join(body)}"
        f"<tr><td><b>all {len(layers.rows)} nodes</b></td><td></td>{total_cells}"
        f"<td class='num'><b>{saved_total:+.3f}</b></td><td></td></tr></table>"
        + (f'<p class="hint">{more} faster nodes not shown.</p>' if more > 0 else "")
        + "</section>"
    )


def _layer_bars(row, base: str, rows) -> str:
    """Two thin bars on the table's common scale: the reference original (grey) and the compact (blue)."""
    width = 160
    peak = max((max(r.ms.values(), default=0.0) for r in rows), default=0.0) or 1.0
    parts = [f'<svg class="layer-bars" width="{width}" height="16" viewBox="0 0 {width} 16" role="img">']
    for y, name, color in ((1, base, _ORIGINAL), (9, "compact", _COMPACT)):
        if name in row.ms:
            length = max(width * row.ms[name] / peak, 1.0)
            parts.append(
                f'<rect class="layer-{name}" x="0" y="{y}" width="{length:.1f}" height="6" fill="{color}"/>'
            )
    return "".join(parts) + "</svg>"


def _latency_cells(point: LatencyPoint | None) -> str:
    if point is None:
        return "<td class='num'>–</td>" * 3
    return (
        f"<td class='num'>{point.median_p50:.3f}</td><td class='num'>{point.median_p99:.3f}</td>"
        f"<td class='num'>{point.throughput_per_s:,.1f}</td>"
    )


def _spread(point: LatencyPoint) -> str:
    low, high = point.p50_spread
    text = f"{max(len(point.runs), 1)} runs, p50 {low:.3f}–{high:.3f} ms"
    if point.outlier_runs:
        runs = ", ".join(
            f"{i + 1} ({point.runs[i].p50_ms:.3f} ms)" for i in point.outlier_runs if i < len(point.runs)
        )
        text += f"; outlier run{'s' if len(point.outlier_runs) > 1 else ''} {runs}"
    return text


def _measured(latency: Latency) -> str:
    """How and where latency was measured: the rounds, the warm-up, the machine, its load."""
    parts = []
    timing, machine = latency.timing, latency.fingerprint
    if timing is not None:
        warmups = [p.warmup_calls for p in latency.compact + latency.original if p.warmup_calls is not None]
        warm = (
            f"{min(warmups)}–{max(warmups)}"
            if warmups and min(warmups) != max(warmups)
            else str(timing.warmup)
        )
        parts.append(
            f"The models took turns in {timing.rounds} runs of {timing.iters} calls per batch size, after "
            f"{warm} warm-up calls each (until the calls stopped getting faster)."
        )
    if machine is not None:
        flags = ", ".join(machine.cpu_flags) or "none listed"
        threads = f"{machine.threads} threads" if machine.threads else "the backend's threads"
        parts.append(f"Measured on {machine.cpu} ({machine.cores} cores, {threads}; kernel flags: {flags}).")
    if timing is not None and timing.affinity:
        load = " → ".join("?" if v is None else f"{v:.2f}" for v in timing.load_average)
        parts.append(f"CPUs {_cpus(timing.affinity)}, load average {load}.")
    if latency.yardstick:
        p50s = ", ".join(f"{p.median_p50:.3f} ms at batch {p.batch}" for p in latency.yardstick)
        parts.append(
            f"The yardstick ({latency.yardstick_version}, a fixed net that `check` compares a changed model "
            f"against) ran in the same rounds: {p50s}."
        )
    return f'<p class="hint" id="latency-conditions">{_e(" ".join(parts))}</p>' if parts else ""


def _cpus(cpus: list[int]) -> str:
    """0,1,2,5 -> '0-2, 5'."""
    spans: list[list[int]] = []
    for cpu in cpus:
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def _latency_chart(batch: int, original: LatencyPoint | None, compact: LatencyPoint | None) -> str:
    """Two vertical bars (p50) with a p99 tick each, on a scale of their own."""
    width, height, top, bottom = 230, 220, 40, 40
    points = [
        (name, color, p)
        for name, color, p in (("original", _ORIGINAL, original), ("compact", _COMPACT, compact))
        if p
    ]
    peak = max(p.median_p99 for _, _, p in points) or 1.0
    plot_h = height - top - bottom
    parts = [
        f'<svg class="latency-chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="latency at batch {batch}">',
        f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="13" font-weight="600" fill="#1f2933">'
        f"batch {batch}</text>",
        f'<line x1="20" y1="{height - bottom}" x2="{width - 20}" y2="{height - bottom}" stroke="#d9e2ec"/>',
    ]
    for i, (name, color, point) in enumerate(points):
        x = 45 + i * 90
        bar = plot_h * point.median_p50 / peak
        tick_y = height - bottom - plot_h * point.median_p99 / peak
        parts += [
            f'<rect class="bar-{name}" x="{x}" y="{height - bottom - bar:.1f}" width="50" height="{bar:.1f}" '
            f'fill="{color}" rx="2"/>',
            f'<line x1="{x + 10}" y1="{tick_y:.1f}" x2="{x + 40}" y2="{tick_y:.1f}" stroke="#102a43" stroke-width="2"/>',
            f'<text x="{x + 25}" y="{height - bottom - bar - 4:.1f}" text-anchor="middle" font-size="11" '
            f'fill="#1f2933">{point.median_p50:.3g}</text>',
            f'<text x="{x + 25}" y="{height - bottom + 15}" text-anchor="middle" font-size="11" fill="{_MUTED}">'
            f"{name}</text>",
        ]
    parts.append(
        f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" font-size="11" fill="{_MUTED}">ms</text></svg>'
    )
    return "".join(parts)


def _quantization_section(rep: Report) -> str:
    """How the build quantised, why, which layers stayed float, and whether int8 paid: the speed-up
    split into pruning and precision (timed interleaved by the run) and the build's own timing."""
    q = rep.quantization
    if q is None:
        return ""
    precision = rep.target.precision
    splits = [
        f"<tr><td class='num'>{batch}</td><td class='num'>{pruning:.2f}×</td>"
        f"<td class='num'>{by_precision:.2f}×</td><td class='num'><b>{together:.2f}×</b></td></tr>"
        for batch, pruning, by_precision, together in rep.latency.precision_splits()
    ]
    split_table = (
        "<table id='precision-split'><tr><th class='num'>batch</th><th class='num'>pruning "
        "(original → compact fp32)</th>"
        f"<th class='num'>{_e(precision)} (compact fp32 → compact {_e(precision)})</th>"
        f"<th class='num'>together</th></tr>{''.join(splits)}</table>"
        if splits
        else ""
    )
    facts = [
        ("scheme", q.scheme),
        ("why", q.reason),
        ("calibration", f"{q.calibration_method}, chosen by {q.calibration_chosen_by}"),
        ("layers", q.layers_note),
        (
            f"build timing, batch {q.build_batch}",
            f"fp32 {q.build_fp32_ms:.3f} ms, int8 {q.build_int8_ms:.3f} ms"
            + (f" ({q.build_fp32_ms / q.build_int8_ms:.2f}×)" if q.build_int8_ms else ""),
        ),
        ("top-1 agreement with fp32", _opt(q.top1_agreement)),
        ("cosine with fp32", "n/a" if q.cosine is None else f"{q.cosine:.6f}"),
        ("accuracy fp32 → int8", f"{_opt(q.accuracy_fp32)} → {_opt(q.accuracy_int8)}"),
    ]
    rows = "".join(f"<tr><td>{_e(name)}</td><td>{_e(value)}</td></tr>" for name, value in facts)
    float_rows = "".join(
        f"<tr><td><code>{_e(_clip(layer.node, 60))}</code></td><td>{_e(layer.op)}</td><td>{_e(layer.reason)}</td>"
        f"<td class='num'>{'' if layer.fp32_ms is None else f'{layer.fp32_ms:.3f}'}</td>"
        f"<td class='num'>{'' if layer.int8_ms is None else f'{layer.int8_ms:.3f}'}</td></tr>"
        for layer in q.float_layers
    )
    float_table = (
        "<table id='float-layers'><tr><th>kept in float</th><th>op</th><th>why</th>"
        f"<th class='num'>fp32 ms</th><th class='num'>int8 ms</th></tr>{float_rows}</table>"
        if float_rows
        else ""
    )
    finding = f'<ul class="warnings"><li>{_e(q.finding)}</li></ul>' if q.finding else ""
    badge = (
        '<span class="badge ok">faster</span>' if q.faster else '<span class="badge bad">not faster</span>'
    )
    return (
        f'<section id="quantization"><h2>Quantization {badge}</h2>{finding}'
        '<p class="hint">The int8 model against the compact model in fp32: agreement on the validation '
        "data, and latency on the machine that built it.</p>"
        f"{split_table}<table>{rows}</table>{float_table}</section>"
    )


def _validation_section(rep: Report) -> str:
    v = rep.validation
    limits = {
        **(rep.recipe.settings.get("validate") or {}),
        **v.tolerances,
    }  # the thresholds validate used win
    top1_limit = limits.get("min_top1", limits.get("min_top1_agreement"))
    rows = [
        ("max abs error", f"{v.max_abs_err:.3g}", limits.get("atol"), "≤"),
        ("max rel error", f"{v.max_rel_err:.3g}", limits.get("rtol"), "≤"),
        ("cosine similarity", f"{v.cosine:.8f}", limits.get("min_cosine"), "≥"),
        ("top-1 agreement", _opt(v.top1_agreement), top1_limit, "≥"),
        ("accuracy original", _opt(v.accuracy_original), None, ""),
        ("accuracy compact", _opt(v.accuracy_compact), None, ""),
    ]
    if v.accuracy_original is not None and v.accuracy_compact is not None:
        drop = v.accuracy_original - v.accuracy_compact
        rows.append(("accuracy drop", f"{drop:.4f}", limits.get("max_accuracy_drop"), "≤"))
    body = "".join(
        f"<tr><td>{_e(name)}</td><td class='num'>{_e(value)}</td>"
        f"<td class='num'>{_e(f'{sign} {limit:g}') if limit is not None else ''}</td></tr>"
        for name, value, limit, sign in rows
    )
    reasons = "".join(f"<li>{_e(r)}</li>" for r in v.failures)
    return (
        f'<section id="validation"><h2>Validation {_badge(v.passed)}</h2>'
        f'<p class="hint">Original and compact model on {v.samples} fresh inputs.</p>'
        f"<table><tr><th>metric</th><th class='num'>value</th><th class='num'>required</th></tr>{body}</table>"
        + (f'<ul class="warnings">{reasons}</ul>' if reasons else "")
        + "</section>"
    )


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pinned_section(rep: Report) -> str:
    pinned = rep.pruning.pinned
    if not pinned:
        return '<section id="pinned"><h2>Pinned spaces</h2><p class="hint">Nothing was pinned.</p></section>'
    rows = "".join(
        f"<tr><td><code>{_e(p.group)}</code></td><td>{_e(p.op)}</td><td><code>{_e(p.node)}</code></td>"
        f"<td>{_e(p.reason)}</td><td class='num'>{p.channels}</td></tr>"
        for p in pinned
    )
    return (
        '<section id="pinned"><h2>Pinned spaces</h2>'
        '<p class="hint">Channels these ops depend on cannot be removed without changing what the model computes.</p>'
        + _pin_shares(rep)
        + "<table><tr><th>group</th><th>op</th><th>node</th><th>why</th><th class=num>channels</th></tr>"
        + f"{rows}</table></section>"
    )


def _pin_shares(rep: Report) -> str:
    """Per kind of pin, how much of the model it holds: the table to read first when a budget is missed."""
    shares = rep.pruning.pinned_by_op
    if not shares:
        return ""
    rows = "".join(
        f"<tr><td>{_e(s.op)}</td><td>{_e(s.reason)}</td><td class='num'>{s.groups}</td>"
        f"<td class='num'>{s.channels}</td><td class='num'>{s.macs_share:.1%}</td>"
        f"<td class='num'>{s.params_share:.1%}</td></tr>"
        for s in shares
    )
    return (
        "<h3>What the pins hold</h3><p class='hint'>Per op and reason: the groups it pins, and the share of "
        "the model's MACs and parameters in the layers that read or write those groups.</p>"
        "<table><tr><th>op</th><th>why</th><th class=num>groups</th><th class=num>channels</th>"
        f"<th class=num>MACs</th><th class=num>params</th></tr>{rows}</table>"
    )


def _plan_section(rep: Report) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(g.id)}</code></td><td>{_e(g.label)}</td><td class='num'>{g.size}</td>"
        f"<td class='num'>{g.kept}</td><td class='num'>{g.size - g.kept}</td>"
        f"<td class='num'>{(g.size - g.kept) / g.size:.0%}</td><td class='num'>{g.pinned}</td>"
        f"<td>{'yes' if g.prunable else 'no'}</td></tr>"
        for g in rep.plan.groups
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in rep.plan.notes)
    capped = "".join(
        f"<tr><td><code>{_e(c.group)}</code></td><td>{_e(c.label)}</td><td class='num'>{c.channels}</td>"
        f"<td class='num'>{c.wanted}</td><td class='num'>{c.kept}</td></tr>"
        for c in rep.pruning.capped
    )
    if capped:
        capped = (
            "<h3>Held by --max-layer-ratio</h3><p class='hint'>The ranking wanted these groups cut further "
            "than the cap allows; each kept the fewest channels the cap lets it keep.</p><table><tr><th>group</th>"
            f"<th>layers</th><th class=num>channels</th><th class=num>wanted</th><th class=num>kept</th></tr>{capped}</table>"
        )
    head = "".join(
        f"<th{' class=num' if h not in ('group', 'layers', 'prunable') else ''}>{h}</th>"
        for h in ("group", "layers", "channels", "kept", "removed", "removed %", "pinned", "prunable")
    )
    return (
        f'<section id="plan"><h2>Plan</h2><table><tr>{head}</tr>{rows}</table>'
        + capped
        + (f"<ul>{notes}</ul>" if notes else "")
        + "</section>"
    )


def _provenance_section(rep: Report) -> str:
    versions = ", ".join(f"{_e(k)} {_e(v or 'not installed')}" for k, v in rep.versions.items())
    artifacts = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td><code>{_e(digest)}</code></td>"
        f"<td>{', '.join(f'<code>{_e(d)}</code>' for d in rep.artifact_data.get(name, []))}</td></tr>"
        for name, digest in rep.artifacts.items()
    )
    settings = _e(json.dumps(rep.recipe.settings, indent=2))
    started, finished = rep.timestamps.started, rep.timestamps.finished
    return (
        '<section id="provenance"><h2>Provenance</h2><table>'
        f"<tr><th>model</th><td><code>{_e(rep.model.path)}</code><br><code>sha256 {_e(rep.model.sha256)}</code></td></tr>"
        f"<tr><th>recipe</th><td>{_e(rep.recipe.name)}"
        + (f" (<code>{_e(rep.recipe.source)}</code>)" if rep.recipe.source else "")
        + f"</td></tr><tr><th>versions</th><td>{versions}</td></tr>"
        f"<tr><th>run</th><td>{_e(started.isoformat())} → {_e(finished.isoformat())} "
        f"({(finished - started).total_seconds():.1f} s)</td></tr></table>"
        + (
            "<h2>Artifacts</h2><table><tr><th>file</th><th>sha256</th><th>reads its weights from</th></tr>"
            f"{artifacts}</table>"
            if artifacts
            else ""
        )
        + f"<details><summary>Recipe settings</summary><pre>{settings}</pre></details></section>"
    )
