"""Errors raised for bad input.

Every stage checks its inputs before writing anything. Problems with files given by the user
raise :class:`InputError` whose message is ONE line naming the file and what is wrong; the
scripts catch it, print ``error: <message>`` and exit with status 2 (see ``utils.cli.run_main``).
"""

from __future__ import annotations

import os


class InputError(Exception):
    """A user-supplied file or folder is missing or malformed.

    Args:
        path: the offending file or folder (may be None when no single file is to blame).
        problem: what is wrong, in a few words.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
