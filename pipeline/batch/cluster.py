"""``nuclei segment --scheduler ADDRESS`` / ``--workers N``: a batch on a Dask cluster.

Dask (dask.distributed) does the scheduling, the workers and their recovery: nothing here is a
scheduler of its own. What runs where:

- each ordinary image is one task: a worker reads it, segments it, writes its label image and
  overlay (atomically, into the output folder, which every worker must see: a shared file
  system) and sends back its rows and thumbnail;
- a huge image (:mod:`pipeline.batch.slide`) is planned and stitched here, and its blocks are tasks;
- results are taken in input order (:func:`ordered_map`: a window of tasks ahead), so the
  tables, the label numbering and every file are identical to those of a run without Dask;
- a worker that dies has its tasks re-run by the scheduler on another (``distributed``'s
  ``allowed-failures``, default 3); ``--workers N`` starts a :class:`distributed.LocalCluster`
  of N single-threaded worker processes on the loopback interface;
- each worker process loads the model once (:class:`ModelRef`: a cache keyed by model directory
  and settings) and keeps it for every image and block it is given;
- ``--scheduler`` is checked before anything connects (:func:`scheduler_target`): the accepted
  forms are :data:`SCHEDULER_FORMS`; anything else is one line (a usage error).

Must not: parse command lines, or segment (it hands work to :mod:`pipeline.batch.one_file` and
:mod:`pipeline.batch.slide` on the workers).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import NucleiError, UsageError, one_line

#: Models loaded by this process (model directory, settings) → times: one per worker process.
LOADS: dict[tuple, int] = {}
#: What ``--scheduler`` accepts (said in every message that refuses one).
SCHEDULER_FORMS = ("tcp://HOST:PORT (or HOST:PORT), tls://HOST:PORT with Dask's TLS settings, or a scheduler "
                   "file written by `dask scheduler --scheduler-file`")
#: Largest scheduler file read (bytes; Dask's are about 1 kB).
SCHEDULER_FILE_MAX_BYTES = 1_000_000
#: Dask's TLS settings a ``tls://`` address needs (``distributed.comm.tls.*``).
TLS_SETTINGS = ("distributed.comm.tls.ca-file", "distributed.comm.tls.client.cert")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")


@dataclass(frozen=True)
class ModelRef:
    """A model directory and its :meth:`pipeline.model.segmenter.Segmenter.from_model_dir` settings;
    calling it gives this process's Segmenter, loaded on first use and kept."""

    model_dir: str
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, model_dir: str | Path, options: dict[str, Any]) -> ModelRef:
        return cls(str(Path(model_dir).resolve()), tuple(sorted(options.items())))

    def __call__(self):
        return _loaded(self.model_dir, self.options)


@functools.lru_cache(maxsize=2)
def _loaded(model_dir: str, options: tuple[tuple[str, Any], ...]):
    from pipeline.model.segmenter import Segmenter

    LOADS[(model_dir, options)] = LOADS.get((model_dir, options), 0) + 1
    return Segmenter.from_model_dir(model_dir, **dict(options))


