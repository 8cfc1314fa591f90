"""The one exception type users see: a clear one-line message naming the file and the problem."""


class FastMetroError(Exception):
    """A user-facing error (bad input file, bad config, missing asset).

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    """
