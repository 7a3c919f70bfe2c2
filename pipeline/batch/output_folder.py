"""The output folder of ``nuclei segment``: output names, file paths, the tables, and removing an image's files.

Owns

- the output name of each input (:func:`output_names`, :func:`unique_name`): unique in the batch
  letter case aside (macOS and Windows file systems ignore it), the same on a rerun, and short
  enough for any file system (:func:`fit_name`);
- the paths in the folder: ``labels/<name>.tif`` (:func:`labels_file`), ``overlays/<name>.png``
  (:func:`overlay_file`), a huge image's ``tables/<name>.csv`` (:func:`slide_table_file`), the cells
  and spots of ``--cell-expansion`` / ``--spots`` (:func:`cells_file`, :func:`spots_file`), every file of
  one image (:func:`image_files`, the exports included) and the tables and report
  (:data:`COUNTS_CSV`, :data:`NUCLEI_CSV`, :data:`COLUMNS_CSV`, :data:`REPORT_HTML`);
- the tables ``counts.csv``, ``nuclei.csv`` and ``columns.csv`` (:class:`Tables`): they list
  exactly the label files present, this run's and those an earlier run left that this run did
  not replace; their columns are the fixed ones (:data:`COUNT_COLUMNS`,
  :func:`pipeline.method.features.measurement_columns`) then those of the images' channels, cells,
  spots and positive calls, in the order they first appear; the ``counts.csv`` row of a segmented
  image (:class:`CountsRow`);
  a slide's nuclei streamed through ``tables/<name>.csv`` (:class:`SlideTable`, :func:`write_nuclei_csv`;
  read and rewritten in chunks, :func:`table_chunks`, :func:`rewrite_table`);
- the removal of a failed image's files (:func:`remove_files`), which never raises.

Must not: segment, read images, or remove files of another input. Other modules spell no path of
the folder and build no ``counts.csv`` row of their own.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.batch.outlines import FORMATS, export_path
from pipeline.files.io import atomic_path, check_writable_folder, encode_png, write_csv, write_png
from pipeline.method.features import column_dictionary, measurement_columns
from pipeline.method.overlay import thumbnail

#: Columns of ``counts.csv`` (``median_area_um2`` only with a pixel size).
COUNT_COLUMNS = (
    "image", "source", "series", "plane", "height", "width", "pixel_type", "pixel_size_um", "orientation", "count",
    "median_area_px", "median_area_um2", "image_type", "diameter_px", "diameter_estimated", "scale",
    "confidence", "count_risk", "flag", "status", "error", "labels_file", "overlay_file",
    *(f.column for f in FORMATS.values()),  # with --export only
)  # fmt: skip
#: Sub-folders of the output folder that hold one file per image: label images, overlays.
LABELS, OVERLAYS = "labels", "overlays"
IMAGE_FOLDERS = (LABELS, OVERLAYS)
#: ... and those of ``--cell-expansion`` (cell label images) and ``--spots`` (one table per image).
CELLS, SPOTS = "cells", "spots"
#: ``counts.csv`` columns naming them (after :data:`COUNT_COLUMNS`, when written).
CELLS_COLUMN, SPOTS_COLUMN = "cells_file", "spots_file"
#: ... and the tracks of a time-lapse (``--track``): ``tracks/<name>.csv`` and TrackMate's ``tracks/<name>.xml``.
TRACKS = "tracks"
TRACKS_COLUMN, TRACKMATE_COLUMN = "tracks_file", "trackmate_file"
#: ... and the one that holds the ``nuclei.csv`` rows of each huge image (:mod:`pipeline.batch.slide`).
SLIDE_TABLES = "tables"
#: The tables and the report of the whole folder.
COUNTS_CSV, NUCLEI_CSV, COLUMNS_CSV, REPORT_HTML = "counts.csv", "nuclei.csv", "columns.csv", "report.html"
#: Longest output name, in UTF-8 bytes: file names are limited to 255 bytes (143 on eCryptfs), and
#: the temporary files of :func:`pipeline.files.io.atomic_path` add ~20; longer names are shortened.
MAX_NAME_BYTES = 120


def warn(message: str) -> None:
    """Print one line of the batch's warnings and errors (``nuclei: <message>``) to stderr, above its
    progress bar."""
    from tqdm import tqdm

    tqdm.write(f"nuclei: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- names


def fit_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """``name``, or when longer than ``limit`` UTF-8 bytes its start followed by ``-`` and 10 hex
    digits of its SHA-1: deterministic, and distinct names stay distinct."""
    data = name.encode("utf-8", "surrogateescape")
    if len(data) <= limit:
        return name
    digest = hashlib.sha1(data).hexdigest()[:10]
    return data[: limit - 11].decode("utf-8", "ignore") + "-" + digest


def unique_name(name: str, taken: set[str]) -> str:
    """``name`` (fitted, :func:`fit_name`), or ``name-2``, ``name-3``, ... when taken (letter
    case aside); the result is added to ``taken`` (a set of casefolded names)."""
    candidate, k = fit_name(name), 1
    while candidate.casefold() in taken:
        k += 1
        candidate = fit_name(f"{name}-{k}")
    taken.add(candidate.casefold())
    return candidate


def output_names(sources: list[Path]) -> list[str]:
    """The output name of each input: unique in the batch letter case aside, and the same on a
    rerun of the same inputs in any order.

    An input's name is its file stem, unless other inputs share that stem (letter case aside):
    then each gets the stem followed by what tells them apart, their file ending and/or as
    many parent folders as needed: ``a/x.png, b/x.png -> x-a, x-b``;
    ``cells.png, cells.tif -> cells-png, cells-tif``; 8 hex digits of the hash of their path when
    only letter case tells them apart (``Cells.png, cells.png``). Should such a name equal another
    input's (``cells-png.png``), that input keeps it and the others add their path's hash. Names
    are shortened by :func:`fit_name`.
    """
    names = [fit_name(source.stem) for source in sources]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        groups[source.stem.casefold()].append(i)
    for members in groups.values():
        if len(members) == 1:
            continue
        paths = [sources[i].absolute() for i in members]
        by_suffix = len({p.suffix.casefold() for p in paths}) > 1
        for depth in range(max(len(p.parts) for p in paths)):
            candidates = []
            for p in paths:
                parts = [re.sub(r"[^\w.+-]", "_", q) for q in p.parent.parts[1:][::-1][:depth][::-1]]
                candidates.append(fit_name("-".join([p.stem, *parts, *([p.suffix[1:]] if by_suffix else [])])))
            if len({c.casefold() for c in candidates}) == len(candidates):
                break
        else:  # equal letter case aside (Cells.png, cells.png): the hash of each path tells them apart
            candidates = [fit_name(f"{p.stem}-{_path_hash(p)}") for p in paths]
        for i, candidate in zip(members, candidates, strict=True):
            names[i] = candidate
    clashes = defaultdict(list)
    for i, name in enumerate(names):
        clashes[name.casefold()].append(i)
    for members in clashes.values():  # a disambiguated name that is another input's plain name
        for i in members if len(members) > 1 else ():
            if names[i] != fit_name(sources[i].stem):
                names[i] = fit_name(f"{names[i]}-{_path_hash(sources[i])}")
    taken: set[str] = set()  # by construction: whatever is still equal (a hash collision) is numbered
    order = sorted(range(len(sources)), key=lambda i: str(sources[i].absolute()))
    unique = dict.fromkeys(order, "")
    for i in order:
        unique[i] = unique_name(names[i], taken)
    return [unique[i] for i in range(len(sources))]


def _path_hash(path: Path) -> str:
    """8 hex digits of the SHA-1 of a file's absolute path."""
    return hashlib.sha1(str(path.absolute()).encode("utf-8", "surrogateescape")).hexdigest()[:8]