def scheduler_target(scheduler: str) -> dict[str, str]:
    """Check ``--scheduler`` before connecting; returns the :class:`distributed.Client` keyword.

    Parameters
    ----------
    scheduler : str
        ``tcp://HOST:PORT`` or ``HOST:PORT`` (IPv6 hosts in brackets); ``tls://HOST:PORT`` when
        Dask's TLS settings (:data:`TLS_SETTINGS`, in its configuration files or
        ``DASK_DISTRIBUTED__COMM__TLS__...`` variables) name the certificates; or a scheduler file
        written by ``dask scheduler --scheduler-file`` (a JSON object whose ``address`` is one of
        those, at most :data:`SCHEDULER_FILE_MAX_BYTES`).

    Returns
    -------
    target : dict
        ``{'address': 'tcp://HOST:PORT'}`` or ``{'scheduler_file': path}``.

    Raises
    ------
    UsageError
        One line naming the address or the file: empty; a folder; a missing, empty, unreadable
        or non-JSON scheduler file, one holding no JSON object or no address; no or a bad port;
        ``inproc://`` (one process only), ``ucx://`` or another protocol; ``tls://`` without
        Dask's TLS settings.
    """
    text = scheduler.strip() if isinstance(scheduler, str) else ""
    if not text:
        raise UsageError(f"--scheduler {scheduler!r}: empty; expected {SCHEDULER_FORMS}")
    if "://" not in text:
        path = Path(text)
        if path.is_dir():
            raise UsageError(f"{text}: a folder, not a scheduler file; --scheduler expects {SCHEDULER_FORMS}")
        if path.is_file():
            address = _scheduler_file_address(path)
            _checked_address(address, f"{path}: address {address!r}")
            return {"scheduler_file": text}
        if "/" in text or "\\" in text or text.lower().endswith(".json"):
            raise UsageError(f"{text}: no such scheduler file (start the scheduler first); --scheduler expects "
                             f"{SCHEDULER_FORMS}")
        return {"address": _checked_address(f"tcp://{text}", text)}
    return {"address": _checked_address(text, text)}


def _checked_address(address: str, source: str) -> str:
    """``address`` (``scheme://host:port``) normalised, or a UsageError naming ``source``."""
    scheme, _, rest = address.partition("://")
    scheme = scheme.lower()
    if scheme == "inproc":
        raise UsageError(f"{source}: an in-process address (inproc://) reaches a scheduler only inside the "
                         f"process that made it; expected {SCHEDULER_FORMS}")
    if scheme not in ("tcp", "tls"):
        raise UsageError(f"{source}: {scheme}:// is not supported here; expected {SCHEDULER_FORMS}")
    if rest.startswith("["):  # an IPv6 host: [::1]:8786
        host, _, tail = rest.partition("]")
        host, colon, port = f"{host}]", tail[:1], tail[1:]
    else:
        host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise UsageError(f"{source}: not a Dask scheduler address (no port); expected {SCHEDULER_FORMS}")
    if not _HOST.match(host):
        raise UsageError(f"{source}: not a Dask scheduler address (host {host!r}); expected {SCHEDULER_FORMS}")
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"{source}: not a Dask scheduler address (port {port!r}: expected 1 to 65535); "
                         f"expected {SCHEDULER_FORMS}")
    if scheme == "tls":
        try:
            import dask.config

            missing = [key for key in TLS_SETTINGS if not dask.config.get(key, None)]
        except ImportError:  # no Dask: connect says so
            missing = []
        if missing:
            raise UsageError(f"{source}: tls:// needs Dask's TLS settings, and {', '.join(missing)} "
                             "is not set (Dask's configuration files or DASK_DISTRIBUTED__COMM__TLS__... "
                             "variables); or use tcp://HOST:PORT")
    return f"{scheme}://{host}:{int(port)}"


