"""The napari plugin, headless (``QT_QPA_PLATFORM=offscreen``, pytest-qt).

The widgets are real Qt widgets on a real napari viewer model (``napari.components.ViewerModel``:
the viewer without its OpenGL canvas, which an offscreen Qt has no context for); the plugin is
found through its ``napari.manifest`` entry point and checked by npe2's own validation.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import numpy as np
import pytest
from PIL import Image

napari = pytest.importorskip("napari", reason="the napari extra is not installed: pip install -e '.[napari]'")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (make install adds it)")

from napari.components import ViewerModel  # noqa: E402

from pipeline.batch.segment import segment_images  # noqa: E402
from pipeline.files.io import read_labels  # noqa: E402
from pipeline.model.model_dir import available_model_dir  # noqa: E402
from pipeline.napari_plugin import widgets  # noqa: E402
from pipeline.napari_plugin.layers import get_reader  # noqa: E402

from ..conftest import ROOT, disks  # noqa: E402

PLUGIN = "nuclei-pipeline"
MANIFEST = ROOT / "pipeline" / "napari_plugin" / "napari.yaml"


@pytest.fixture(scope="module")
def plugin() -> str:
    """The plugin registered with npe2: through its entry point once installed (``make install``;
    :func:`test_entry_point_finds_the_manifest` checks that), else from the manifest file."""
    import npe2

    manager = npe2.PluginManager.instance()
    manager.discover()
    try:
        manager.get_manifest(PLUGIN)
    except KeyError:
        manager.register(npe2.PluginManifest.from_file(MANIFEST))
    return PLUGIN


@pytest.fixture
def viewer(qtbot, plugin):
    model = ViewerModel()
    yield model
    model.layers.clear()


def wait_for(qtbot, panel, timeout_s: float = 180) -> None:
    """Wait until the widget's worker has finished (its button is enabled again)."""
    qtbot.waitUntil(lambda: panel.worker is not None and panel.run_button.enabled, timeout=int(timeout_s * 1000))


# --------------------------------------------------------------------------- manifest


@pytest.mark.parametrize("target", [PLUGIN, str(MANIFEST)])
def test_npe2_validate_passes(target):
    """``npe2 validate --imports``, napari's own plugin check (in this process: napari is loaded
    already), of the installed plugin and of the manifest file."""
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", target, "--imports"])
    assert result.exit_code == 0 and "valid!" in result.output, result.output


def test_entry_point_finds_the_manifest():
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["napari.manifest"]
    module, _, resource = entry[PLUGIN].partition(":")
    assert ROOT.joinpath(*module.split("."), resource) == MANIFEST

    import npe2

    manager = npe2.PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest(PLUGIN)  # found through the installed entry point
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment nuclei", "Fine-tune on these labels"}
    assert manifest.contributions.readers and manifest.contributions.sample_data


# --------------------------------------------------------------------------- Segment nuclei


def test_segment_widget_adds_the_nuclei_of_nuclei_segment(qtbot, viewer, tmp_path):
    """Open the plugin's sample (a 256² fluorescence image), run the widget with the shipped
    model: its Labels layer is what ``nuclei segment`` writes for the same image."""
    model = available_model_dir()
    assert model is not None, "the shipped model pipeline/shipped/model is missing"
    viewer.open_sample(PLUGIN, "fluorescence")
    image = viewer.layers["nuclei sample"]
    panel = widgets.SegmentWidget(viewer)
    qtbot.addWidget(panel.native)
    assert panel.image.value is image and panel.model.value == str(model)
    panel.tta.value = "none"
    panel.run()
    wait_for(qtbot, panel)

    source = next(ROOT.glob("data/sample/stage1_train/4185b9369f*/images/*.png"))
    counts = segment_images([source], tmp_path, model, "auto", tta="none").set_index("image")
    expected = read_labels(tmp_path / "labels" / f"{source.stem}.tif")
    n = int(counts.loc[source.stem, "count"])

    labels = viewer.layers["nuclei sample nuclei"]
    assert isinstance(labels, napari.layers.Labels)
    np.testing.assert_array_equal(labels.data, expected)
    assert len(np.unique(labels.data)) - 1 == n
    truth = len(list(source.parent.parent.glob("masks/*.png")))
    assert abs(n - truth) <= 0.2 * truth  # the sample's 48 annotated nuclei, within 20 %
    points = viewer.layers[f"nuclei sample centroids ({n})"]
    assert isinstance(points, napari.layers.Points) and len(points.data) == n
    assert set(points.features["label"]) == set(np.unique(expected)) - {0}
    assert panel.status.value.startswith(f"{n} nuclei · diameter") and panel.progress.value == panel.progress.max

    panel.run()  # a second run replaces the layers of the first
    wait_for(qtbot, panel)
    assert [layer.name for layer in viewer.layers] == ["nuclei sample", "nuclei sample nuclei", points.name]


