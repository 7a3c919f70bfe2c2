"""Make ``docs/napari.png``: napari with the plugin's "Segment nuclei" widget after a real run.

Usage::

    python -m docs_tools.make_napari_screenshot [--out docs/napari.png] [--size 1400x860]

Opens napari (the ``.[napari]`` extra), the plugin's sample image and the "Segment nuclei" dock
widget through the plugin's manifest, segments with the shipped model and saves a screenshot of
the whole window. napari draws with OpenGL, so it needs a display: without one the script runs
itself again under ``xvfb-run`` (``apt-get install xvfb libxcb-icccm4 libxcb-keysyms1
libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxkbcommon-x11-0``; Mesa's software GL).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "napari.png")
    parser.add_argument("--size", default="1400x860", help="window WIDTHxHEIGHT in px")
    args = parser.parse_args()
    if not os.environ.get("DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            raise SystemExit("no display and no xvfb-run: apt-get install xvfb (see this script's docstring)")
        env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
        this = ["-m", __spec__.name, *sys.argv[1:]] if __spec__ else sys.argv  # again, as it was started
        os.execvpe(xvfb, [xvfb, "-a", "-s", "-screen 0 1920x1200x24", sys.executable, *this], env)

    import napari
    from qtpy.QtWidgets import QApplication

    from pipeline.files.io import atomic_path

    width, height = (int(v) for v in args.size.split("x"))
    viewer = napari.Viewer(title="napari: nuclei-pipeline")
    viewer.window._qt_window.resize(width, height)
    viewer.open_sample("nuclei-pipeline", "fluorescence")
    _, panel = viewer.window.add_plugin_dock_widget("nuclei-pipeline", "Segment nuclei")
    panel.run()
    deadline = time.monotonic() + 300
    while panel.worker is None or not panel.run_button.enabled:
        QApplication.processEvents()
        time.sleep(0.05)
        if time.monotonic() > deadline:
            raise SystemExit("the widget did not finish within 5 minutes")
    viewer.layers.selection.active = viewer.layers[-2]  # the Labels layer: its controls show
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.reset_view()  # the whole image, now that the window has its size
    QApplication.processEvents()
    with atomic_path(args.out) as png:
        viewer.screenshot(str(png), canvas_only=False, flash=False)
    print(f"wrote {args.out}: {panel.status.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
