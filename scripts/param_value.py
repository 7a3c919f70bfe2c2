"""Print settings of a parameters file, read and checked as every stage reads it.

    python -m scripts.param_value PARAMS data.prepared [train.out ...]

One value a line (``section.key``, or ``seed``); for shell scripts such as ``scripts/gpu_train.sh``,
so that they read the parameters through :func:`pipeline.config.params.load_config`, not as raw
YAML. An unknown setting or an invalid file is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config.params import load_config
from pipeline.errors import UsageError


def param_value(config, name: str, params: str | Path = "params.yaml"):
    """The value of ``name`` (``section.key`` or ``seed``) in a checked ``config``
    (:func:`pipeline.config.params.load_config` of the file ``params``)."""
    value = config
    for part in name.split("."):
        if not hasattr(value, part) or part.startswith("_"):
            raise UsageError(f"{params}: no setting {name!r}")
        value = getattr(value, part)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", help="a parameters file (params.yaml)")
    parser.add_argument("names", nargs="+", help="settings, as section.key (or seed)")
    args = parser.parse_args(argv)
    config = load_config(args.params)
    for name in args.names:
        print(param_value(config, name, args.params))
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