def test_segment_widget_refuses_bad_inputs_in_one_line(qtbot, viewer, tmp_path):
    panel = widgets.SegmentWidget(viewer)
    qtbot.addWidget(panel.native)
    panel.run()
    assert panel.status.value == "add or open an image first"
    viewer.add_image(np.zeros((3, 32, 32), np.uint8), name="stack")
    assert panel.image.value is viewer.layers["stack"]  # the menu follows the layer list
    panel.run()
    assert panel.status.value == "error: stack: a 2-D image is needed (grey or RGB), got shape (3, 32, 32)"
    viewer.add_image(np.zeros((32, 32), np.uint8), name="flat")
    panel.image.value = viewer.layers["flat"]
    panel.model.value = widgets.FOLDER
    assert not panel.folder.native.isHidden()  # the folder field shows
    panel.folder.value = tmp_path
    panel.run()
    assert panel.status.value == f"error: {tmp_path}: not a model folder (no config.yaml)"
    assert panel.worker is None and len(viewer.layers) == 2
    (tmp_path / "config.yaml").write_text("format_version: 1\n")  # a broken model: fails in the worker
    panel.run()
    wait_for(qtbot, panel)
    assert panel.status.value == f"error: {tmp_path / 'config.yaml'}: no 'model' section"
    assert len(viewer.layers) == 2


# --------------------------------------------------------------------------- reader


