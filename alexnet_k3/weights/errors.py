"""The errors of the weights package, in a module of their own so that every
reader and the loader raise the same classes without importing each other."""

from __future__ import annotations


class WeightsError(ValueError):
    """A checkpoint or weights file that cannot be loaded into the model.

    The message names the file (or says it was a mapping), the problem and what
    to do about it.
    """


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """The weights path does not exist (also a `FileNotFoundError`)."""
