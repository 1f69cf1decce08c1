"""report.html's per-layer table (original beside compact) and the speed-up over the flushed original."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploysparse.report import render_html, write_report
from deploysparse.report.schema import parse_report
from tests.browser import count_color, dump_dom, needs_chromium, read_png, screenshot
from tests.report_factory import _point, make_report
from tests.test_report_html import KEPT_BLUE


def report_with_layers() -> dict:
    """The factory's report plus a flushed original and a per-layer profile at batch 8."""
    report = make_report()
    report["latency"]["original_flushed"] = [
        _point(1, [1.90, 1.88, 1.95, 1.91, 1.93], 1.4),
        _point(8, [10.0, 10.4, 10.1, 11.0, 10.2], 1.3),
    ]
    ms = [
        ("stem.conv", "FusedConv", 2.4, 2.0, 1.5),
        ("layer1.0.conv1", "Conv", 3.1, 3.0, 1.9),
        ("layer2.0.conv2 <fused>", "Conv", 1.2, 1.2, 1.0),
        ("layer1.1.se.fc", "Gemm", 0.05, 0.05, None),
        ("(layout reorders)", "ReorderInput+ReorderOutput", 0.2, 0.2, 0.1),
    ]
    rows = []
    for node, op, original, flushed, compact in ms:
        times = {"original": original, "original_flushed": flushed}
        if compact is not None:
            times["compact"] = compact
        rows.append({"node": node, "op": op, "ms": times})
    rows.sort(key=lambda r: -r["ms"]["original"])
    report["layers"] = {
        "batch": 8,
        "runs": 50,
        "models": ["original", "original_flushed", "compact"],
        "rows": rows,
    }
    return report


def test_layers_table_puts_original_beside_compact() -> None:
    page = render_html(report_with_layers())
    section = page[page.index('<section id="layers">') : page.index("</section>", page.index('id="layers"'))]
    assert "ONNX Runtime profiler, batch 8" in section and "over 50 runs" in section
    for head in ("original ms", "original, denormals flushed ms", "compact ms", "saved ms"):
        assert head in section
    assert "<code>layer1.0.conv1</code>" in section
    assert "+1.100" in section  # layer1.0.conv1: flushed 3.0 ms - compact 1.9 ms, what pruning bought
    assert "removed" in section  # the SE Gemm is gone in the compact model
    assert "&lt;fused&gt;" in section and "<fused>" not in section
    assert (
        section.count('class="layer-compact"') == 4 and section.count('class="layer-original_flushed"') == 5
    )
    assert "all 5 nodes" in section and "+1.950" in section  # totals: 6.45 flushed - 4.50 compact


def test_speedup_over_the_flushed_original_is_shown_beside_the_plain_one() -> None:
    page = render_html(report_with_layers())
    assert "speed-up vs flushed" in page
    assert "1.48×" in page  # 2.10 / 1.42 against the original as it is
    assert "1.35×" in page  # 1.91 / 1.42 against the flushed original: what pruning alone did
    assert "1.35× over the original with denormals flushed" in page  # the card says it too


def test_reports_without_layers_or_flushed_original_still_validate_and_render() -> None:
    plain = make_report()
    assert parse_report(plain).layers is None
    page = render_html(plain)
    assert '<section id="layers">' not in page and "speed-up vs flushed" not in page


@pytest.mark.slow
@needs_chromium
def test_layers_section_renders_in_headless_chromium(tmp_path: Path) -> None:
    report = report_with_layers()
    report["plan"]["groups"] = []  # shorter page: the layers section falls inside the screenshot
    report["pruning"]["pinned"] = []
    _, html_path = write_report(report, tmp_path / "out")
    dom = dump_dom(html_path, tmp_path / "profile")
    assert dom.count('class="layer-compact"') == 4
    png = tmp_path / "page.png"
    assert screenshot(html_path, png, tmp_path / "profile") == []
    image = read_png(png)
    assert count_color(image, KEPT_BLUE) > 1000