# --------------------------------------------------------------------------- paths


def labels_file(name: str) -> str:
    """The label image of output ``name``, relative to the output folder (``labels/<name>.tif``)."""
    return f"{LABELS}/{name}.tif"


def overlay_file(name: str) -> str:
    """The overlay of output ``name``, relative to the output folder (``overlays/<name>.png``)."""
    return f"{OVERLAYS}/{name}.png"


def slide_table_file(name: str) -> str:
    """The nuclei of huge image ``name``, relative to the output folder (``tables/<name>.csv``)."""
    return f"{SLIDE_TABLES}/{name}.csv"


def cells_file(name: str) -> str:
    """The cells grown from the nuclei of output ``name`` (``cells/<name>.tif``)."""
    return f"{CELLS}/{name}.tif"


def spots_file(name: str) -> str:
    """The spots of output ``name`` (``spots/<name>.csv``)."""
    return f"{SPOTS}/{name}.csv"


def tracks_file(name: str) -> str:
    """The tracks of time-lapse ``name`` (``tracks/<name>.csv``)."""
    return f"{TRACKS}/{name}.csv"


def trackmate_file(name: str) -> str:
    """The tracks of time-lapse ``name`` for TrackMate (``tracks/<name>.xml``)."""
    return f"{TRACKS}/{name}.xml"


