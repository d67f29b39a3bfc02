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


class CurveError(DE3Error, ValueError):
    """Curves or a comparison were asked for something the data cannot give (unknown λ, bad speed-ups...)."""


# ---- keeping messages on one readable line (a 5 MB line or a 10,000-class column must not fill a screen) ----


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception's message squeezed onto one line and cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(value, limit: int = 60) -> str:
    """``repr`` of a value for a message; a long string is cut to ``limit`` characters (with "...") first."""
    if isinstance(value, str) and len(value) > limit:
        value = value[: limit - 3] + "..."
    text = repr(value)
    return text if len(text) <= limit + 2 else text[: limit - 3] + "..."


def name_list(names, limit: int = 12, width: int = 40, quote: bool = False) -> str:
    """At most ``limit`` names, each cut to ``width`` characters (``repr``-quoted with ``quote``), and how many
    more there are."""
    def one(name) -> str:
        name = str(name) if len(str(name)) <= width else str(name)[: width - 3] + "..."
        return repr(name) if quote else name

    names = list(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(one(n) for n in names[:limit]) + more
