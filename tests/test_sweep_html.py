"""sweep.html: self-contained, every point hoverable in both Pareto charts, the chosen point marked,
user text escaped, and it renders in headless Chromium (skipped without it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploysparse.sweep.config import load_sweep
from deploysparse.sweep.html import CHOSEN, PALETTE, render_sweep_html, write_sweep_html
from deploysparse.sweep.select import choose
from tests.browser import count_color, dump_dom, needs_chromium, read_png, screenshot


def row(key: str, criterion: str, target: float, accuracy: float, p50: float, size: int, **extra) -> dict:
    return {
        "key": key,
        "status": "ok",
        "model": "digits",
        "criterion": criterion,
        "flops_target": target,
        "precision": "fp32",
        "backend": "onnxruntime",
        "batch": 1,
        "accuracy": accuracy,
        "accuracy_original": 0.99,
        "accuracy_drop": 0.99 - accuracy,
        "passed": True,
        "p50_ms": p50,
        "size_bytes": size,
        "flops_ratio": target,
        "seconds": 3.0,
        **extra,
    }


ROWS = [
    row("k1", "l1", 0.5, 0.99, 0.60, 2_200_000),
    row("k2", "l1", 0.3, 0.985, 0.31, 1_300_000),
    row("k3", "bn-scale", 0.5, 0.98, 0.65, 2_300_000),  # dominated on both charts
    row("k4", "bn-scale", 0.3, 0.97, 0.30, 1_330_000),
    {"key": "k5", "status": "failed", "model": "digits", "criterion": "pfp", "flops_target": 0.3,
     "precision": "fp32", "backend": "onnxruntime", "batch": 1, "error": "PlanError: budget <b>"},
]  # fmt: skip


@pytest.fixture
def sweep(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("models: [m.onnx]\ndata: {calib: c.npy}\nselect: {goal: max_accuracy, max_p50_ms: 0.5}\n")
    return load_sweep(path)


def test_page_is_self_contained(sweep) -> None:
    page = render_sweep_html(sweep, ROWS, choose(ROWS, sweep.select))
    assert not re.search(r"<script|<link|<iframe|<img|@import|url\(", page, re.IGNORECASE)
    assert not re.search(r"(src|href)\s*=", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page


def test_every_point_is_hoverable_in_both_charts_and_the_chosen_one_marked(sweep) -> None:
    best = choose(ROWS, sweep.select)
    assert best["key"] == "k2"  # highest accuracy with p50 <= 0.5 ms
    page = render_sweep_html(sweep, ROWS, best)
    assert page.count('class="pareto-chart"') == 2
    circles = re.findall(r'<circle class="point" data-key="(k\d)"[^>]*><title>([^<]*)</title>', page)
    assert sorted(k for k, _ in circles) == sorted(["k1", "k2", "k3", "k4"] * 2)
    titles = dict(circles)
    assert "bn-scale flops_target 0.5" in titles["k3"] and "p50 0.650 ms" in titles["k3"]
    assert "(Pareto front)" in titles["k2"] and "(Pareto front)" not in titles["k3"]
    assert page.count('class="chosen-mark"') == 2
    assert "Chosen (max accuracy with p50 &lt;= 0.5 ms, validation passed)" in page
    assert '<tr class="best">' in page and "failed: PlanError: budget &lt;b&gt;" in page


def test_no_chosen_point_says_so(sweep) -> None:
    page = render_sweep_html(sweep, ROWS, None)
    assert 'class="chosen-mark"' not in page and "No point meets the rule" in page


def test_user_text_is_escaped(sweep) -> None:
    rows = [dict(ROWS[0], model="<script>alert(1)</script>")]
    page = render_sweep_html(sweep, rows, None)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.slow
@needs_chromium
def test_page_renders_in_headless_chromium(sweep, tmp_path: Path) -> None:
    path = write_sweep_html(sweep, ROWS, choose(ROWS, sweep.select), tmp_path / "sweep.html")
    dom = dump_dom(path, tmp_path / "profile")
    assert len(re.findall(r'<circle class="point"[^>]*><title>', dom)) == 8
    assert dom.count('class="chosen-mark"') == 2

    png = tmp_path / "page.png"
    assert screenshot(path, png, tmp_path / "profile") == []
    image = read_png(png)
    blue = tuple(int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5))
    orange = tuple(int(PALETTE[1][i : i + 2], 16) for i in (1, 3, 5))
    black = tuple(int(CHOSEN[i : i + 2], 16) for i in (1, 3, 5))
    assert count_color(image, blue) > 100, "the l1 points are missing"
    assert count_color(image, orange) > 100, "the bn-scale points are missing"
    assert count_color(image, black, tolerance=20) > 200, "the chosen-point rings and text are missing"