def image_files(name: str, exports: tuple[str, ...] | None = None) -> list[str]:
    """Every file output ``name`` may have, relative to the output folder: its label image, overlay,
    slide table, cells, spots, tracks and the files of ``exports`` (default: every export format)."""
    formats = tuple(FORMATS) if exports is None else exports
    return [labels_file(name), overlay_file(name), slide_table_file(name), cells_file(name), spots_file(name),
            tracks_file(name), trackmate_file(name), *(export_path(f, name) for f in formats)]


# --------------------------------------------------------------------------- the folder


def check_output_folder(outdir: Path) -> None:
    """Create ``outdir`` and its :data:`IMAGE_FOLDERS`, and check that files can be written there.

    Raises
    ------
    NucleiError
        One line naming the folder: a file stands where a folder is needed (``labels`` a file),
        a name too long, no permission, read-only.
    """
    check_writable_folder(outdir)
    for sub in IMAGE_FOLDERS:
        check_writable_folder(outdir / sub)


#: Temporary files of :func:`pipeline.files.io.atomic_path` (``.<stem>.<8 random>.tmp<suffix>``).
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.\w+)?$")


def remove_leftovers(outdir: Path) -> list[str]:
    """Remove the temporary files a killed run left in ``outdir``, its :data:`IMAGE_FOLDERS` and
    :data:`SLIDE_TABLES`. Only safe under the folder's lock (no other run is writing); never raises
    (see :func:`remove_files`)."""
    folders = [outdir, *(outdir / sub for sub in (*IMAGE_FOLDERS, SLIDE_TABLES, CELLS, SPOTS, TRACKS))]
    return remove_files([p for f in folders if f.is_dir() for p in f.iterdir() if _TEMPORARY.match(p.name)])


def remove_files(paths: list[Path]) -> list[str]:
    """Remove the files ``paths``; never raises. Returns a one-line problem for each file that
    exists but could not be removed (none for files that are absent or cannot exist)."""
    problems = []
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except (NotADirectoryError, IsADirectoryError):  # 'labels' is a file, or x.tif a folder
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot remove ({exc.strerror or exc})")
    return problems


def _read_table(path: Path, **kwargs) -> pd.DataFrame | None:
    """A CSV an earlier run left, or None when absent or unreadable."""
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""], **kwargs)
    except (OSError, ValueError, pd.errors.ParserError):
        return None


