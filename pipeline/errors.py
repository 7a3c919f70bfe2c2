"""The exception types for problems a user can cause (bad files, bad parameters), and the exit
statuses of every ``nuclei`` command.

Must not: import anything from the package (every module imports it).
"""

import os
import sys
from contextlib import contextmanager

#: Exit statuses of every command: done; some or all of the work failed (a :class:`NucleiError`);
#: a usage error found before any work (bad options, inputs or outputs: :class:`UsageError`, or
#: argparse's own); interrupted (Ctrl-C).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class NucleiError(Exception):
    """A user-facing error: one line that names the file and the problem.

    The command line prints it as ``nuclei: error: <message>`` without a traceback.
    """


class UsageError(NucleiError):
    """What the user asked for cannot be done, found before any work: an invalid option, no
    input, a missing model, an unusable output folder. The command line exits with
    :data:`EXIT_USAGE`."""


@contextmanager
def before_work():
    """A block that checks what the user asked for: a :class:`NucleiError` raised in it becomes a
    :class:`UsageError` (nothing has been done yet)."""
    try:
        yield
    except UsageError:
        raise
    except NucleiError as exc:
        raise UsageError(str(exc)) from None


class OutputError(NucleiError):
    """An output file could not be written (disk full, read-only, a folder in its place)."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def run_main(main, prog: str | None = None) -> int:
    """Run a command's ``main()`` and return its exit status, a user's error as one line.

    A :class:`UsageError` prints ``<prog>: error: <message>`` and gives :data:`EXIT_USAGE`; any
    other :class:`NucleiError` the same line and :data:`EXIT_FAILED`; Ctrl-C ``<prog>: interrupted``
    and :data:`EXIT_INTERRUPTED`; output piped into ``head`` and closed early, :data:`EXIT_OK`.
    ``prog`` defaults to the running script's file name. Every other exception propagates (a bug:
    its traceback is wanted). Used by ``nuclei`` and by every script in ``benchmarks/`` and ``scripts/``.
    """
    prog = prog or os.path.basename(sys.argv[0]) or "nuclei"
    try:
        return int(main() or 0)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NucleiError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
