"""The one exception type for problems a user can cause (bad files, bad parameters)."""


class NucleiError(Exception):
    """A user-facing error: one line that names the file and the problem.

    The command line prints it as ``nuclei: error: <message>`` without a traceback.
    """