class Tables:
    """What a batch accumulates (rows of counts.csv, measurement tables, thumbnails) and writes.

    The images an earlier run left in the folder (per its ``counts.csv``) stay in the tables as
    long as their label file is there and this run has not replaced it: the tables always list
    exactly the label files present. :meth:`write` rewrites ``counts.csv``, ``nuclei.csv`` and
    ``columns.csv``; :meth:`write_soon` does unless the last rewrite is too recent for its cost
    (at most ~10 % of the time goes to rewriting tables). ``names``: this run's output names.
    ``nuclei`` holds DataFrames, and for huge images :class:`SlideTable` (rows
    streamed to a file, copied into ``nuclei.csv`` in chunks). ``earlier`` (image name → source),
    when given, stands for the earlier run's ``counts.csv``, and no earlier rows are carried: the
    tables of one file segmented on a Dask worker (:mod:`pipeline.batch.cluster`).
    """

    def __init__(self, outdir: Path, pixel_size: float | None, names: list[str] = (),
                 exports: tuple[str, ...] = (), earlier: dict[str, str] | None = None):
        self.outdir, self.pixel_size, self.exports = outdir, pixel_size, exports
        self.counts: list[dict[str, Any]] = []
        self.nuclei: list = []
        self.thumbnails: dict[str, bytes] = {}
        #: the output names taken in this run, casefolded (:func:`unique_name`)
        self.names: set[str] = {name.casefold() for name in names}
        given, earlier = earlier, None
        if given is None:
            earlier = _read_table(outdir / COUNTS_CSV, dtype={"image": str, "source": str})
        if earlier is None or not {"image", "source"} <= set(earlier.columns):
            earlier = pd.DataFrame(columns=list(COUNT_COLUMNS))
        #: image name → source, of the earlier run's rows
        self.earlier = dict(zip(earlier["image"], earlier["source"], strict=True)) if given is None else given
        if not {"status", "labels_file"} <= set(earlier.columns):
            earlier = pd.DataFrame(columns=list(COUNT_COLUMNS))  # an older table: nothing to carry
        fixed = _count_columns(pixel_size, exports)
        self._earlier = earlier[earlier["status"] == "ok"]
        self._earlier = self._earlier.reindex(columns=[*fixed, *_extra(self._earlier.columns, COUNT_COLUMNS)])
        nuclei = None if self._earlier.empty else _read_table(outdir / NUCLEI_CSV, dtype={"image": str})
        columns = ["image", *measurement_columns(pixel_size)]
        self._earlier_nuclei = (
            pd.DataFrame(columns=columns) if nuclei is None or "image" not in nuclei
            else nuclei[nuclei["image"].isin(self._earlier["image"])]
        )  # fmt: skip
        self._written_at, self._write_cost = -math.inf, 0.0

    def _kept(self) -> pd.DataFrame:
        """The earlier rows whose label file is present and is not one this run wrote."""
        mine = {_file_id(self.outdir / row["labels_file"]) for row in self.counts if row.get("status") == "ok"}
        frames = self._earlier["frame"] if "frame" in self._earlier else pd.Series(None, self._earlier.index)
        keep, seen = [], set()
        for labels_file, frame in zip(self._earlier["labels_file"], frames, strict=True):
            file_id = _file_id(self.outdir / str(labels_file))  # each file (a time-lapse's frame) once:
            key = (file_id, None if pd.isna(frame) else int(frame))  # an older table may list one twice
            keep.append(file_id is not None and file_id not in mine and key not in seen)
            seen.add(key)
        return self._earlier.loc[pd.Series(keep, self._earlier.index, bool)]

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``counts.csv`` and ``nuclei.csv``: this run's images, then the earlier ones kept (the
        rows of huge images left out of ``nuclei.csv``: :meth:`write` streams them)."""
        counts, parts = self._sections()
        columns = self.nuclei_columns(parts)
        frames = [t.reindex(columns=columns) for t in parts if isinstance(t, pd.DataFrame) and len(t)]
        nuclei = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        return counts, nuclei[columns]

    def nuclei_columns(self, parts: list | None = None) -> list[str]:
        """The columns of ``nuclei.csv``: ``image``, :func:`pipeline.method.features.measurement_columns`,
        then those of the parts (tables, slide tables) in the order they first appear."""
        parts = self._sections()[1] if parts is None else parts
        columns = ["image", *measurement_columns(self.pixel_size)]
        found = [c for t in parts for c in t.columns]
        return [*columns, *_extra(found, columns)]

    def _sections(self) -> tuple[pd.DataFrame, list]:
        """``counts.csv``, and the parts of ``nuclei.csv`` in order (:attr:`nuclei`, then the earlier rows kept)."""
        kept = self._kept()
        fixed = _count_columns(self.pixel_size, self.exports)
        extra = _extra([c for row in self.counts for c in row], COUNT_COLUMNS)
        now = pd.DataFrame(self.counts, columns=[*COUNT_COLUMNS, *extra])
        columns = [*fixed, *extra, *_extra(kept.columns, [*COUNT_COLUMNS, *extra])]
        counts = (
            (pd.concat([now.reindex(columns=columns), kept.reindex(columns=columns)], ignore_index=True)
             if len(kept) else now.reindex(columns=columns))
            .astype({c: "Int64" for c in ("series", "plane", "height", "width", "count")})
        )  # fmt: skip
        return counts, [*self.nuclei, self._earlier_nuclei[self._earlier_nuclei["image"].isin(kept["image"])]]

    def write_overlay(self, name: str, overlay: np.ndarray, side: int, written: list[Path]) -> None:
        """Write ``overlays/<name>.png`` (``overlay``: (H, W, 3) uint8; appended to ``written``) and
        keep its thumbnail (longest side ``side`` px) for the report: the one writer of overlays."""
        written.append(self.outdir / overlay_file(name))
        write_png(written[-1], overlay)
        self.thumbnails[name] = encode_png(thumbnail(overlay, side))

    def write_soon(self) -> None:
        """:meth:`write`, unless the last rewrite is more recent than 10 times its cost."""
        if time.perf_counter() - self._written_at >= 10 * self._write_cost:
            self.write()

    def write(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rewrite the tables; returns ``counts.csv`` and ``nuclei.csv`` as written."""
        start = time.perf_counter()
        counts, nuclei = self.frames()
        if all(isinstance(t, pd.DataFrame) for t in self.nuclei):
            write_csv(self.outdir / NUCLEI_CSV, nuclei)
        else:  # huge images' rows: copied from their own files, in order, never all held
            write_nuclei_csv(self.outdir / NUCLEI_CSV, self._sections()[1], list(nuclei.columns))
        write_csv(self.outdir / COUNTS_CSV, counts)
        fixed = 1 + len(measurement_columns(self.pixel_size))
        write_csv(self.outdir / COLUMNS_CSV, column_dictionary(self.pixel_size, list(nuclei.columns[fixed:])))
        self._written_at = time.perf_counter()
        self._write_cost = self._written_at - start
        return counts, nuclei


