"""Multi-channel images: a file's channels kept together, or channels in separate files.

``nuclei segment --nuclear-channel C`` and ``nuclei measure`` read each image of a file with its
channels together (:class:`pipeline.files.planes.ChannelImage`, (C, H, W)):

- a TIFF: its C axis (OME-TIFF, ImageJ hyperstack), else its colour samples (an RGB TIFF), else the
  pages of a plain multi-page TIFF (:func:`pipeline.files.tiff.read_tiff_channel_images`); other axes
  (Z, T) are images of their own, ``<name>_p<k>``;
- any other file: its colour channels (red, green, blue; alpha dropped), or its one grey channel;
- channels in separate files (``--channel-files PATTERN``, :class:`ChannelPattern`): the files of
  one image share ``{stem}`` and differ in ``{c}``.

Channels are named by the file's metadata (OME ``Channel Name``, ImageJ ``Labels``), 'red',
'green', 'blue' for colour, the ``{c}`` of channel files; :func:`channel_keys` makes the names
column-safe (``c<k>`` when there is none) and :func:`find_channel` resolves what a user typed.

Must not: segment, measure or write files.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import NucleiError
from pipeline.files.planes import ChannelImage

#: The names of a colour image's channels, in order.
COLOUR_NAMES = ("red", "green", "blue")
#: The fields of a ``--channel-files`` pattern.
STEM, CHANNEL = "{stem}", "{c}"


def read_channel_images(path: str | Path) -> list[ChannelImage]:
    """Every image of a file with its channels together, in the file's own units.

    Returns
    -------
    images : list of ChannelImage
        ``channels`` (C, H, W) in the file's pixel type (orientation applied), ``names`` (C,).

    Raises
    ------
    NucleiError
        As :func:`pipeline.files.io.read_planes`: missing, unreadable, too large, NaN values.
    """
    from pipeline.files.io import TIFF_SUFFIXES, check_array, read_planes

    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        images = []
        for plane in read_planes(path):  # one plane: PNG, JPEG, BMP (or the error of a missing file)
            array = plane.array if plane.array.ndim == 3 else plane.array[..., None]
            colour = array.shape[-1] >= 3
            channels = np.moveaxis(array[..., :3] if colour else array[..., :1], -1, 0)
            names = COLOUR_NAMES if colour else ("",)
            images.append(ChannelImage(plane.tag, plane.series, plane.index, channels, names,
                                       plane.orientation, plane.pixel_size))
        return images
    from pipeline.files.tiff import read_tiff_channel_images

    images = read_tiff_channel_images(path)
    for image in images:
        for plane in image.channels:
            check_array(plane, path)
        if image.names[-1:] == ("alpha",):  # RGBA samples: the alpha is no channel
            images[images.index(image)] = image._replace(channels=image.channels[:-1], names=image.names[:-1])
    return images


# --------------------------------------------------------------------------- names


def safe_key(name: str) -> str:
    """A channel name made safe for a column name: ASCII letters, digits and '_' ('' when none is left)."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")


#: Channel keys whose columns (``mean_<key>``, ``integrated_<key>``) are columns of every image's
#: nuclei (``mean_intensity``, ``integrated_intensity``: :data:`pipeline.method.features.COLUMN_DICTIONARY`);
#: a channel of that name is keyed ``<key>__c<k>`` (:func:`channel_keys`).
RESERVED_KEYS = ("intensity",)


def channel_keys(names: tuple[str, ...] | list[str]) -> list[str]:
    """The column key of each channel (``mean_<key>``): its name made safe (:func:`safe_key`), or
    ``c<k>`` for channel ``k`` when it has none, when the name is a number (``c<number>``: the
    ``{c}`` of channel files ``_c0``, ``_c1``) or when two channels' names make the same key
    (letter case aside). A name whose columns are those of every image (:data:`RESERVED_KEYS`) is
    keyed ``<key>__c<k>``: no name makes a ``__`` (``columns.csv`` says which channel it was). Keys
    never collide, letter case aside.

    >>> channel_keys(['DAPI', 'Ki-67', '', 'DAPI'])
    ['c0', 'Ki_67', 'c2', 'c3']
    >>> channel_keys(['1', '2'])
    ['c1', 'c2']
    >>> channel_keys(['DAPI', 'intensity'])
    ['DAPI', 'intensity__c1']
    """
    keys = []
    for k, name in enumerate(names):
        key = safe_key(name)
        key = f"c{key}" if key.isdigit() else key or f"c{k}"
        keys.append(f"{key}__c{k}" if key.casefold() in RESERVED_KEYS else key)
    seen: dict[str, int] = {}
    for key in keys:
        seen[key.casefold()] = seen.get(key.casefold(), 0) + 1
    keys = [f"c{k}" if seen[key.casefold()] > 1 else key for k, key in enumerate(keys)]
    taken: set[str] = set()
    for k, key in enumerate(keys):  # a name 'c1' beside the c1 of two channels of one name
        while key.casefold() in taken:
            key = f"{key}_{k}"
        keys[k] = key
        taken.add(key.casefold())
    return keys


def describe_channels(names: tuple[str, ...] | list[str]) -> str:
    """'0 DAPI, 1 EdU, 2 c2': each channel's index and key, for error messages and ``counts.csv``."""
    return ", ".join(f"{k} {key}" for k, key in enumerate(channel_keys(names)))


