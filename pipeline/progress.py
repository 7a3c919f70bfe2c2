"""Progress of long work: a tqdm bar on stderr, hidden when stderr is no terminal or under ``CI``.

Must not: import any other module of the package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def progress(iterable: Iterable, desc: str = "", total: int | None = None, unit: str = "img"):
    """Wrap ``iterable`` in a tqdm progress bar on stderr (hidden when stderr is no terminal)."""
    from tqdm.auto import tqdm

    disable = None if not os.environ.get("CI") else True
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, file=sys.stderr)