@dataclass(kw_only=True)
class CountsRow:
    """The ``counts.csv`` fields of one image segmented or measured: a plane, a slide, a z-stack or a
    time-lapse's frame; the one place that says them (``nuclei segment`` and ``nuclei measure``).

    ``name``: output name (its ``labels_file`` and ``overlay_file``); ``count`` and ``median_area_px``
    (NaN: none); ``image_type``, ``diameter`` (px), ``estimated``, ``scale``, ``confidence``, ``count_risk`` as
    :class:`pipeline.model.segmenter.Segmentation` has them (None for labels made elsewhere,
    ``nuclei measure``); ``flag``; ``pixel_size`` (µm) and ``median_area_um2`` (only with a pixel
    size); ``extra``: the fields that follow them, in order (files, channels, frame, ...). The caller
    adds the image's own fields as read (source, plane, size).
    """

    name: str
    count: int
    median_area_px: float
    image_type: str | None = None
    diameter: float | None = None
    estimated: bool | None = None
    scale: float | None = None
    confidence: float | None = None
    count_risk: float | None = None
    flag: str = ""
    pixel_size: float | None = None
    median_area_um2: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def segmented(cls, result: Any, **fields: Any) -> CountsRow:
        """The row of an image segmented as ``result`` says (its image type, diameter, estimated, scale,
        confidence and count risk; ``fields`` give the rest and may replace them)."""
        made = {key: getattr(result, key, None)
                for key in ("image_type", "diameter", "estimated", "scale", "confidence", "count_risk")}
        return cls(**{**made, **fields})

    def fields(self) -> dict[str, Any]:
        """``count``, ``median_area_px``, ``image_type``, ``diameter_px`` (2 decimals),
        ``diameter_estimated``, ``scale`` (4), ``confidence`` (3), ``count_risk`` (3), ``flag``, ``status`` 'ok',
        ``labels_file``, ``overlay_file``; ``median_area_um2`` and ``pixel_size_um`` with a pixel
        size; then :attr:`extra`."""
        row = {
            "count": self.count,
            "median_area_px": self.median_area_px,
            "image_type": self.image_type,
            "diameter_px": None if self.diameter is None else round(self.diameter, 2),
            "diameter_estimated": self.estimated,
            "scale": None if self.scale is None else round(self.scale, 4),
            "confidence": None if self.confidence is None else round(self.confidence, 3),
            "count_risk": None if self.count_risk is None else round(self.count_risk, 3),
            "flag": self.flag,
            "status": "ok",
            "labels_file": labels_file(self.name),
            "overlay_file": overlay_file(self.name),
        }
        if self.pixel_size is not None:
            row["median_area_um2"] = self.median_area_um2
            row["pixel_size_um"] = self.pixel_size
        return {**row, **self.extra}


