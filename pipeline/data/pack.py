"""Pack the prepared training set into small archives, to carry it to another machine.

``nuclei prepare`` writes one ``.npz`` per image (RGB uint8 image + int32 labels) and
``index.csv``; stage1_train makes 72 MB of them, the five sources of the generalist 153 MB.
:func:`pack_prepared` re-encodes every image as a PNG — one channel where R = G = B, as for most
fluorescence images — and its labels as a 16-bit PNG, in uncompressed tars: stage1_train 46.6 MiB,
the five sources 100.3 MiB. A GPU machine takes at most 64 MiB with the repository (about 26 MiB
of it), so ``--part-mib`` splits the archive into parts of whole samples, carried one call at a
time, the indexes in the last part. :func:`unpack_prepared` writes the identical ``.npz`` files and
indexes back; the targets are then rebuilt there with ``nuclei targets``. ``--jpeg 95`` stores
the images as JPEG instead (lossy, within a few grey levels; the labels stay lossless): grouped
folds 1–4 of the eight sources, 148.5 MiB of PNG images, take 48.1 MiB (two parts of 29 and 27 MiB)::

    nuclei pack pack data/generalist/prepared carry/prepared.tar --part-mib 25 [--jpeg 95]
        [--sources dsb2018 he_gbm40 ...] [--leave-out-fold 0]
    python -m pipeline pack unpack carry/prepared.1-of-5.tar data/generalist/prepared   # each part

Unpacking needs only numpy and OpenCV, so that a bare GPU machine can do it. A folder is complete
once it has its index: the last part checks that every sample the index names is there.
"""

from __future__ import annotations

import argparse
import csv
import io
import tarfile
from pathlib import Path

import numpy as np

from pipeline.arguments import POSITIVE, number
from pipeline.errors import NucleiError
from pipeline.files.io import atomic_path, encode_png, load_npz, save_npz
from pipeline.progress import progress

#: The index of a prepared folder (:func:`pipeline.stages.prepare.prepare`).
INDEX = "index.csv"
#: The most labels a 16-bit PNG holds.
MAX_LABEL = np.iinfo(np.uint16).max


def _encode(array: np.ndarray, jpeg: int | None = None) -> bytes:
    """PNG bytes of a (H, W) uint8/uint16 or (H, W, 3) RGB uint8 array (lossless, zlib level 9:
    what travels is small), or, with ``jpeg``, JPEG bytes of a uint8 one at that quality (1-100; lossy)."""
    import cv2

    if jpeg is None:
        try:
            return encode_png(array, compression=9)
        except ValueError as exc:
            raise NucleiError(str(exc)) from None
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(array[..., ::-1] if array.ndim == 3 else array),
                            [cv2.IMWRITE_JPEG_QUALITY, int(jpeg)])
    if not ok:
        raise NucleiError(f"JPEG encoding failed for an array of shape {array.shape}")
    return data.tobytes()


def _decode(data: bytes) -> np.ndarray:
    """The array of :func:`_encode`'s bytes (RGB order)."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("not a PNG or JPEG image")
    return array[..., ::-1].copy() if array.ndim == 3 else array


def encode_sample(image: np.ndarray, labels: np.ndarray, jpeg: int | None = None) -> tuple[bytes, bytes]:
    """PNG bytes of one prepared sample (the image as JPEG at quality ``jpeg`` when given).

    ``image``: (H, W, 3) uint8, stored with one channel where the three are equal; ``labels``:
    (H, W) integer labels 0…65,535, always lossless.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise NucleiError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise NucleiError(f"labels outside 0-{MAX_LABEL} cannot be packed")
    from pipeline.method.colour import is_grey  # not at the top: unpacking needs only numpy and OpenCV

    image = image[..., 0] if is_grey(image) else image
    return _encode(image, jpeg), _encode(labels.astype(np.uint16))


