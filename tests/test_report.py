"""The HTML report: self-contained (every picture inlined), and rendered by a real browser
(headless Chromium) with every picture decoded."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fidoflow.pipeline.analysis.report import (
    Curves,
    FlipItem,
    GalleryItem,
    MethodMaps,
    draw_box,
    headline,
    overlay,
    render_report,
)
from tests.test_aggregate import summary

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, which `make browser` installs (.ci/run calls it); missing, the test
    is skipped on a developer's machine and fails in CI, where it must run."""
    found = find_chromium()
    if found:
        return found
    message = "chromium is not installed: run `make browser` (apt-get install chromium, as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def render_in_browser(chromium: str, page: Path, tmp: Path,
                      screenshot: Path | None = None) -> str:
    """The DOM of ``page`` after Chromium ran its scripts (``--dump-dom`` after a virtual time
    budget); optionally a full-width screenshot as well."""
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*base, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         check=False, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if screenshot is not None:
        shot = subprocess.run([*base, "--hide-scrollbars", "--window-size=1280,2400",
                               "--virtual-time-budget=10000", f"--screenshot={screenshot}",
                               page.as_uri()], check=False, capture_output=True, text=True,
                              timeout=120)
        assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    return dom.stdout


def assert_all_images_loaded(dom: str, expected: int | None = None) -> None:
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    assert 'data-loaded="true"' in body.group(0), body.group(0)
    count = int(re.search(r'data-images="(\d+)"', body.group(0)).group(1))
    assert count == len(re.findall(r"<img\b", dom))
    if expected is not None:
        assert count == expected


def picture(seed: int, size: tuple[int, int] = (60, 90)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((*size, 3)) * 255).astype(np.uint8)


def sample_report() -> str:
    rng = np.random.default_rng(0)
    maps = {name: rng.random((7, 7)).astype(np.float32) for name in ("ssr", "sdr", "joint")}
    gallery = [GalleryItem(f"im{i}", picture(i), ["label: a", "global: c1 (0.40)"],
                           {"scd": MethodMaps(maps, (10, 5, 50, 45))}) for i in range(2)]
    flips = [FlipItem("im3", "scd", "crop", "wrong→right", picture(3), ["label b", "c5 → b"],
                      (0, 0, 30, 30)),
             FlipItem("im2", "scd", "crop", "right→wrong", picture(2), ["label a", "a → c5"])]
    fractions = np.linspace(0, 1, 11)
    curves = {"scd": Curves(fractions, 1 - fractions, fractions ** 0.5, 7)}
    return render_report(summary(), curves, gallery, flips, title="test <report>",
                         meta={"run folder": "/tmp/x"})


def test_report_is_one_self_contained_file() -> None:
    page = sample_report()
    sources = re.findall(r"<img src='([^']*)'", page)
    # 2 charts, 2 gallery rows of 4 pictures, 2 flips
    assert len(sources) == 2 + 2 * 4 + 2
    for src in sources:
        head, data = src.split(",", 1)
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "test &lt;report&gt;" in page  # text is escaped
    for heading in ("Accuracy per variant", "Against the baseline", "Deletion and insertion",
                    "Gallery", "Images whose label changed", "Errors", "Timings"):
        assert heading in page
    assert "wrong→right" in page and "right→wrong" in page


def test_overlay_and_box_drawing() -> None:
    base = np.full((20, 30, 3), 100, np.uint8)
    hot = overlay(base, np.ones((4, 4)))
    cold = overlay(base, np.zeros((4, 4)))
    assert hot.shape == base.shape and hot.dtype == np.uint8
    assert np.abs(hot.astype(int) - base).sum() > np.abs(cold.astype(int) - base).sum()
    boxed = draw_box(base, (5, 5, 15, 15))
    assert tuple(boxed[5, 10]) == (0, 255, 120) and tuple(boxed[10, 10]) == (100, 100, 100)


def test_report_renders_in_headless_chromium(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(sample_report(), encoding="utf-8")
    shot = tmp_path / "report.png"
    dom = render_in_browser(chromium, page, tmp_path, screenshot=shot)
    assert_all_images_loaded(dom, expected=12)
    with Image.open(shot) as img:
        assert img.size[0] == 1280 and np.asarray(img.convert("L")).std() > 10  # not blank


def test_a_broken_picture_is_caught_by_the_loaded_flag(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    html = sample_report().replace("data:image/jpeg;base64,", "data:image/jpeg;base64,AAAA", 1)
    page.write_text(html, encoding="utf-8")
    dom = render_in_browser(chromium, page, tmp_path)
    assert 'data-loaded="false"' in re.search(r"<body[^>]*>", dom).group(0)


def headline_summary(blend_low: float) -> pd.DataFrame:
    """Overall accuracy: the full image 0.70, blend 0.80 (gain CI low ``blend_low``) and
    crop+global 0.75 (gain +0.05 [0.01, 0.09])."""
    def row(section: str, method: str, variant: str, statistic: str, value: float,
            low: float = float("nan"), high: float = float("nan")) -> dict:
        return {"section": section, "group_by": "overall", "group_value": "", "method": method,
                "variant": variant, "statistic": statistic, "value": value, "ci_low": low,
                "ci_high": high, "n": 100}

    return pd.DataFrame([
        {**row("run", "", "", "images", 100)}, {**row("run", "", "", "labelled", 100)},
        row("accuracy", "none", "global", "top1", 0.70, 0.6, 0.8),
        row("accuracy", "scd", "blend", "top1", 0.80, 0.7, 0.9),
        row("accuracy", "scd", "crop+global", "top1", 0.75, 0.65, 0.85),
        row("accuracy_gain", "scd", "blend", "top1_gain", 0.10, blend_low, 0.2),
        row("accuracy_gain", "scd", "crop+global", "top1_gain", 0.05, 0.01, 0.09),
    ])


def test_the_headline_quotes_only_a_gain_whose_ci_lies_above_zero() -> None:
    sure = headline(headline_summary(blend_low=0.02))
    assert "scd / blend" in sure and "CI above zero" in sure
    noisy = headline(headline_summary(blend_low=-0.01))  # the best top-1 is noise: not quoted
    assert "scd / crop+global" in noisy and "blend" not in noisy
    none = headline(headline_summary(blend_low=-0.01).query("variant != 'crop+global'"))
    assert "no re-classification gains with a CI above zero" in none and "scd / blend" in none
