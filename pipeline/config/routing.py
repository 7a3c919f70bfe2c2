"""Which network of a model folder runs an image: the routes a folder declares, and the one rule.

A model folder (``config.yaml``, :class:`pipeline.config.model_folder.ModelDirConfig`) runs every
image with its own network (:data:`MAIN`) unless it declares ``networks``: further model folders
inside it, each with a rule saying which images it takes. The shipped default declares two::

    networks:
      - {name: stained, folder: stained, image_type: [histology]}
      - {name: dense, folder: dense, nucleus_fraction_above: 0.5}

A :class:`Route` is one such entry. :func:`network_for` is the one rule that reads them, asked by
every caller that runs a model (``nuclei segment`` on planes, slides, stacks and movies; ``nuclei
predict``/``postprocess``; ``finetune``; ``quantise``; ``export-model``):

1. the first route whose ``image_type`` list holds the image's type (and that has no
   ``nucleus_fraction_above``) runs the image;
2. otherwise the folder's own network runs it; then, given the share of the pixels it finds to be
   nucleus (:func:`pipeline.method.watershed.nucleus_fraction`), the first route whose
   ``nucleus_fraction_above`` that share exceeds (and whose ``image_type`` list, when given, holds
   the type) runs the image again, and its result is kept;
3. otherwise the folder's own network's result is kept.

Each routed network post-processes with the thresholds, and resizes to the diameter, of its own
folder's ``config.yaml``. Routes are one level deep: an inner folder declares none.

Folders written before ``networks`` existed name their routes with ``stained_model`` (image type
:data:`~pipeline.config.params.HISTOLOGY`) and ``dense_model`` with ``dense_fraction`` (unstained images only);
:func:`legacy_routes` reads them as the routes above.

Must not: import any module of the package outside ``pipeline.config`` and ``pipeline.errors``, or
know networks and images beyond their type and nucleus fraction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config.params import HISTOLOGY, IMAGE_TYPES
from pipeline.config.rules import is_number
from pipeline.errors import NucleiError

#: The name of a model folder's own network.
MAIN = "main"
#: Keys of one entry of ``networks``.
ROUTE_KEYS = ("name", "folder", "image_type", "nucleus_fraction_above")


@dataclass(frozen=True)
class Route:
    """One network of a model folder and the images it runs (module docstring).

    Attributes
    ----------
    name : str
        Unique in the folder; :data:`MAIN` is the folder's own network.
    folder : str or None
        The model folder holding the network, a relative path inside the folder (None: :data:`MAIN`).
    image_types : tuple of str
        Rule: runs the images of these types (:data:`IMAGE_TYPES`); empty: any type.
    nucleus_fraction_above : float or None
        Rule: runs again the images in which the folder's own network finds nuclei over more than
        this share of the pixels, in (0, 1); None: a first-pass route.
    """

    name: str
    folder: str | None = None
    image_types: tuple[str, ...] = ()
    nucleus_fraction_above: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``networks`` entry as written to ``config.yaml``."""
        out: dict[str, Any] = {"name": self.name, "folder": self.folder}
        if self.image_types:
            out["image_type"] = list(self.image_types)
        if self.nucleus_fraction_above is not None:
            out["nucleus_fraction_above"] = self.nucleus_fraction_above
        return out

    def describe(self) -> str:
        """The rule in words, for messages and model descriptions."""
        what = f"images of type {' or '.join(self.image_types)}" if self.image_types else "images"
        if self.nucleus_fraction_above is not None:
            what += (f" in which the folder's own network finds nuclei over more than "
                     f"{self.nucleus_fraction_above:.0%} of the pixels")
        return what


#: The folder's own network.
MAIN_ROUTE = Route(MAIN)


def network_for(routes: Sequence[Route], image_type: str | None,
                nucleus_fraction: float | None = None) -> Route:
    """The route that runs an image of ``image_type`` (module docstring: the one rule).

    Parameters
    ----------
    routes : sequence of Route
        A model folder's routes (:attr:`pipeline.config.model_folder.ModelDirConfig.routes`), in order.
    image_type : str or None
        The image's type (None: not known; no typed rule matches).
    nucleus_fraction : float, optional
        Share of the pixels, in [0, 1], that the folder's own network finds to be nucleus, once it
        ran (None: the first pass, before any network ran).

    Returns
    -------
    route : Route
        The first pass's route when it is not :data:`MAIN_ROUTE` (whatever ``nucleus_fraction``);
        else, given ``nucleus_fraction``, the route that runs the image again, or :data:`MAIN_ROUTE`
        (keep the first pass).
    """
    first = next((route for route in routes
                  if route.nucleus_fraction_above is None and image_type in route.image_types), MAIN_ROUTE)
    if first is not MAIN_ROUTE or nucleus_fraction is None:
        return first
    return next((route for route in routes
                 if route.nucleus_fraction_above is not None and nucleus_fraction > route.nucleus_fraction_above
                 and (not route.image_types or image_type in route.image_types)), MAIN_ROUTE)


