"""The error of one unusable dataset row."""

from __future__ import annotations

import ast
import os
import re

from fastmetro.errors import FastMetroError, one_line_message

_MESSAGE = re.compile(r"^(?P<source>.*?): row (?P<key>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"): (?P<problem>.*)$", re.S)


class BadRowError(FastMetroError):
    """One row of a dataset is unusable. ``str(error)`` = ``"<file>: row <key>: <problem>"``.

    PyTorch re-creates an exception raised in a DataLoader worker as ``type(error)(text)`` with
    the worker's traceback in ``text``; given one argument, this class keeps only the original
    line (and reads the file, key and problem back from it), so the user still sees one line
    naming the file and the row key.
    """

    def __init__(self, source: str | os.PathLike, key: str | None = None, problem: str | None = None):
        if key is None and problem is None:
            message = one_line_message(str(source))
            self.source, self.key, self.problem = "", "", message
            parsed = _MESSAGE.match(message)
            if parsed:
                self.source, self.problem = parsed["source"], parsed["problem"]
                self.key = ast.literal_eval(parsed["key"])
            super().__init__(message)
            return
        self.source, self.key, self.problem = str(source), str(key), str(problem)
        super().__init__(f"{self.source}: row {self.key!r}: {problem}")


__all__ = ["BadRowError", "one_line_message"]
