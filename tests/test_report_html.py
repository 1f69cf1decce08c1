"""The report page: self-contained, escapes user text, and renders in a real browser (headless Chromium).

The browser test needs the Debian package: `apt-get install -y chromium`; it skips without it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deploysparse.report import ReportError, render_html, write_report
from tests.browser import count_color, dump_dom, needs_chromium, read_png, screenshot
from tests.report_factory import make_report

KEPT_BLUE = (0x2F, 0x6F, 0xDB)
ORIGINAL_GREY = (0x9A, 0xA5, 0xB1)


def test_page_is_self_contained() -> None:
    page = render_html(make_report())
    assert not re.search(r"<script|<link|<iframe|<img|@import|url\(", page, re.IGNORECASE)
    assert not re.search(r"(src|href)\s*=", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page


def test_page_shows_every_section_and_the_numbers() -> None:
    page = render_html(make_report())
    for section in ("channels", "latency", "validation", "pinned", "plan", "provenance", "warnings"):
        assert f'<section id="{section}">' in page
    assert page.count('class="bar-kept"') == 6  # one kept bar per group
    assert page.count('class="latency-chart"') == 2  # batch 1 and batch 8
    assert "880,000" in page and "1,250,000" in page and "−29.6%" in page
    assert "1.48×" in page  # batch-1 speed-up: median p50 2.10 ms -> 1.42 ms
    assert "residual sum with the stem" in page  # why g2 is pinned
    assert "5 runs, p50 1.390–1.510 ms" in page


def test_latency_shows_outlier_runs_and_how_it_was_measured() -> None:
    report = make_report()
    point = report["latency"]["compact"][0]
    point["outlier_runs"] = [2]
    report["latency"]["timing"]["affinity"] = [0, 1, 2, 5]
    for point_of_original in report["latency"]["original"]:
        point_of_original["warmup_calls"] = 25
    point["warmup_calls"] = 10
    page = render_html(report)
    assert "5 runs, p50 1.390–1.510 ms; outlier run 3 (1.510 ms)" in page
    conditions = page.split('id="latency-conditions">', 1)[1].split("</p>", 1)[0]
    assert "took turns in 5 runs of 20 calls per batch size, after 10–25 warm-up calls" in conditions
    assert "AMD EPYC 7B13 (2 cores, 2 threads; kernel flags: avx, avx2, f16c, fma)" in conditions
    assert "CPUs 0-2, 5, load average 0.40 → 0.50" in conditions
    del report["latency"]["timing"], report["latency"]["fingerprint"]
    assert 'id="latency-conditions"' not in render_html(report)  # an older report: nothing to say


def test_user_text_is_escaped() -> None:
    report = make_report()
    report["plan"]["groups"][0]["label"] = "<script>alert(1)</script>"
    report["model"]["path"] = "models/<b>evil</b>.onnx"
    page = render_html(report)
    assert "<script>" not in page and "<b>evil" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_write_report_writes_both_files(tmp_path: Path) -> None:
    json_path, html_path = write_report(make_report(), tmp_path / "out")
    assert json.loads(json_path.read_text())["cost"]["params_after"] == 880_000
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json"]


def test_write_report_rejects_an_incomplete_report_and_writes_nothing(tmp_path: Path) -> None:
    report = make_report()
    del report["validation"]["cosine"]
    with pytest.raises(ReportError, match=r"missing key 'validation\.cosine'"):
        write_report(report, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_page_without_latency_or_groups_still_renders() -> None:
    report = make_report()
    report["latency"] = {"original": [], "compact": []}
    report["plan"]["groups"] = []
    report["pruning"]["pinned"] = []
    page = render_html(report)
    assert "No channel groups." in page and "Nothing was pinned." in page
    assert 'class="latency-chart"' not in page


def test_page_shows_an_unmet_budget_what_the_pins_hold_and_the_capped_groups() -> None:
    report = make_report()
    report["pruning"].update(
        budget_met=False,
        budget={"target": "ratio", "asked": 0.3, "reached": 0.05, "tolerance": 0.02, "met": False},
        pinned_by_op=[
            {"op": "Transpose", "reason": "transpose moves the channel axis", "groups": 36, "channels": 900,
             "macs_share": 0.851, "params_share": 0.802},
        ],
        capped=[{"group": "g7", "label": "trunk.conv", "channels": 440, "wanted": 8, "kept": 48}],
    )  # fmt: skip
    page = render_html(report)
    assert "NOT MET" in page and "--ratio 0.3 not met: 5.0% of the channels removed" in page
    assert "<td>Transpose</td><td>transpose moves the channel axis</td>" in page and "85.1%" in page
    assert "Held by --max-layer-ratio" in page and "trunk.conv" in page
    report["pruning"]["budget"] = {
        "target": "ratio",
        "asked": 0.3,
        "reached": 0.3,
        "tolerance": 0.02,
        "met": True,
    }
    report["pruning"]["budget_met"] = True
    assert "NOT MET" not in render_html(report)


@pytest.mark.slow
@needs_chromium
def test_console_error_detection_works(tmp_path: Path) -> None:
    """Guard for the test below: a page with a script error must be caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>missingFunction();</script></body></html>")
    errors = screenshot(bad, tmp_path / "bad.png", tmp_path / "profile")
    assert any("Uncaught ReferenceError" in line for line in errors)


@pytest.mark.slow
@needs_chromium
def test_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    _, html_path = write_report(make_report(), tmp_path / "out")
    dom = dump_dom(html_path, tmp_path / "profile")
    assert dom.count('class="bar-kept"') == 6
    assert dom.count('class="latency-chart"') == 2

    png = tmp_path / "page.png"
    assert screenshot(html_path, png, tmp_path / "profile") == []
    image = read_png(png)
    assert image.shape[:2] == (1600, 1200)
    assert image[..., :3].std() > 20, "screenshot is blank"
    assert count_color(image, KEPT_BLUE) > 5000, "the kept-channel and compact-latency bars are missing"
    assert count_color(image, ORIGINAL_GREY) > 2000, "the original-size bars are missing"
