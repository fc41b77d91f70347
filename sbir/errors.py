"""Errors a user can cause and fix (bad path, unknown name, corrupt download).

The command-line tools print these as one line and exit non-zero, without a traceback; anything else
is a bug and keeps its traceback.
"""


class SbirError(Exception):
    """A user-facing error: the message names the file or value and what is wrong with it."""


class BadImage(SbirError):
    """An input image that cannot be used (empty, truncated, not an image, unsupported)."""