def _scheduler_file_address(path: Path) -> str:
    """The ``address`` of a scheduler file, or a UsageError naming it."""
    what = "not a scheduler file (written by `dask scheduler --scheduler-file`)"
    size = path.stat().st_size
    if size > SCHEDULER_FILE_MAX_BYTES:
        raise UsageError(f"{path}: {size:,} bytes, {what}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: unreadable ({one_line(exc)}), {what}") from None
    if not text.strip():
        raise UsageError(f"{path}: empty, {what}")
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not JSON ({exc.msg}, line {exc.lineno}), {what}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: a JSON {type(values).__name__}, {what}: a JSON object with an 'address'")
    address = values.get("address")
    if not isinstance(address, str) or not address.strip():
        raise UsageError(f"{path}: no 'address' (text) in it, {what}")
    return address.strip()


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` of the scheduler at ``scheduler`` (checked first by
    :func:`scheduler_target`: ``tcp://host:8786``, or a scheduler file), else of a new local
    cluster of ``workers`` single-threaded processes.

    Raises
    ------
    UsageError
        ``scheduler`` is not one of :data:`SCHEDULER_FORMS` (before connecting); Dask is not installed.
    NucleiError
        No scheduler answers at ``scheduler`` (within 30 s).
    """
    target = scheduler_target(scheduler) if scheduler is not None else None
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--scheduler and --workers need Dask: pip install distributed") from None

    if target is not None:
        try:
            client = Client(**target, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise NucleiError(f"{scheduler}: no Dask scheduler answers ({one_line(exc)})") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def ordered_map(client, window: int | None = None) -> Callable[[Callable, list[tuple]], Iterator]:
    """``map(function, argument_tuples)`` on the cluster: yields ``function(*arguments)`` in the
    order of the arguments, keeping ``window`` tasks submitted ahead (default: twice the
    workers' threads, at least 4) so that memory stays bounded however many tasks there are."""

    def run(function: Callable, items: list[tuple]) -> Iterator:
        ahead = window or max(4, 2 * sum(client.nthreads().values()))
        todo, pending = iter(items), deque()

        def submit() -> None:
            item = next(todo, None)
            if item is not None:
                pending.append(client.submit(function, *item, pure=False))

        try:
            for _ in range(ahead):
                submit()
            while pending:
                result = pending.popleft().result()
                submit()
                yield result
        finally:  # an error or an interruption: nothing left running for this batch
            client.cancel(list(pending))

    return run


def file_task(source: str, name: str, model: ModelRef, settings, outdir: str, pixel_size: float | None,
              earlier: dict[str, str], names: frozenset[str]) -> tuple[list, list, dict, float | None]:
    """On a worker: segment one input file as :func:`pipeline.batch.segment.segment_images` would
    (its files written into ``outdir``); returns its ``counts.csv`` rows, ``nuclei.csv`` tables,
    report thumbnails and the pixel size its metadata gave."""
    from pipeline.batch.one_file import segment_file
    from pipeline.batch.output_folder import Tables

    run = Tables(Path(outdir), pixel_size, exports=settings.exports, earlier=earlier)
    run.names = set(names)
    segment_file(Path(source), name, model(), settings, run)
    return run.counts, run.nuclei, run.thumbnails, run.pixel_size


def segment_batch(client, items: list[tuple[Path, str]], segmenter, settings, run,
                  progress: Callable) -> None:
    """Segment ``items`` (source, output name) on the cluster, adding their rows to ``run`` (a
    :class:`pipeline.batch.output_folder.Tables`) in input order; huge images are stitched here, their
    blocks segmented on the workers."""
    from pipeline.batch.one_file import segment_file, source_of

    model = ModelRef.of(settings.model_dir, settings.segment.segmenter_options())

    def is_slide(source: Path) -> bool:  # decided as on a worker, without reading the file
        try:
            found = source_of(source, settings.segment.slide_pixels, settings.measure, settings.stacks, read=False)
        except Exception:  # unreadable: a worker records the failure, as for any bad file
            return False
        return found.kind == "slide"

    on_client = [is_slide(source) for source, _ in items]
    files = [(str(source), name, model, settings, str(run.outdir), settings.pixel_size, run.earlier,
              frozenset(run.names)) for (source, name), here in zip(items, on_client, strict=True) if not here]
    results = ordered_map(client)(file_task, files)
    for (source, name), here in progress(list(zip(items, on_client, strict=True))):
        if here:
            segment_file(source, name, segmenter, settings, run, map_ordered=ordered_map(client),
                         block_segmenter=model)
        else:
            counts, tables, thumbnails, pixel_size = next(results)
            run.counts += counts
            run.nuclei += tables
            run.thumbnails.update(thumbnails)
            run.pixel_size = run.pixel_size or pixel_size
        run.write_soon()
