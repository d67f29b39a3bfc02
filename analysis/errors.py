"""Errors raised at the library's boundaries.

Every error a user can cause (a bad file, a wrong checkpoint, an unknown option) is a ``DE3Error``: its
message names the file, row, column or field at fault and says what to do. The CLI prints it on one line
and exits with a non-zero code; the app shows it with ``st.error``. Anything else is a bug.
"""


class DE3Error(Exception):
    """Base class of every user-facing error in this package."""


class DataError(DE3Error, ValueError):
    """A data file or data spec cannot be used (missing column, empty file, a single class, ...)."""


class CheckpointError(DE3Error, ValueError):
    """A checkpoint folder is missing a file, or its config and weights disagree."""
