"""The one exception type for problems a user can cause (bad files, bad parameters).

Must not: import anything from the package (every module imports it).
"""


class NucleiError(Exception):
    """A user-facing error: one line that names the file and the problem.

    The command line prints it as ``nuclei: error: <message>`` without a traceback.
    """


class OutputError(NucleiError):
    """An output file could not be written (disk full, read-only, a folder in its place)."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
