"""The ``nuclei`` command line: one subcommand per stage, dispatched to its module.

Each command module exposes ``add_arguments(parser)`` and ``main(args) -> int``; modules are
imported only when their command runs, so that ``nuclei score`` never imports torch. ``nuclei
--help`` lists the commands in the groups of :data:`GROUPS`, as git and dvc do.

Must not: hold stage logic; each command's module parses its own options and runs.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import textwrap

from pipeline import __version__
from pipeline.errors import run_main

#: command → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("pipeline.batch.segment", "segment, count and measure nuclei in your own images"),
    "measure": ("pipeline.batch.measure", "measure label images you already have (napari, Cellpose, StarDist, "
                "QuPath): nuclei segment's tables and report"),
    "export": ("pipeline.batch.export", "label images (any tool) -> QuPath GeoJSON and/or Fiji ROI sets"),
    "finetune": ("pipeline.training.finetune", "adapt a model to your images from a few annotated ones"),
    "export-model": ("pipeline.model.interchange", "each network as TorchScript, ONNX or a bioimage.io package"),
    "prepare": ("pipeline.stages.prepare", "stage: Kaggle layout -> label maps, index, folds"),
    "targets": ("pipeline.stages.targets", "stage: label maps -> 3-class targets and weight maps"),
    "train": ("pipeline.stages.train", "stage: train the U-Net"),
    "predict": ("pipeline.stages.predict", "stage: probability maps for the validation fold"),
    "postprocess": ("pipeline.stages.postprocess", "stage: marker-controlled watershed -> instance labels"),
    "tune": ("pipeline.stages.tune", "grid-search post-processing thresholds on the validation fold"),
    "evaluate": ("pipeline.stages.evaluate", "stage: competition metric and companions on the validation fold"),
    "submit": ("pipeline.stages.submit", "write a Kaggle submission for a test folder"),
    "score": ("pipeline.stages.score", "score a submission against a solution (DSB2018 metric)"),
    "average": ("pipeline.model.average", "the weighted mean of model directories (a model soup)"),
    "widen": ("pipeline.model.widen", "a plain U-Net widened, computing what it computed (a warm start)"),
    "quantise": ("pipeline.model.quantise", "add int8 networks to a model folder (OpenVINO; faster on CPUs)"),
    "pack": ("pipeline.data.pack", "prepared training data <-> small archives (to carry to a GPU machine)"),
}

#: ``nuclei --help``'s groups of commands: title → commands, each command of :data:`COMMANDS` in one.
GROUPS: dict[str, tuple[str, ...]] = {
    "analyse your images": ("segment", "measure", "export", "finetune", "export-model"),
    "the DVC stages and scoring": ("prepare", "targets", "train", "predict", "postprocess", "tune", "evaluate",
                                   "submit", "score"),
    "model tools": ("average", "widen", "quantise", "pack"),
}


def command_list(width: int | None = None) -> str:
    """The commands and their one-line help under the titles of :data:`GROUPS`, wrapped to ``width``
    characters (default: the terminal's, as argparse's)."""
    width = (shutil.get_terminal_size().columns - 2) if width is None else width
    indent = max(map(len, COMMANDS)) + 4
    blocks = []
    for title, names in GROUPS.items():
        lines = [f"{title}:"]
        for name in names:
            lines += textwrap.wrap(COMMANDS[name][1], max(width, indent + 20), initial_indent=f"  {name:<{indent - 2}}",
                                   subsequent_indent=" " * indent)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _command_from_argv(argv: list[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, import just that command's module to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="nuclei", usage="%(prog)s [-h] [--version] COMMAND ...",
        description=f"Nucleus instance segmentation (DSB2018 recipe).\n\n{command_list()}",
        epilog="'nuclei COMMAND --help' shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nuclei {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help=argparse.SUPPRESS,
                                prog="nuclei")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``nuclei``; returns the exit status (:data:`pipeline.errors.EXIT_OK` 0,
    ``EXIT_FAILED`` 1, ``EXIT_USAGE`` 2 (a :class:`~pipeline.errors.UsageError` or argparse's),
    ``EXIT_INTERRUPTED`` 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_from_argv(argv)

    def run() -> int:
        args = build_parser(command).parse_args(argv)
        return int(args._main(args) or 0)

    return run_main(run, "nuclei")


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
