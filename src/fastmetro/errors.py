"""The one exception type users see: a clear one-line message naming the file and the problem."""

import re


def one_line_message(text: str) -> str:
    """The original one-line message inside an error text re-raised by a DataLoader worker.

    PyTorch re-creates an exception raised in a worker process as ``type(error)(text)`` where
    ``text`` is "Caught X in DataLoader worker process N. Original Traceback ...", ending with the
    line ``"<module>.<Class>: <message>"``; this returns ``<message>``. Other text is returned as is.
    """
    if "Original Traceback" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line:
            head, sep, tail = line.partition(": ")
            # "fastmetro.errors.FastMetroError: <message>"
            return tail if sep and "Error" in head and " " not in head else line
    return text


class FastMetroError(Exception):
    """A user-facing error (bad input file, bad config, missing asset).

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback. Raised in
    a DataLoader worker, it reaches the main process with its one-line message (not the worker's
    traceback that PyTorch puts into the re-created exception). A message is always one line:
    line breaks (e.g. from a numpy array's repr) become spaces.
    """

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (re.sub(r"\s*\n\s*", " ", one_line_message(args[0]).strip()),)
        super().__init__(*args)
