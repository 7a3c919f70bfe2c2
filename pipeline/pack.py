"""Pack the prepared training set into one small archive, to carry it to another machine.

``nuclei prepare`` writes one ``.npz`` per image (RGB uint8 image + int32 labels) and
``index.csv``; stage1_train makes 72 MB of them. :func:`pack_prepared` re-encodes every image as
a PNG — one channel where R = G = B, as for most fluorescence images — and its labels as a 16-bit
PNG, in one uncompressed tar (stage1_train: 46.6 MiB, under the 50 MiB that can travel to a GPU
machine). :func:`unpack_prepared` writes the identical ``.npz`` files and index back; the
targets are then rebuilt there with ``nuclei targets``::

    python -m pipeline.pack pack data/full/prepared carry/prepared.tar     # carry/ is ignored by git
    python -m pipeline.pack unpack carry/prepared.tar data/full/prepared

Unpacking needs only numpy and OpenCV, so that a bare GPU machine can do it.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

import numpy as np

from pipeline.errors import NucleiError
from pipeline.io import atomic_path, load_npz, progress, save_npz

#: The index of a prepared folder (:func:`pipeline.prepare.prepare`).
INDEX = "index.csv"
#: The most labels a 16-bit PNG holds.
MAX_LABEL = np.iinfo(np.uint16).max


def _png(array: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) uint8/uint16 or (H, W, 3) RGB uint8 array (lossless)."""
    import cv2

    if array.ndim == 3:
        array = array[..., ::-1]  # OpenCV writes BGR
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise NucleiError(f"PNG encoding failed for an array of shape {array.shape}")
    return data.tobytes()


def _unpng(data: bytes) -> np.ndarray:
    """The array of :func:`_png`'s bytes (RGB order)."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("not a PNG")
    return array[..., ::-1].copy() if array.ndim == 3 else array


def encode_sample(image: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    """PNG bytes of one prepared sample.

    ``image``: (H, W, 3) uint8, stored with one channel where the three are equal; ``labels``:
    (H, W) integer labels 0…65,535.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise NucleiError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise NucleiError(f"labels outside 0-{MAX_LABEL} cannot be packed")
    grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
    return _png(image[..., 0] if grey else image), _png(labels.astype(np.uint16))


def decode_sample(image_png: bytes, labels_png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_sample`: (H, W, 3) uint8 image, (H, W) int32 labels."""
    image = _unpng(image_png)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image, _unpng(labels_png).astype(np.int32)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack_prepared(prepared: str | Path, archive: str | Path) -> int:
    """Write the prepared folder ``prepared`` (``index.csv`` + ``<id>.npz``, or a folder of such
    sources) into the tar ``archive``.

    Returns the archive's size in bytes. Raises NucleiError naming a missing or unreadable index
    (:func:`pipeline.prepare.read_index`) or sample file.
    """
    from pipeline.prepare import read_index  # here, not at the top: unpacking needs no scipy

    prepared, archive = Path(prepared), Path(archive)
    ids = read_index(prepared, ("id",))["id"].tolist()
    indexes = [prepared / INDEX] if (prepared / INDEX).exists() else sorted(prepared.glob(f"*/{INDEX}"))
    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w") as tar:
        for index in indexes:  # one source's, or each of a folder of sources
            _add(tar, index.relative_to(prepared).as_posix(), index.read_bytes())
        for sample_id in progress(ids, desc="pack", unit="img"):
            path = prepared / f"{sample_id}.npz"
            arrays = load_npz(path)
            try:
                image_png, labels_png = encode_sample(arrays["image"], arrays["labels"])
            except (KeyError, NucleiError) as exc:
                raise NucleiError(f"{path}: cannot pack ({exc})") from None
            _add(tar, f"{sample_id}/image.png", image_png)
            _add(tar, f"{sample_id}/labels.png", labels_png)
    return archive.stat().st_size


def unpack_prepared(archive: str | Path, prepared: str | Path) -> int:
    """Write the samples of a :func:`pack_prepared` archive into the folder ``prepared``.

    Existing files of the same names are replaced (atomically); others are kept. Returns the
    number of samples. Raises NucleiError for an unreadable archive or member.
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
        if not indexes:
            raise NucleiError(f"{archive}: no {INDEX} inside (not made by pipeline.pack)")
        ids = sorted({name.rsplit("/", 1)[0] for name in members if name.endswith(("/image.png", "/labels.png"))})
        for sample_id in progress(ids, desc="unpack", unit="img"):
            try:
                image, labels = decode_sample(
                    tar.extractfile(members[f"{sample_id}/image.png"]).read(),
                    tar.extractfile(members[f"{sample_id}/labels.png"]).read(),
                )
            except (KeyError, ValueError) as exc:
                raise NucleiError(f"{archive}: sample {sample_id} is incomplete or corrupt ({exc})") from None
            save_npz(prepared / f"{sample_id}.npz", image=image, labels=labels)
        # the indexes last: a folder with an index is complete
        for name in indexes:
            with atomic_path(prepared / name) as tmp:
                tmp.write_bytes(tar.extractfile(members[name]).read())
    return len(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="prepared folder -> archive")
    p.add_argument("prepared", type=Path)
    p.add_argument("archive", type=Path)
    u = sub.add_parser("unpack", help="archive -> prepared folder")
    u.add_argument("archive", type=Path)
    u.add_argument("prepared", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            size = pack_prepared(args.prepared, args.archive)
            print(f"{args.archive}: {size / 2**20:.1f} MiB")
        else:
            n = unpack_prepared(args.archive, args.prepared)
            print(f"{args.prepared}: {n} samples")
    except NucleiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
