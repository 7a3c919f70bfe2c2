"""The plugin's dock widgets: "Segment nuclei" and "Fine-tune on these labels" (magicgui, Qt).

Both run their work in a napari worker thread (the window stays responsive) and report
progress in their own progress bar and in napari's activity dock; a problem is one line in the
widget's status, never a traceback. A model that "Fine-tune" saves is offered by every "Segment"
widget (:data:`MODELS`).

Must not: segment, measure or train (:mod:`pipeline.napari_plugin.layers`,
:func:`pipeline.training.finetune.finetune` do).
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import napari.layers
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.qt.threading import thread_worker
from psygnal import Signal

from pipeline.config.params import TTA_MODES
from pipeline.errors import NucleiError, one_line
from pipeline.model.model_dir import available_model_dir
from pipeline.napari_plugin.layers import get_segmenter, image_array, result_layers, segment_array, summary
from pipeline.shipped import DEFAULT_MODEL, model_folder

#: Value of the model choice "a model folder…" (the folder field then says which).
FOLDER = "folder"
#: Resolution of the fine-tune progress bar.
PROGRESS_STEPS = 1000


class _Models:
    """Model folders saved by "Fine-tune" in this session (offered by "Segment")."""

    changed = Signal()

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, path: str | Path) -> None:
        path = Path(path)
        if path not in self.paths:
            self.paths.append(path)
        self.changed.emit()


MODELS = _Models()


def model_choices(widget: Any = None) -> list[tuple[str, str]]:
    """(text, value) of the model menu: the shipped model, this session's fine-tuned ones, a folder."""
    choices = []
    shipped = available_model_dir()
    if shipped is not None:
        name = "shipped" if shipped == model_folder(DEFAULT_MODEL) else f"last trained ({shipped})"
        choices.append((name, str(shipped)))
    choices += [(f"fine-tuned: {path.name}", str(path)) for path in reversed(MODELS.paths)]
    choices.append(("a model folder…", FOLDER))
    return choices


class _Panel(Container):
    """What both widgets share: the viewer, layer menus kept up to date, a model menu with its
    folder field, a run button, a progress bar and a one-line status."""

    def __init__(self, napari_viewer, button: str):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None  #: the running (or last) worker, for tests and callers to wait on
        self.run_button = PushButton(text=button)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        self.run_button.changed.connect(self.run)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.reset_choices)

    def layer_menu(self, label: str, kind: type) -> ComboBox:
        def choices(widget: Any = None) -> list[tuple[str, Any]]:
            return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]

        return ComboBox(label=label, choices=choices)

    def model_menu(self, label: str) -> tuple[ComboBox, FileEdit]:
        menu = ComboBox(label=label, choices=model_choices)
        folder = FileEdit(label=f"{label} folder", mode="d", visible=menu.value == FOLDER)
        menu.changed.connect(lambda value: setattr(folder, "visible", value == FOLDER))
        def refresh() -> None:
            try:
                menu.reset_choices()
            except RuntimeError:  # its Qt widget is gone (a closed dock widget): nothing to refresh
                pass

        MODELS.changed.connect(refresh)
        return menu, folder

    @staticmethod
    def chosen_model(menu: ComboBox, folder: FileEdit) -> Path:
        """The model folder chosen; NucleiError if it holds no model."""
        path = Path(folder.value) if menu.value == FOLDER else Path(menu.value)
        if not (path / "config.yaml").is_file():
            raise NucleiError(f"{path}: not a model folder (no config.yaml)")
        return path

    def say(self, text: str) -> None:
        self.status.value = text

    def start(self, worker) -> None:
        """Run ``worker``: the button is disabled until it finishes; errors go to the status."""
        self.worker = worker
        self.run_button.enabled = False
        worker.errored.connect(lambda exc: self.say(f"error: {exc if isinstance(exc, NucleiError) else one_line(exc)}"))
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        worker.start()

    def run(self, *_: Any) -> None:  # pragma: no cover - each widget defines it
        raise NotImplementedError


