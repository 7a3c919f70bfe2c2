"""Which files a command reads: files and folders named by the user → the image files, and the
files left out (so that the caller can name them).

Owns the walk of input folders (hidden files, Kaggle ``masks/`` folders, symbolic links to
folders, loops), what counts as an image file by its ending, and the one-line description of
what a path is when it is not a regular file (a FIFO, a device).

Must not: open or read the files (:mod:`pipeline.files.io` does), or write anything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import NucleiError

#: File name endings read as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
#: A folder with this ending given as an input is one image: an OME-Zarr (:mod:`pipeline.files.slide_reader`).
ZARR_SUFFIX = ".zarr"

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def file_kind(path: str | Path) -> str | None:
    """What ``path`` is when it is not a regular file: 'a named pipe (FIFO)', 'a character
    device', 'a block device', 'a socket', 'a folder', 'a broken symbolic link' or 'missing';
    None for a regular file (or a symbolic link to one). Never opens the file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except OSError as exc:  # a loop of links, a name too long, no permission
        return f"not accessible ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def by_stem(files: Iterable[str | Path], advice: str) -> dict[str, Path]:
    """``files`` by casefolded file stem: the one rule for files found by name (``x`` → ``x.tif``).

    Raises
    ------
    NucleiError
        Two files of one stem (``x.tif`` and ``x.png``, ``a/x.tif`` and ``b/X.tif``): which one is
        meant is ambiguous; one line naming both, then ``advice``.
    """
    found: dict[str, Path] = {}
    for path in map(Path, files):
        other = found.setdefault(path.stem.casefold(), path)
        if other != path:
            raise NucleiError(f"{path}: same name as {other}; {advice}")
    return found


def list_images(inputs: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """The image files of ``inputs``: the first list of :func:`list_inputs`."""
    return list_inputs(inputs, recursive)[0]


def list_inputs(
    inputs: Iterable[str | Path], recursive: bool = False, exclude: str | Path | None = None
) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into the files to read and the files left out.

    Files named explicitly are always kept, whatever their ending or kind (a FIFO, a device:
    reading them reports what they are, see :func:`file_kind`) and wherever they lie. Folders
    contribute their regular files whose ending is in :data:`IMAGE_SUFFIXES`, and their sub-folders'
    too when ``recursive``: symbolic links to folders are followed, each folder read once (no
    loops); a folder named explicitly whose name ends in :data:`ZARR_SUFFIX` is one image (an
    OME-Zarr), not a folder of images; hidden files and folders, the ``masks/`` folders of a Kaggle layout (``<id>/masks/``
    beside ``<id>/images/``) and everything inside ``exclude`` (an output folder) are left out.

    Returns
    -------
    images : list of Path
        In the order of ``inputs``, each folder's files sorted; a file reached twice is kept once.
    others : list of Path
        The folders' files left out for their ending or kind (notes, tables, GIF or WebP images,
        FIFOs), so that a caller can say what it did not read; those also named explicitly are
        not among them.

    Raises
    ------
    NucleiError
        An input that does not exist.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    files: list[Path] = []
    others: list[Path] = []
    for item in inputs:
        path = Path(item)
        kind = file_kind(path)
        if kind == "a folder" and path.suffix.lower() != ZARR_SUFFIX:  # an OME-Zarr folder is one image
            for p in _folder_files(path, recursive, skip):
                image = p.suffix.lower() in IMAGE_SUFFIXES and file_kind(p) is None
                (files if image else others).append(p)
        elif kind in ("missing", "a broken symbolic link"):
            raise NucleiError(f"{path}: no such file or folder" + ("" if kind == "missing" else f" ({kind})"))
        else:
            files.append(path)
    seen: set[Path] = set()

    def first_time(paths: list[Path]) -> list[Path]:
        kept = []
        for f in paths:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                kept.append(f)
        return kept

    return first_time(files), first_time(others)  # images first: a file named explicitly is read


def _folder_files(folder: Path, recursive: bool, skip: Path | None) -> list[Path]:
    """The non-folder entries of ``folder`` (and of its sub-folders when ``recursive``, symbolic
    links to folders followed, each real folder visited once), sorted; hidden files and folders,
    Kaggle ``masks/`` folders and the folder ``skip`` left out."""
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        here = Path(root)
        info = os.stat(here)
        if (info.st_dev, info.st_ino) in visited or (skip is not None and here.resolve() == skip):
            dirs[:] = []  # a link back to a folder already read, or the output folder
            continue
        visited.add((info.st_dev, info.st_ino))
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith("."))  # the same on any disk
        found += [here / n for n in names if not n.startswith(".")]
    return [p for p in sorted(found, key=lambda p: p.relative_to(folder).parts) if not _is_kaggle_mask(p)]


def _is_kaggle_mask(path: Path) -> bool:
    """Whether ``path`` is ``<id>/masks/<k>.png`` of a Kaggle layout (beside ``<id>/images/``)."""
    return path.parent.name == "masks" and (path.parent.parent / "images").is_dir()
