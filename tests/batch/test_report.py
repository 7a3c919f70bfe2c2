"""``report.html``: content, escaping, self-containment, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.batch.output_folder import COUNT_COLUMNS
from pipeline.batch.report import HEADLESS_CHROMIUM_FLAGS, flagged_first, render_report, short_name
from pipeline.files.io import encode_png
from pipeline.method.overlay import thumbnail

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Cells(HTMLParser):
    """Text of the cells of ``<table id="counts">``, row by row, and of ``#n-*`` figures."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.figures: dict[str, str] = {}
        self._in_table = self._in_cell = False
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "counts":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._in_cell = True
            self.rows[-1].append("")
        elif (attrs.get("id") or "").startswith("n-"):
            self._figure = attrs["id"]

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th"):
            self._in_cell = False
        self._figure = None

    def handle_data(self, data):
        if self._in_cell:
            self.rows[-1][-1] += data
        elif self._figure:
            self.figures[self._figure] = data


def sample_report(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    counts = pd.DataFrame(
        {
            "image": ["alpha", "beta", "<gamma>"],
            "source": ["in/alpha.png", "in/beta.tif", "in/<gamma>.png"],
            "count": pd.array([17, 0, None], dtype="Int64"),
            "median_area_px": [212.5, 0.0, np.nan],
            "status": ["ok", "ok", "failed"],
            "error": [None, None, "in/<gamma>.png: not an image file"],
        }
    )
    rng = np.random.default_rng(0)
    areas = rng.lognormal(5, 0.4, 17)
    picture = np.zeros((300, 400, 3), np.uint8)
    picture[100:200, 150:250] = (255, 127, 14)
    thumbs = {name: encode_png(thumbnail(picture, 120)) for name in ("alpha", "beta")}
    return write_report(tmp_path, counts, areas, thumbs, info={"model": "pipeline/shipped/model"})


def write_report(tmp_path: Path, counts: pd.DataFrame, *args, **kwargs) -> tuple[Path, pd.DataFrame]:
    """``report.html`` of :func:`render_report` ``(counts, *args, **kwargs)`` in ``tmp_path``, and ``counts``."""
    path = tmp_path / "report.html"
    path.write_text(render_report(counts, *args, **kwargs))
    return path, counts


def test_report_content(tmp_path):
    path, _ = sample_report(tmp_path)
    html = path.read_text()
    cells = _Cells()
    cells.feed(html)
    assert cells.rows[0] == ["image", "count", "median_area_px", "flag", ""]
    assert cells.rows[1] == ["<gamma>", "", "", "failed: in/<gamma>.png: not an image file", ""]  # failed first
    assert cells.rows[2] == ["alpha", "17", "212.5", "", ""]
    assert cells.figures == {"n-images": "2", "n-nuclei": "17", "n-flagged": "0", "n-failed": "1"}
    assert "<gamma>" not in html.replace("&lt;gamma&gt;", "")  # names are escaped
    assert html.count('<tr class="failed">') == 1
    assert "<svg" in html and "nucleus area (px)" in html
    thumbs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(thumbs) == 2
    assert Image.open(io.BytesIO(base64.b64decode(thumbs[0]))).size == (120, 90)
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\((?!#)|@import""", html)


def test_report_shows_diameter_and_flag(tmp_path):
    counts = pd.DataFrame({
        "image": ["alpha", "beta"], "count": [5, 3], "status": ["ok", "ok"],
        "diameter_px": [18.25, 40.0], "diameter_estimated": [True, False],
        "flag": ["", "bright-field image (grey, bright background): counts unreliable, check the overlay"],
    })
    picture = np.zeros((30, 40, 3), np.uint8)
    thumbs = {name: encode_png(thumbnail(picture, 20)) for name in ("alpha", "beta")}
    html = render_report(counts, np.array([10.0, 20.0]), thumbs)
    assert "diameter 18.2 px (estimated)" in html and "diameter 40.0 px (given)" in html
    assert html.count('class="warn"') == 2 and "bright-field image" in html  # in the table and the gallery


def test_flagged_images_are_listed_first_in_the_table_and_the_gallery():
    """The rows to check lead: failed images, then flagged ones, then the rest, each in run order."""
    counts = pd.DataFrame({
        "image": ["a", "b", "c", "d", "e"], "count": pd.array([5, 3, None, 7, 2], "Int64"),
        "status": ["ok", "ok", "failed", "ok", "ok"],
        "flag": ["", "low confidence (0.70 < 0.78): check the overlay", None, "", "out of focus"],
    })
    assert flagged_first(counts)["image"].tolist() == ["c", "b", "e", "a", "d"]
    picture = np.zeros((30, 40, 3), np.uint8)
    thumbs = {name: encode_png(thumbnail(picture, 20)) for name in "abde"}
    html = render_report(counts, np.array([10.0]), thumbs)
    cells = _Cells()
    cells.feed(html)
    assert [row[0] for row in cells.rows[1:]] == ["c", "b", "e", "a", "d"]
    assert cells.figures["n-flagged"] == "2"
    assert [html.index(f'alt="{n}"') for n in "bead"] == sorted(html.index(f'alt="{n}"') for n in "bead")


def test_report_without_nuclei_or_images(tmp_path):
    counts = pd.DataFrame({"image": ["x"], "count": pd.array([None], "Int64"), "status": ["failed"]})
    html = render_report(counts, np.array([]), {}, pixel_size=0.3)
    assert "No nuclei found." in html and "No overlays." in html and "0.3 µm" in html


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [*HEADLESS_CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    path, counts = sample_report(tmp_path)
    dom = _chromium(tmp_path, "--dump-dom", path.as_uri()).stdout
    cells = _Cells()
    cells.feed(dom)
    shown = {row[0]: row[1] for row in cells.rows[1:]}
    assert shown == {"alpha": "17", "beta": "0", "<gamma>": ""}
    assert cells.figures["n-nuclei"] == "17"

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,1400", path.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1400, 1000)
    assert (pixels.sum(axis=2) < 200).mean() > 0.001  # dark text was drawn
    orange = (abs(pixels - (255, 127, 14)).sum(axis=2) < 30).sum()
    assert orange > 2 * 25 * 25  # both thumbnails (a 30 x 30 px orange square each) are shown


def test_every_measured_channel_has_its_histogram_and_only_called_ones_a_threshold():
    """Each measured channel's nucleus means get a histogram; the threshold line and the fraction
    positive only where the channel was called (--positive), one line per image's threshold."""
    counts = pd.DataFrame({"image": ["a", "b"], "count": [60, 40], "status": ["ok", "ok"],
                           "threshold_EdU": [300.0, 310.0], "n_positive_EdU": [20, 10]})
    rng = np.random.default_rng(1)
    channels = {"DAPI": rng.normal(3000, 200, 100), "EdU": np.concatenate([rng.normal(200, 20, 70),
                                                                             rng.normal(800, 50, 30)]),
                "GFP": rng.lognormal(5, 1, 100)}
    html = render_report(counts, np.full(100, 50.0), {}, channels=channels)
    assert "<h2>Channels</h2>" in html
    sections = dict(re.findall(r'<h3 id="channel-(\w+)">.*?(<svg.*?</svg>)', html, re.S))
    assert sorted(sections) == ["DAPI", "EdU", "GFP"]
    threshold_colour = "#d62728"
    assert threshold_colour in sections["EdU"] and "2 thresholds (one per image)" in sections["EdU"]
    for key in ("DAPI", "GFP"):
        assert threshold_colour not in sections[key] and "threshold" not in sections[key]
    assert "30.0% positive (30 of 100 nuclei called)" in html and html.count("positive (") == 1
    assert "<h2>Channels</h2>" not in render_report(counts, np.full(3, 5.0), {})  # no channel measured


def test_long_names_are_shortened_in_the_middle():
    name = "very_long_prefix_of_an_acquisition_2024-05-01_well_B07_field_0012_s3_p17"
    short = short_name(name, 25)
    assert len(short) == 25 and short.startswith("very_long_pr") and short.endswith("_s3_p17")
    assert short_name("cells_1", 25) == "cells_1"


def wide_report(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A report as a laptop sees the worst of it: long names, long flags, every counts.csv column
    and a few measured channels' columns."""
    rng = np.random.default_rng(2)
    n = 8
    names = [f"{'plate_2024-05-01_experiment_with_a_very_long_name_' * 2}well_B{k:02d}_s1_p{k}" for k in range(n)]
    flag = ("low confidence (0.61 < 0.78): check the overlay; bright-field image (grey, bright background): "
            "counts unreliable, check the overlay; threshold_Ki_67: no threshold (the channel is constant, "
            "1234 everywhere); spots_gH2AX: channel gH2AX is constant (0), no spots counted")
    counts = pd.DataFrame({column: [None] * n for column in COUNT_COLUMNS})
    counts = counts.assign(
        image=names, source=[f"/data/in/{name}.tif" for name in names], series=1, plane=range(n), height=2048,
        width=2048, pixel_type="uint16", pixel_size_um=0.325, orientation="EXIF 6: turned 90° clockwise",
        count=rng.integers(100, 100_000, n), median_area_px=rng.uniform(50, 500, n), median_area_um2=20.5,
        image_type="fluorescence", diameter_px=18.25, diameter_estimated=True, scale=0.8123, confidence=0.612,
        flag=[flag if k % 2 else "" for k in range(n)], status="ok", labels_file="labels/x.tif",
        labels_source=[f"/data/some/where/else/labels/{name}_cp_masks.tif" for name in names],
        **{f"{stat}_{key}": rng.uniform(0, 1000, n) for stat in ("median", "threshold", "n_positive",
                                                                    "fraction_positive", "background", "noise")
           for key in ("DAPI", "Ki_67", "gH2AX")},
    )
    counts.loc[n - 1, ["count", "median_area_px", "median_area_um2", "flag", "status", "error"]] = (
        None, None, None, "", "failed", f"/data/in/{names[-1]}.tif: {'not an image file, ' * 8}")
    counts = counts.astype({c: "Int64" for c in ("series", "plane", "height", "width", "count")})  # as written
    picture = np.zeros((300, 400, 3), np.uint8)
    thumbs = {name: encode_png(thumbnail(picture, 60)) for name in names[:-1]}
    return write_report(tmp_path, counts, rng.lognormal(5, 0.4, 500), thumbs, pixel_size=0.325,
                        info={"model": "/a/long/path/" * 20})


def test_the_table_leads_with_count_area_and_flag_and_folds_the_rest(tmp_path):
    path, counts = wide_report(tmp_path)
    html = path.read_text()
    cells = _Cells()
    cells.feed(html)
    assert cells.rows[0] == ["image", "count", "median_area_um2", "flag", ""]
    first = next(row for row in cells.rows[1:] if row[0] == short_name(counts["image"].iloc[0]))  # unflagged: after
    assert first[0] == short_name(counts["image"].iloc[0]) and first[1] == str(counts["count"].iloc[0])
    assert first[2] == "20.5" and first[3] == "" and first[4].startswith("more")
    assert "pixel_typeuint16" in first[4] and "pixel_size_um0.325" in first[4] and "scale0.8123" in first[4]
    assert "/data/in/" not in first[4] and "labels_file" not in first[4]  # as before: no source, no files
    (folded,) = re.findall(r'<tr><td class="name".*?</tr>', html)[:1]
    assert folded.index("<details class=\"more\">") < folded.index("<dt>series</dt>")  # folded away
    assert 'href="#overlay-0"' in folded and '<figure id="overlay-0">' in html  # the name links its overlay


#: Measures the page where it lies (Chromium runs it; the report itself has no script): the
#: viewport, the page's width and, per row of the table, each cell's left, right and height.
_MEASURE = """<script>
const cells = [...document.querySelectorAll('#counts tbody tr')].map(
  tr => [...tr.cells].map(td => { const r = td.getBoundingClientRect(); return [r.left, r.right, r.height]; }));
const out = document.createElement('pre');
out.id = 'layout';
out.textContent = JSON.stringify({viewport: document.documentElement.clientWidth, inner: window.innerWidth,
                                  page: document.documentElement.scrollWidth, cells: cells});
document.body.append(out);
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_counts_and_flags_fit_a_laptop_screen_in_chromium(tmp_path):
    """At 1366 x 768 the page has no horizontal scroll, each row's count and flag lie within the
    viewport, and a flagged row stays compact (its flag clamped, the full text still in the page)."""
    path, counts = wide_report(tmp_path)
    html = path.read_text()
    assert "<script" not in html  # the report has none: the test adds its own
    flag = counts["flag"].iloc[1]
    assert f'title="{escape(flag)}"' in html  # the full flag, as tooltip and text
    assert all(f'title="{escape(name)}"' in html for name in counts["image"])  # the full names too
    path.write_text(html.replace("</body>", f"{_MEASURE}</body>"))
    dom = _chromium(tmp_path, "--window-size=1366,768", "--dump-dom", path.as_uri()).stdout
    layout = json.loads(unescape(re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S).group(1)))
    assert layout["inner"] == 1366
    assert layout["page"] <= layout["viewport"], layout  # no horizontal scroll
    rows = layout["cells"]
    assert len(rows) == len(counts)
    for left, right, _ in (cell for row in rows for cell in row[1:4]):  # count, median area, flag
        assert 0 <= left < right <= layout["viewport"]
    heights = [row[0][2] for row in rows]
    assert max(heights[1:-1:2]) < 2.5 * min(heights[0:-1:2])  # flagged rows: at most about 2 lines
    assert heights[-1] < 2.5 * heights[0]  # the failed row's long error too
