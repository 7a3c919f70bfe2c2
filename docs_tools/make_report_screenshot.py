"""Make ``docs/report.png``: a screenshot of a real ``nuclei segment`` report.

Usage::

    python -m docs_tools.make_report_screenshot [--model DIR] [--images 6] [--out docs/report.png]

Segments a few images of the embedded sample (one per image type where possible) with the
shipped model (``pipeline/shipped/model``, else ``models/trained/model``), then renders the report in
headless Chromium (``apt-get install chromium``) and saves the screenshot.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "stage1_train"
#: Sample ids shown (fluorescence small/large, H&E-like tissue, brightfield), by prefix.
PICKS = ("4185b9369f", "958114e5f3", "e49fc2b4f1", "9bb6e39d5f", "76a372bfd3", "b214800de5")


def screenshot(html: Path, png: Path, width: int, height: int) -> None:
    """Render ``html`` with headless Chromium (no network, throw-away profile) into ``png``."""
    from pipeline.batch.report import HEADLESS_CHROMIUM_FLAGS

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *HEADLESS_CHROMIUM_FLAGS,
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                html.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--images", type=int, default=len(PICKS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--size", default="1200x1500", help="browser window WIDTHxHEIGHT in px")
    args = parser.parse_args()

    from pipeline.batch.segment import segment_images
    from pipeline.files.io import atomic_path
    from pipeline.model.model_dir import available_model_dir

    model = args.model or available_model_dir()
    if model is None:
        print(
            "no model: expected pipeline/shipped/model/ or models/trained/model/ (or pass --model)", file=sys.stderr
        )
        return 2
    ids = sorted(d.name for d in SAMPLE.iterdir())
    picked = [i for p in PICKS for i in ids if i.startswith(p)][: args.images]
    images = [SAMPLE / i / "images" / f"{i}.png" for i in picked]
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        counts = segment_images(images, tmp, model, "cpu")
        print(counts[["image", "count", "status"]].to_string(index=False))
        with atomic_path(args.out) as png:
            screenshot(Path(tmp) / "report.html", png, width, height)
    print(f"wrote {args.out} (model {model})")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
