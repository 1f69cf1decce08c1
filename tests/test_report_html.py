"""The report page: self-contained, escapes user text, and renders in a real browser (headless Chromium).

The browser test needs the Debian package: `apt-get install -y chromium`; it skips without it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from deploysparse.report import ReportError, render_html, write_report
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


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into an HxWxC array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, "unexpected PNG format"
    channels = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(
        height, 1 + width * channels
    )
    out = np.zeros((height, width * channels), dtype=np.uint8)
    previous = np.zeros(width * channels, dtype=np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            row = line
        elif kind == 2:
            row = (line + previous) & 0xFF
        else:
            row = _unfilter_sequential(kind, line, previous, channels)
        out[y] = row
        previous = row
    return out.reshape(height, width, channels)


def _unfilter_sequential(kind: int, line: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """Sub (1), Average (3), Paeth (4): each byte depends on the one `bpp` to its left."""
    row = [0] * len(line)
    prev = previous.tolist()
    cur = line.tolist()
    for i in range(len(cur)):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 1:
            pred = left
        elif kind == 3:
            pred = (left + up) // 2
        else:
            up_left = prev[i - bpp] if i >= bpp else 0
            p = left + up - up_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
        row[i] = (cur[i] + pred) & 0xFF
    return np.array(row, dtype=np.int32)


def count_color(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    distance = np.abs(image[..., :3].astype(np.int32) - np.array(rgb)).max(axis=-1)
    return int((distance <= tolerance).sum())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def screenshot(html_path: Path, png: Path, profile: Path) -> list[str]:
    """Render `html_path` to `png` at 1200x1600; return the page's console messages and errors."""
    shot = subprocess.run(
        [
            CHROMIUM,
            *HEADLESS,
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={png}",
            "--window-size=1200,1600",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    return [line for line in shot.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)"
)


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
    dom = subprocess.run(
        [
            CHROMIUM,
            *HEADLESS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert dom.stdout.count('class="bar-kept"') == 6
    assert dom.stdout.count('class="latency-chart"') == 2

    png = tmp_path / "page.png"
    assert screenshot(html_path, png, tmp_path / "profile") == []
    image = read_png(png)
    assert image.shape[:2] == (1600, 1200)
    assert image[..., :3].std() > 20, "screenshot is blank"
    assert count_color(image, KEPT_BLUE) > 5000, "the kept-channel and compact-latency bars are missing"
    assert count_color(image, ORIGINAL_GREY) > 2000, "the original-size bars are missing"