class SegmentWidget(_Panel):
    """"Segment nuclei": an image layer → a Labels layer of its nuclei and a Points layer of their
    centroids (named with the count), as ``nuclei segment`` would segment the image."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, "Segment")
        self.image = self.layer_menu("image", napari.layers.Image)
        self.model, self.folder = self.model_menu("model")
        self.estimate = CheckBox(text="estimate the nucleus diameter", value=True)
        self.diameter = FloatSpinBox(label="diameter (px)", value=20.0, min=2.0, max=1000.0, step=0.5, enabled=False)
        self.estimate.changed.connect(lambda value: setattr(self.diameter, "enabled", not value))
        self.tta = ComboBox(label="TTA", choices=TTA_MODES, value="auto")
        self.progress.max = 2
        self.extend([self.image, self.model, self.folder, self.estimate, self.diameter, self.tta,
                     self.run_button, self.progress, self.status])
        self._added: dict[str, list] = {}  # image layer name → the layers its last run added

    def run(self, *_: Any) -> None:
        layer = self.image.value
        if layer is None:
            self.say("add or open an image first")
            return
        try:
            array = image_array(layer.data, layer.rgb, layer.name)
            model = self.chosen_model(self.model, self.folder)
        except NucleiError as exc:
            self.say(f"error: {exc}")
            return
        diameter = None if self.estimate.value else float(self.diameter.value)
        self.progress.value = 0
        worker = _segment_steps(array, model, diameter, self.tta.value)
        worker.yielded.connect(self._step)
        worker.returned.connect(lambda out: self._show(layer, *out))
        self.start(worker)

    def _step(self, step: tuple[int, str]) -> None:
        self.progress.value, text = step
        self.say(text)

    def _show(self, layer, result, table) -> None:
        for old in self._added.pop(layer.name, []):
            if old in self.viewer.layers:
                self.viewer.layers.remove(old)
        added = []
        for data, meta, kind in result_layers(layer.name, result, table, scale=layer.scale, translate=layer.translate):
            added.append(getattr(self.viewer, f"add_{kind}")(data, **meta))
        self._added[layer.name] = added
        self.progress.value = self.progress.max
        self.say(summary(result, table))


@thread_worker(progress={"total": 2, "desc": "Segment nuclei"}, ignore_errors=True)  # errors: the status line
def _segment_steps(array, model: Path, diameter: float | None, tta: str):
    """Load the model (once per session), then segment and measure; yields (step, what)."""
    yield 0, f"loading {model.name}…"
    get_segmenter(model, tta)
    yield 1, "segmenting…"
    return segment_array(array, model, diameter, tta)


class FinetuneWidget(_Panel):
    """"Fine-tune on these labels": an image layer and the Labels layer the user corrected → a
    fine-tuned model folder (:func:`pipeline.training.finetune.finetune`), then offered by "Segment nuclei"."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, "Fine-tune")
        self.image = self.layer_menu("image", napari.layers.Image)
        self.labels = self.layer_menu("labels", napari.layers.Labels)
        self.base, self.base_folder = self.model_menu("start from")
        self.minutes = SpinBox(label="minutes (0: default)", value=0, min=0, max=600)
        default = Path.home() / "nuclei-models" / time.strftime("finetuned-%Y%m%d-%H%M")
        self.out = FileEdit(label="save to", mode="d", value=default)
        self.progress.max = PROGRESS_STEPS
        self.extend([self.image, self.labels, self.base, self.base_folder, self.minutes, self.out,
                     self.run_button, self.progress, self.status])

    def run(self, *_: Any) -> None:
        try:
            from pipeline.training.finetune import finetune
        except ImportError as exc:
            self.say(f"error: fine-tuning is not available in this installation ({exc})")
            return
        image, labels = self.image.value, self.labels.value
        if image is None or labels is None:
            self.say("choose an image layer and the Labels layer you corrected")
            return
        try:
            array = image_array(image.data, image.rgb, image.name)
            mask = image_array(labels.data, False, labels.name)
            if mask.shape != array.shape[:2]:
                raise NucleiError(f"{labels.name}: {mask.shape[1]}x{mask.shape[0]} px, but {image.name} is "
                                  f"{array.shape[1]}x{array.shape[0]} px")
            base = self.chosen_model(self.base, self.base_folder)
        except NucleiError as exc:
            self.say(f"error: {exc}")
            return
        minutes = float(self.minutes.value) or None
        self.progress.value = 0
        self.say("fine-tuning…")
        worker = _finetune_steps(finetune, [array], [mask.copy()], base, minutes, Path(self.out.value))
        worker.yielded.connect(self._step)
        worker.returned.connect(self._saved)
        self.start(worker)

    def _step(self, fraction: float | None) -> None:
        if fraction is not None:
            self.progress.value = round(min(max(fraction, 0.0), 1.0) * PROGRESS_STEPS)

    def _saved(self, path) -> None:
        MODELS.add(path)
        self.progress.value = PROGRESS_STEPS
        self.say(f"saved {path}: choose 'fine-tuned: {Path(path).name}' in Segment nuclei")


def progress_fraction(*args: Any, **kwargs: Any) -> float | None:
    """The fraction done that a progress callback reports: ``(done, total)``, ``(fraction,)`` or
    keywords ``done``/``total``/``fraction``; None when it says none."""
    if "fraction" in kwargs:
        return float(kwargs["fraction"])
    done, total = kwargs.get("done", args[0] if args else None), kwargs.get("total", args[1] if len(args) > 1 else None)
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        return done / total
    if isinstance(done, float) and (total is None or isinstance(total, str)) and 0 <= done <= 1:  # (fraction, message)
        return done
    return None


@thread_worker(progress={"desc": "Fine-tune"}, ignore_errors=True)  # errors: the status line
def _finetune_steps(finetune, images, labels, base: Path, minutes: float | None, out: Path):
    """Run ``finetune`` in a thread of its own; yields its progress fractions, returns its folder."""
    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["path"] = finetune(images, labels, base=base, minutes=minutes, out=out,
                                       progress=lambda *a, **k: reports.put(progress_fraction(*a, **k)))
        except BaseException as exc:  # handed to the worker's thread, which raises it
            outcome["error"] = exc
        finally:
            reports.put(StopIteration)

    thread = threading.Thread(target=work, name="nuclei-finetune", daemon=True)
    thread.start()
    while (report := reports.get()) is not StopIteration:
        yield report
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return Path(outcome["path"])