#: Rows of a streamed table read or rewritten at a time.
CHUNK_ROWS = 200_000


@dataclass
class SlideTable:
    """The nuclei of a slide, streamed to ``tables/<name>.csv`` rather than held (``columns``: its header;
    ``image``: its output name)."""

    path: Path
    areas_px: np.ndarray
    pixel_size: float | None = None
    columns: tuple[str, ...] = ()
    image: str = ""

    def areas(self, column: str) -> np.ndarray:
        """The nuclei's ``area_px`` or ``area_um2`` (none without a pixel size)."""
        if column == "area_px":
            return self.areas_px.astype(float)
        return self.areas_px * self.pixel_size**2 if self.pixel_size else np.zeros(0)

    def read(self, columns: list[str]) -> pd.DataFrame:
        """Some of its columns, whole (a few numbers per nucleus: read chunk by chunk, :func:`table_chunks`)."""
        parts = list(table_chunks(self.path, columns))
        return pd.concat(parts) if parts else pd.DataFrame(columns=columns)


def table_chunks(path: Path, columns: list[str] | None = None, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """A streamed table (:class:`SlideTable`) ``rows`` at a time (``image`` as text); the index counts
    the file's rows from 0. ``columns``: those alone."""
    return pd.read_csv(path, usecols=columns, chunksize=rows,
                       dtype={"image": str} if columns is None or "image" in columns else None)


def rewrite_table(path: Path, columns: list[str], change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Rewrite a streamed table atomically, chunk by chunk (:func:`table_chunks`): each chunk
    through ``change``, written with ``columns`` (missing ones empty)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        pd.DataFrame(columns=columns).to_csv(out, index=False)
        for chunk in table_chunks(path):
            change(chunk).reindex(columns=columns).to_csv(out, header=False, index=False)


def write_nuclei_csv(path: Path, tables: list, columns: list[str]) -> None:
    """Write ``nuclei.csv`` from in-memory tables and streamed slide tables (:class:`SlideTable`,
    copied in chunks), in order, with ``columns`` (missing ones empty)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        pd.DataFrame(columns=columns).to_csv(out, index=False)
        for table in tables:
            for chunk in table_chunks(table.path) if isinstance(table, SlideTable) else [table]:
                chunk.reindex(columns=columns).to_csv(out, header=False, index=False)


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None when absent: two names of one file (letter case on macOS)
    are one file."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _extra(found, known) -> list[str]:
    """The names of ``found`` not in ``known``, each once, in order."""
    known = set(known)
    return [c for c in dict.fromkeys(found) if c not in known]


def _count_columns(pixel_size: float | None, exports: tuple[str, ...] = ()) -> list[str]:
    skipped = {f.column for name, f in FORMATS.items() if name not in exports}
    return [c for c in COUNT_COLUMNS if (pixel_size is not None or not c.endswith("_um2")) and c not in skipped]
