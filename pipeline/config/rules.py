"""Rules for configuration values: each checks one value, converts it, or says what it must be;
and :class:`Section`, the base of the dataclasses that apply them.

A rule is ``value -> value`` (ints become floats for numbers) raising :class:`Invalid` with the
description (``"a whole number ≥ 1"``); :class:`Section` turns that into a
one-line :class:`~pipeline.errors.NucleiError` naming the file and ``section.key``. :func:`setting`
declares a dataclass field with its default and its rule.

Must not: import any module of the package but :mod:`pipeline.errors`, or read files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.errors import NucleiError

#: Folder layouts of a labelled source (``data.sources.<name>.layout``; read by
#: :mod:`pipeline.data.sources`).
LAYOUTS = ("kaggle", "folder")


class Invalid(Exception):
    """A value broke a rule; the argument says what the value must be."""


Rule = Callable[[Any], Any]  # value -> value (possibly converted), or raise Invalid


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(lo: float | None = None, hi: float | None = None, above: bool = False) -> Rule:
    """A real number (ints become floats) in [lo, hi] (``above``: strictly above ``lo``)."""
    bounds = "" if lo is None else f" {'>' if above else '≥'} {lo}"
    if hi is not None:
        bounds = f" in [{lo}, {hi}]"

    def rule(value):
        ok = is_number(value) and (lo is None or (value > lo if above else value >= lo))
        if not ok or (hi is not None and value > hi):
            raise Invalid(f"a number{bounds}")
        return float(value)

    return rule


def whole(lo: int = 0) -> Rule:
    """A whole number ≥ ``lo``."""

    def rule(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise Invalid(f"a whole number ≥ {lo}")
        return value

    return rule


def choice(values: tuple) -> Rule:
    """One of ``values``."""

    def rule(value):
        if value not in values:
            raise Invalid(f"one of {', '.join(map(str, values))}")
        return value

    return rule


def optional(inner: Rule) -> Rule:
    """None, or a value ``inner`` accepts."""

    def rule(value):
        if value is None:
            return None
        try:
            return inner(value)
        except Invalid as exc:
            raise Invalid(f"null or {exc}") from None

    return rule


def flag(value: Any) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def text(value: Any) -> str:
    """A string (a path or a name)."""
    if not isinstance(value, (str, Path)):
        raise Invalid("a string")
    return str(value)


def switch(value: Any) -> bool | float:
    """An augmentation switch: true (the default probability), false / null (off) or a probability."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise Invalid("true, false or a probability in [0, 1]")
    return float(value)


def positive_range(value: Any) -> list[float]:
    """[low, high] with 0 < low ≤ high."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(is_number(v) for v in value)
        or not 0 < value[0] <= value[1]
    ):
        raise Invalid("[low, high] with 0 < low ≤ high")
    return [float(v) for v in value]


def zoom_range(value: Any) -> list[float] | None:
    """null / false (no zoom) or [low, high] with 0 < low ≤ high."""
    if value is None or value is False:
        return None
    try:
        return positive_range(value)
    except Invalid:
        raise Invalid("null or [low, high] with 0 < low ≤ high") from None


def mapping(value: Any) -> dict:
    """A mapping (``{}`` for null)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid("a mapping {name: path}")
    return dict(value)


def factors(value: Any) -> dict[str, float]:
    """A mapping ``{name: factor}`` of numbers > 0 (``{}`` for null)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and is_number(v) and v > 0
                                               for k, v in value.items()):
        raise Invalid("a mapping {source: factor > 0}")
    return {k: float(v) for k, v in value.items()}


def sources(value: Any) -> dict[str, dict[str, Any]]:
    """Labelled sources ``{name: {root: path, layout: kaggle | folder[, groups: TABLE, group_by:
    [COLUMN, ...]]}}``, at least one; a name is a folder name (letters, digits, ``_``, ``-``,
    ``.``). ``groups`` names a table in the root (CSV, any separator) whose first column is the
    image id: the images' experiment groups are then the values of its ``group_by`` columns
    instead of clusters of acquisition features."""
    shape = f"a mapping {{name: {{root: path, layout: {' | '.join(LAYOUTS)}}}}} with at least one source"
    if not isinstance(value, dict) or not value:
        raise Invalid(shape)
    checked = {}
    for name, source in value.items():
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name) \
                or name.startswith("."):
            raise Invalid(f"{shape}; {name!r} is not a folder name")
        if not isinstance(source, dict) or set(source) - {"root", "layout", "groups", "group_by"} \
                or "root" not in source:
            raise Invalid(f"{shape}; source {name!r} needs root (and layout)")
        layout = source.get("layout", "kaggle")
        if layout not in LAYOUTS or not isinstance(source["root"], (str, Path)):
            raise Invalid(f"{shape}; source {name!r} has layout {layout!r}")
        checked[name] = {"root": str(source["root"]), "layout": layout}
        if "groups" in source or "group_by" in source:
            table, by = source.get("groups"), source.get("group_by")
            if not isinstance(table, str) or not table or not isinstance(by, list) or not by \
                    or not all(isinstance(c, str) and c for c in by):
                raise Invalid(f"{shape}; source {name!r}: groups needs a table file and group_by a list of its columns")
            checked[name] |= {"groups": table, "group_by": list(by)}
    return checked


def fold(value: Any) -> int | str | None:
    """null, a fold number ≥ 0, or a source name (leave-one-source-out)."""
    if value is None or (isinstance(value, str) and value):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid("null, a whole number ≥ 0 or a source name")
    return value


def setting(default: Any, rule: Rule) -> Any:
    """A dataclass field with its default and its rule."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class Section:
    """Base of the section dataclasses: checking a mapping, and back to a mapping."""

    NAME: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, values: Mapping | None, source: str | Path = "params.yaml") -> Section:
        """Check ``values`` (a section of ``source``; None = all defaults) into a section.

        Raises
        ------
        NucleiError
            ``<source>: unknown key 'section.key' ...`` or ``<source>: section.key must be ...``.
        """
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise NucleiError(f"{source}: section '{cls.NAME}' must be a mapping")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in fields]
        if unknown:
            raise NucleiError(
                f"{source}: unknown key '{cls.NAME}.{unknown[0]}' (known: {', '.join(fields)})"
            )
        checked = {}
        for name, value in values.items():
            try:
                checked[name] = fields[name].metadata["rule"](value)
            except Invalid as exc:
                raise NucleiError(f"{source}: {cls.NAME}.{name} must be {exc}, got {value!r}") from None
        section = cls(**checked)
        section.check(source)
        return section

    def check(self, source: str | Path) -> None:
        """Rules between values (override); raise :meth:`error`."""

    def error(self, source: str | Path, message: str) -> NucleiError:
        return NucleiError(f"{source}: {message}")

    def to_dict(self) -> dict[str, Any]:
        """The section as a plain mapping (params.yaml order and spelling)."""
        return dataclasses.asdict(self)

    def replace(self, source: str | Path = "params.yaml", **changes: Any) -> Section:
        """A copy with ``changes`` (checked like the values of ``source``)."""
        return type(self).from_dict({**self.to_dict(), **changes}, source)