def needs_second_pass(routes: Sequence[Route]) -> bool:
    """Whether any route runs again an image after the folder's own network."""
    return any(route.nucleus_fraction_above is not None for route in routes)


# --------------------------------------------------------------------------- reading


def read_routes(values: Any, source: str) -> tuple[Route, ...]:
    """The ``networks`` list of a ``config.yaml``, checked: names unique and not :data:`MAIN`,
    folders inside the model folder and distinct, each entry with at least one rule.

    Raises
    ------
    NucleiError
        One line naming ``source`` and the entry.
    """
    if values is None:
        return ()
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise NucleiError(f"{source}: networks must be a list, got {values!r}")
    routes = tuple(_route(entry, k, source) for k, entry in enumerate(values))
    for key in ("name", "folder"):
        seen = [getattr(route, key) for route in routes]
        twice = sorted({value for value in seen if seen.count(value) > 1})
        if twice:
            raise NucleiError(f"{source}: networks: {key} {twice[0]!r} given twice")
    return routes


def _route(entry: Any, k: int, source: str) -> Route:
    """One ``networks`` entry, checked."""
    where = f"{source}: networks[{k}]"
    if isinstance(entry, Route):
        entry = entry.to_dict()
    if not isinstance(entry, Mapping):
        raise NucleiError(f"{where} must be a mapping, got {entry!r}")
    unknown = [key for key in entry if key not in ROUTE_KEYS]
    if unknown:
        raise NucleiError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(ROUTE_KEYS)})")
    name, folder = entry.get("name"), entry.get("folder")
    if not isinstance(name, str) or not name.isidentifier() or name == MAIN:
        raise NucleiError(f"{where}: name must be a word other than {MAIN!r}, got {name!r}")
    if not is_inner(folder):
        raise NucleiError(f"{where}: folder must be a folder inside the model folder (such as 'stained'), got {folder!r}")
    types = entry.get("image_type", [])
    types = [types] if isinstance(types, str) else types
    if not isinstance(types, Sequence) or any(t not in IMAGE_TYPES for t in types):
        raise NucleiError(f"{where}: image_type must be one or a list of {', '.join(IMAGE_TYPES)}, got {types!r}")
    fraction = entry.get("nucleus_fraction_above")
    if fraction is not None and (not is_number(fraction) or not 0 < fraction < 1):
        raise NucleiError(f"{where}: nucleus_fraction_above must be a number between 0 and 1, got {fraction!r}")
    if not types and fraction is None:
        raise NucleiError(f"{where}: no rule (image_type or nucleus_fraction_above): it would never run")
    return Route(name, folder, tuple(types), None if fraction is None else float(fraction))


def legacy_routes(values: Mapping, source: str) -> tuple[Route, ...]:
    """The routes of a folder written before ``networks`` (module docstring): ``stained_model``
    runs :data:`~pipeline.config.params.HISTOLOGY` images; ``dense_model`` runs again, when the nucleus share exceeds
    ``dense_fraction``, the other types' images (stained images were never run again).

    Raises
    ------
    NucleiError
        ``dense_model`` without ``dense_fraction`` or the reverse, or a value :func:`read_routes` refuses.
    """
    stained, dense, fraction = (values.get(k) for k in ("stained_model", "dense_model", "dense_fraction"))
    if (dense is None) != (fraction is None):
        raise NucleiError(f"{source}: dense_model and dense_fraction are given together or not at all")
    entries = []
    if stained is not None:
        entries.append({"name": "stained", "folder": stained, "image_type": [HISTOLOGY]})
    if dense is not None:
        entries.append({"name": "dense", "folder": dense, "nucleus_fraction_above": fraction,
                        "image_type": [t for t in IMAGE_TYPES if t != HISTOLOGY]})
    return read_routes(entries, source)


def is_inner(value: Any) -> bool:
    """Whether ``value`` is a relative POSIX path of plain names (no ``..``, no ``.``, not absolute)."""
    parts = value.split("/") if isinstance(value, str) else []
    return bool(parts) and not any(part in ("", ".", "..") or "\\" in part for part in parts)

