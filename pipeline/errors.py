"""The one exception type for problems a user can cause (bad files, bad parameters).

Must not: import anything from the package (every module imports it).
"""


class NucleiError(Exception):
    """A user-facing error: one line that names the file and the problem.

    The command line prints it as ``nuclei: error: <message>`` without a traceback.
    """
