"""The error of one unusable dataset row, and the one-line message inside a DataLoader worker's error."""

from __future__ import annotations

from fastmetro.errors import FastMetroError


def one_line_message(text: str) -> str:
    """The original one-line message inside an error text re-raised by a DataLoader worker."""
    if "Original Traceback" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line:
            head, sep, tail = line.partition(": ")
            # "fastmetro.data.tsv.BadRowError: <message>"
            return tail if sep and "Error" in head and " " not in head else line
    return text


class BadRowError(FastMetroError):
    """One row of a dataset is unusable. ``str(error)`` = ``"<file>: row <key>: <problem>"``.

    PyTorch re-creates an exception raised in a DataLoader worker as ``type(error)(text)`` with
    the worker's traceback in ``text``; given one argument, this class keeps only the original
    line, so the user still sees one line naming the file and the row key.
    """

    def __init__(self, source: str, key: str | None = None, problem: str | None = None):
        if key is None and problem is None:
            message = one_line_message(str(source))
            self.source, self.key, self.problem = "", "", message
            super().__init__(message)
            return
        self.source, self.key, self.problem = str(source), str(key), str(problem)
        super().__init__(f"{self.source}: row {self.key!r}: {problem}")