def find_channel(spec: str, names: tuple[str, ...] | list[str], path: str | Path, option: str = "--nuclear-channel") -> int:
    """The index of the channel a user named.

    ``spec`` is a channel's name (exactly, then letter case aside), its key (:func:`channel_keys`),
    else a whole number, the channel's index counted from 0.

    Raises
    ------
    NucleiError
        No such channel in ``path``: one line naming the file and its channels.
    """
    keys = channel_keys(names)
    for candidates, fold in ((names, False), (names, True), (keys, True)):
        hits = [k for k, name in enumerate(candidates)
                if (name.casefold() == spec.casefold() if fold else name == spec) and name]
        if len(hits) == 1:
            return hits[0]
    text = spec.strip()
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise NucleiError(f"{path}: no channel {spec!r} for {option} (channels: {describe_channels(names)})")


# --------------------------------------------------------------------------- channels in separate files


@dataclass(frozen=True)
class ChannelPattern:
    """``--channel-files PATTERN``: the file name of each channel of an image, e.g. ``{stem}_c{c}.tif``.

    ``{stem}`` is what the files of one image share (any text; the longest that fits), ``{c}``
    the channel (any text without a folder: ``0``, ``1`` or ``DAPI``, ``EdU``); the rest is
    matched as written, letter case aside. The channels of a batch are every ``{c}`` found,
    numbers in numeric order, else in alphabetical order.
    """

    pattern: str

    def __post_init__(self):
        if self.pattern.count(STEM) != 1 or self.pattern.count(CHANNEL) != 1 or "/" in self.pattern:
            raise NucleiError(f"--channel-files {self.pattern!r}: a file name holding {STEM} and {CHANNEL} once "
                              "each, e.g. '{stem}_c{c}.tif'")

    @property
    def regex(self) -> re.Pattern:
        parts = re.split(r"(\{stem\}|\{c\})", self.pattern)
        body = "".join({STEM: "(?P<stem>.+)", CHANNEL: "(?P<c>[^/\\\\]+?)"}.get(p, re.escape(p)) for p in parts)
        return re.compile(body, re.IGNORECASE)

    def match(self, path: Path) -> tuple[str, str] | None:
        """(stem, c) of a file named by the pattern, else None."""
        found = self.regex.fullmatch(path.name)
        return (found["stem"], found["c"]) if found else None

    def source(self, folder: Path, stem: str) -> Path:
        """What stands for one image's files: the pattern with its stem filled, ``{c}`` left (``a/w1_c{c}.tif``)."""
        return folder / self.pattern.replace(STEM, stem)

    def files(self, source: str | Path, channels: tuple[str, ...]) -> list[Path]:
        """The file of each channel of the image :meth:`source` stands for."""
        return [Path(str(source).replace(CHANNEL, c)) for c in channels]

    def group(self, paths: list[Path]) -> tuple[list[Path], list[Path], tuple[str, ...]]:
        """Group files into images.

        Returns
        -------
        sources : list of Path
            One per image (:meth:`source`), in the order of their first file.
        unmatched : list of Path
            The files the pattern does not name.
        channels : tuple of str
            Every ``{c}`` of the files of ``paths`` and of the files beside them the pattern
            names with the same stems, numbers in numeric order, else sorted.
        """
        sources: dict[Path, str] = {}
        unmatched = []
        for path in paths:
            hit = self.match(path)
            if hit is None:
                unmatched.append(path)
            else:
                sources.setdefault(self.source(path.parent, hit[0]), hit[0])
        found: set[str] = set()
        for source, stem in sources.items():  # the channels beside the files given (one file of an image may be named)
            try:
                siblings = list(source.parent.iterdir())
            except OSError:
                siblings = []
            found.update(hit[1] for hit in map(self.match, siblings) if hit is not None and hit[0] == stem)
        numeric = all(c.isdigit() for c in found)
        return list(sources), unmatched, tuple(sorted(found, key=(lambda c: (int(c), c)) if numeric else str.casefold))

    def stem(self, source: str | Path) -> str:
        """The ``{stem}`` of the image :meth:`source` stands for."""
        before, after = self.pattern.split(STEM)
        name = Path(str(source)).name
        return name[len(before) : len(name) - len(after)]


def output_stem(source: Path, pattern: ChannelPattern | None) -> Path:
    """The path whose stem names an input's outputs: the input, or for channel files ``<folder>/<stem>``."""
    return source if pattern is None else source.parent / pattern.stem(source)


def read_channel_files(source: str | Path, pattern: ChannelPattern, channels: tuple[str, ...]) -> ChannelImage:
    """The image whose channels are separate files: each file one grey plane, all of one size.

    Raises
    ------
    NucleiError
        A channel's file is missing, holds more than one plane or a colour image, or differs in size
        from the first channel's: one line naming that file.
    """
    from pipeline.files.io import read_planes

    planes, first, size = [], None, None
    for c, path in zip(channels, pattern.files(source, channels), strict=True):
        if not path.is_file():
            raise NucleiError(f"{path}: no such file (channel {c} of {pattern.stem(source)}, --channel-files "
                              f"{pattern.pattern!r})")
        found = read_planes(path)
        if len(found) != 1 or (found[0].array.ndim == 3 and found[0].array.shape[-1] > 2):
            raise NucleiError(f"{path}: a channel file must hold one grey image (it holds "
                              f"{len(found)} planes of shape {found[0].array.shape})")
        plane = found[0]
        array = plane.array if plane.array.ndim == 2 else plane.array[..., 0]
        if first is None:
            first, size = path, plane.pixel_size
        elif array.shape != planes[0].shape:
            raise NucleiError(f"{path}: {array.shape[1]}x{array.shape[0]} px, but {first.name} is "
                              f"{planes[0].shape[1]}x{planes[0].shape[0]} px")
        if planes and array.dtype != planes[0].dtype:
            array = array.astype(np.result_type(array.dtype, planes[0].dtype))
            planes = [p.astype(array.dtype) for p in planes]
        planes.append(array)
    return ChannelImage("", 0, 0, np.stack(planes), tuple(channels), 1, size)