def test_reader_opens_a_segment_output_folder(viewer, tmp_path, model_dir):  # noqa: F811
    for name, centres in (("a", ((30, 30), (60, 90))), ("b", ((25, 100),))):
        Image.fromarray(disks(centres=centres)[0]).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    segment_images([tmp_path / "a.png", tmp_path / "b.png"], out, model_dir, "cpu")
    assert get_reader(str(tmp_path)) is None and get_reader(str(out)) is not None

    viewer.open(str(out), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == ["a", "a nuclei", "b", "b nuclei"]
    for name, count in (("a", 2), ("b", 1)):
        assert isinstance(viewer.layers[name], napari.layers.Image)
        np.testing.assert_array_equal(viewer.layers[name].data, np.asarray(Image.open(tmp_path / f"{name}.png")))
        labels = viewer.layers[f"{name} nuclei"].data
        np.testing.assert_array_equal(labels, read_labels(out / "labels" / f"{name}.tif"))
        assert labels.max() == count
        features = viewer.layers[f"{name} nuclei"].features  # nuclei.csv's rows, shown under the pointer
        assert sorted(features["index"]) == list(range(1, count + 1))
        assert {"area_px", "mean_intensity", "confidence"} <= set(features.columns)


def test_reader_shows_every_channel_and_the_new_columns(viewer, tmp_path, model_dir):  # noqa: F811
    from pipeline.batch.settings import MeasureOptions

    from ..conftest import MARKER_KEYS, marker_field, write_ome

    write_ome(tmp_path / "field.tif", marker_field(shape=(96, 128), seed=1)[0])
    out = tmp_path / "out"
    segment_images([tmp_path / "field.tif"], out, model_dir, "cpu",
                   measure=MeasureOptions(nuclear_channel="DAPI", positive=(("Ki-67", 350.0),), spots=("gH2AX",)))
    viewer.open(str(out), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == [*(f"field {key}" for key in MARKER_KEYS), "field nuclei"]
    features = viewer.layers["field nuclei"].features
    assert {"mean_Ki_67", "positive_Ki_67", "spots_gH2AX", "confidence"} <= set(features.columns)


# --------------------------------------------------------------------------- Fine-tune


def test_finetune_widget_saves_a_model_the_segment_widget_offers(qtbot, viewer, tmp_path):
    pytest.importorskip(
        "pipeline.training.finetune", reason="pipeline.training.finetune (issue 37, nuclei finetune) is not in this checkout yet"
    )
    from pipeline.data.kaggle import read_kaggle_sample

    sample = next(ROOT.glob("data/sample/stage1_train/4185b9369f*"))
    image, labels = read_kaggle_sample(sample)
    viewer.add_image(image, name="cells", rgb=True)
    viewer.add_labels(labels, name="corrected")
    panel = widgets.FinetuneWidget(viewer)
    qtbot.addWidget(panel.native)
    segment = widgets.SegmentWidget(viewer)
    qtbot.addWidget(segment.native)
    assert panel.image.value.name == "cells" and panel.labels.value.name == "corrected"
    panel.minutes.value = 1
    panel.out.value = tmp_path / "mine"
    panel.run()
    wait_for(qtbot, panel, timeout_s=400)
    assert panel.status.value.startswith(f"saved {tmp_path / 'mine'}"), panel.status.value
    assert (tmp_path / "mine" / "config.yaml").is_file()
    assert str(tmp_path / "mine") in segment.model.choices  # "Segment nuclei" offers it


def test_progress_fractions_of_a_callback():
    assert widgets.progress_fraction(3, 4) == 0.75
    assert widgets.progress_fraction(0.5) == 0.5
    assert widgets.progress_fraction(0.25, "validation run 1/2") == 0.25  # pipeline.training.finetune's (fraction, message)
    assert widgets.progress_fraction(done=1, total=8) == 0.125
    assert widgets.progress_fraction(fraction=0.2) == 0.2
    assert widgets.progress_fraction() is None and widgets.progress_fraction("loss 0.3") is None


def test_finetune_worker_relays_progress_result_and_errors(qtbot, tmp_path):
    """The worker thread around ``finetune``: progress reports arrive in order, the folder comes
    back, and an error raised inside reaches the widget's error handler (any callable with
    finetune's signature; the real one is exercised by the test above)."""

    def train(images, labels, base=None, minutes=None, out=None, progress=None):
        assert images[0].shape == (4, 4) and base == tmp_path and minutes == 0.5
        for step in range(1, 4):
            progress(step, 3)
        if out.name == "bad":
            raise ValueError("diverged")
        return out

    seen: list = []
    worker = widgets._finetune_steps(train, [np.zeros((4, 4))], [np.zeros((4, 4), int)], tmp_path, 0.5, tmp_path / "ok")
    worker.yielded.connect(seen.append)
    with qtbot.waitSignal(worker.returned, timeout=10_000) as returned:
        worker.start()
    assert returned.args == [tmp_path / "ok"] and seen == pytest.approx([1 / 3, 2 / 3, 1.0])

    worker = widgets._finetune_steps(train, [np.zeros((4, 4))], [np.zeros((4, 4), int)], tmp_path, 0.5, tmp_path / "bad")
    with qtbot.waitSignal(worker.errored, timeout=10_000) as errored:
        worker.start()
    assert isinstance(errored.args[0], ValueError) and str(errored.args[0]) == "diverged"


def test_plugin_modules_are_not_imported_by_the_base_package():
    code = "import sys, pipeline.napari_plugin, pipeline.batch.outlines; print(any(m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'magicgui') for m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.stdout.strip() == "False", run.stderr