def decode_sample(image_png: bytes, labels_png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_sample` (PNG or JPEG image): (H, W, 3) uint8 image, (H, W) int32 labels."""
    image = _decode(image_png)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image, _decode(labels_png).astype(np.int32)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


#: The member of a part (:func:`pack_prepared` with ``part_bytes``) that says which: ``"<k> of <n>"``.
PART = "part.txt"


def _tar_bytes(members: list[tuple[str, bytes]]) -> int:
    """Bytes that ``members`` (name, data) take in a tar: a 512-byte header each, data in 512-byte blocks."""
    block = tarfile.BLOCKSIZE
    return sum(block + -(-len(data) // block) * block for _, data in members)


def _parts(samples: list[list[tuple[str, bytes]]], indexes: list[tuple[str, bytes]],
           part_bytes: int | None) -> list[list[tuple[str, bytes]]]:
    """The members of each archive: whole samples in order, the indexes last, each archive at most
    ``part_bytes`` (None: one archive)."""
    room = None if part_bytes is None else part_bytes - 2 * tarfile.RECORDSIZE  # end marker, padding, PART
    parts, used = [[]], 0
    for members in [*samples, indexes]:
        size = _tar_bytes(members)
        if room is not None and size > room:
            raise NucleiError(f"{members[0][0]}: {size / 2**20:.1f} MiB packed, more than a part of "
                              f"{part_bytes / 2**20:.1f} MiB")
        if room is not None and used + size > room:
            parts.append([])
            used = 0
        parts[-1] += members
        used += size
    return parts


def pack_prepared(prepared: str | Path, archive: str | Path, part_bytes: int | None = None,
                  jpeg: int | None = None, sources: list[str] | None = None,
                  leave_out_fold: int | None = None) -> list[Path]:
    """Write the prepared folder ``prepared`` (``index.csv`` + ``<id>.npz``, or a folder of such
    sources) into the tar ``archive``; with ``part_bytes``, when it does not fit in that many bytes,
    into parts ``<stem>.<k>-of-<n>.tar`` of whole samples, the indexes in the last. ``jpeg``: store
    the images as JPEG of this quality (lossy, about a third of the PNG bytes at 95; the labels stay
    lossless). ``sources``: in a folder of sources, only these. ``leave_out_fold``: leave out the
    images of this grouped fold (``group_fold``), from the samples and the indexes alike, so that
    what is carried to train on holds no validation image (``data.val_fold: null`` there).

    Returns the archives written. Raises NucleiError naming a missing or unreadable index
    (:func:`pipeline.data.folds.index_tables`) or sample file, an index without ``group_fold``, no
    image to pack, or a sample larger than a part.
    """
    from pipeline.data.folds import index_tables  # here, not at the top: unpacking needs no scipy

    prepared, archive = Path(prepared), Path(archive)
    tables = index_tables(prepared, ("id",) if leave_out_fold is None else ("id", "group_fold"), sources)
    if leave_out_fold is not None:  # one filter, for the samples and the indexes alike
        tables = [(path, table[table["group_fold"] != leave_out_fold]) for path, table in tables]
    if sum(len(table) for _, table in tables) == 0:
        raise NucleiError(f"{prepared / INDEX}: no images to pack")
    indexes = [(path.relative_to(prepared).as_posix(),
                path.read_bytes() if leave_out_fold is None else table.to_csv(index=False).encode())
               for path, table in tables]
    ids = [(path.parent.relative_to(prepared) / sample_id).as_posix()
           for path, table in tables for sample_id in table["id"]]
    samples = []
    for sample_id in progress(ids, desc="pack", unit="img"):
        path = prepared / f"{sample_id}.npz"
        arrays = load_npz(path)
        try:
            image_data, labels_png = encode_sample(arrays["image"], arrays["labels"], jpeg)
        except (KeyError, NucleiError) as exc:
            raise NucleiError(f"{path}: cannot pack ({exc})") from None
        image_name = f"{sample_id}/image.{'png' if jpeg is None else 'jpg'}"
        samples.append([(image_name, image_data), (f"{sample_id}/labels.png", labels_png)])
    parts = _parts(samples, indexes, part_bytes)
    n = len(parts)
    names = [archive] if n == 1 else [archive.with_name(f"{archive.stem}.{k}-of-{n}{archive.suffix}")
                                      for k in range(1, n + 1)]
    archive.parent.mkdir(parents=True, exist_ok=True)
    for k, (name, members) in enumerate(zip(names, parts, strict=True), 1):
        with atomic_path(name) as tmp, tarfile.open(tmp, "w") as tar:
            if n > 1:
                _add(tar, PART, f"{k} of {n}".encode())
            for member, data in members:
                _add(tar, member, data)
    return names


def _index_ids(data: bytes) -> list[str]:
    """The ``id`` column of an index's bytes (csv; unpacking needs no pandas)."""
    return [row["id"] for row in csv.DictReader(io.StringIO(data.decode()))]


def unpack_prepared(archive: str | Path, prepared: str | Path) -> int:
    """Write the samples of a :func:`pack_prepared` archive (or one of its parts) into the folder
    ``prepared``; the indexes come last, once every sample they name is there.

    Existing files of the same names are replaced (atomically); others are kept. Returns the
    number of samples. Raises NucleiError for an unreadable archive or member, or for a last part
    whose index names samples missing from ``prepared`` (earlier parts not unpacked).
    """
    archive, prepared = Path(archive), Path(prepared)
    try:
        tar = tarfile.open(archive, "r")
    except (OSError, tarfile.TarError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else "not a tar archive"
        raise NucleiError(f"{archive}: not a packed training set ({reason})") from None
    prepared.mkdir(parents=True, exist_ok=True)
    with tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        indexes = [name for name in members if name == INDEX or name.endswith(f"/{INDEX}")]
        if not indexes and PART not in members:
            raise NucleiError(f"{archive}: no {INDEX} inside (not made by pipeline.data.pack)")
        ids = sorted({name.rsplit("/", 1)[0] for name in members
                      if name.endswith(("/image.png", "/image.jpg", "/labels.png"))})
        for sample_id in progress(ids, desc="unpack", unit="img"):
            image_name = f"{sample_id}/image.jpg" if f"{sample_id}/image.jpg" in members else f"{sample_id}/image.png"
            try:
                image, labels = decode_sample(
                    tar.extractfile(members[image_name]).read(),
                    tar.extractfile(members[f"{sample_id}/labels.png"]).read(),
                )
            except (KeyError, ValueError) as exc:
                raise NucleiError(f"{archive}: sample {sample_id} is incomplete or corrupt ({exc})") from None
            save_npz(prepared / f"{sample_id}.npz", image=image, labels=labels)
        # the indexes last, and only over every sample they name: a folder with an index is complete
        index_data = {name: tar.extractfile(members[name]).read() for name in indexes}
        missing = [f"{Path(name).parent / i}" for name, data in index_data.items() for i in _index_ids(data)
                   if not (prepared / Path(name).parent / f"{i}.npz").is_file()]
        if missing:
            raise NucleiError(f"{archive}: {len(missing)} samples of its index are not in {prepared}, "
                              f"{missing[0]} first (unpack the earlier parts first)")
        for name, data in index_data.items():
            with atomic_path(prepared / name) as tmp:
                tmp.write_bytes(data)
    return len(ids)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei pack``."""
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pack", help="prepared folder -> archive (or parts)")
    p.add_argument("prepared", type=Path)
    p.add_argument("archive", type=Path)
    p.add_argument("--part-mib", type=POSITIVE, default=None,
                   help="split into parts of at most this many MiB (<stem>.<k>-of-<n>.tar) when larger")
    p.add_argument("--jpeg", type=number(integer=True, at_least=1, at_most=100), default=None, metavar="QUALITY",
                   help="store the images as JPEG of this quality, 1-100 (lossy; labels stay lossless)")
    p.add_argument("--sources", nargs="+", default=None, metavar="NAME",
                   help="in a folder of sources, pack only these")
    p.add_argument("--leave-out-fold", type=number(integer=True, at_least=0), default=None, metavar="K",
                   help="leave out the images of grouped fold K (group_fold), to train on the rest elsewhere")
    u = sub.add_parser("unpack", help="archives (or parts, in order) -> prepared folder")
    u.add_argument("archives", type=Path, nargs="+")
    u.add_argument("prepared", type=Path)


def main(args: argparse.Namespace) -> int:
    """``nuclei pack pack|unpack``."""
    if args.action == "pack":
        for name in pack_prepared(args.prepared, args.archive,
                                  None if args.part_mib is None else int(args.part_mib * 2**20), args.jpeg,
                                  args.sources, args.leave_out_fold):
            print(f"{name}: {name.stat().st_size / 2**20:.1f} MiB")
    else:
        for archive in args.archives:
            n = unpack_prepared(archive, args.prepared)
            print(f"{archive} -> {args.prepared}: {n} samples")
    return 0
