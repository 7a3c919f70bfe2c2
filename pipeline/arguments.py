"""Number options of the command line, checked where argparse reads them.

Every subcommand builds its number options' ``type`` here, so one kind of mistake reads the same in
every command and is reported before any work starts::

    $ nuclei segment img/ -o out --diameter 0
    nuclei segment: error: argument --diameter: 0: expected a number above 0

Must not: hold the checks of ``params.yaml`` (:mod:`pipeline.config.params`) or of a model folder's
``config.yaml`` (:mod:`pipeline.config.model_folder`); those name the file, not the option.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

NONE_WORDS = ("none", "null")


def number(*, above: float | None = None, at_least: float | None = None, at_most: float | None = None,
           none: bool = False, integer: bool = False) -> Callable[[str], float | int | None]:
    """An argparse ``type``: option text → a finite number within the bounds.

    ``above`` and ``at_least`` are exclusive and inclusive lower bounds, ``at_most`` an inclusive
    upper one. With ``integer`` the value is an ``int``; with ``none``, 'none' (or 'null') gives
    ``None``. Anything else raises :class:`argparse.ArgumentTypeError` saying what was expected.
    """
    what = _expected(above, at_least, at_most, none, integer)

    def parse(text: str) -> float | int | None:
        if none and text.strip().lower() in NONE_WORDS:
            return None
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (above is None or value > above)
                and (at_least is None or value >= at_least) and (at_most is None or value <= at_most)):
            raise argparse.ArgumentTypeError(f"{text}: expected {what}")
        return value

    parse.__name__ = what  # argparse names the type by it in its own messages
    return parse


def _expected(above, at_least, at_most, none, integer) -> str:
    """What ``number``'s bounds accept, in words: 'a number above 0', 'a whole number from 1 to 100'."""
    bounds = [f"above {above:g}"] if above is not None else []
    if at_least is not None and at_most is not None:
        bounds.append(f"from {at_least:g} to {at_most:g}")
    else:
        bounds += [f">= {at_least:g}"] if at_least is not None else []
        bounds += [f"<= {at_most:g}"] if at_most is not None else []
    what = " ".join(["a whole number" if integer else "a number", " and ".join(bounds)]).strip()
    return f"{what} or 'none'" if none else what


#: A positive number: a size, a distance, a pixel side.
POSITIVE = number(above=0)
