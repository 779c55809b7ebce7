"""The one exception type for bad training data."""

from __future__ import annotations


class DataError(ValueError):
    """A data system (or a file in it) is missing, malformed or inconsistent.

    Raised when the data are *opened*, never half-way through training. The message
    names the file (and the frame, key or element where that helps) and says what
    was expected. It derives from :class:`ValueError`, so the command line prints it
    as a one-line error.
    """
