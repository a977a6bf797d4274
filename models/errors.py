"""The error a model YAML can cause. ``utils.errors.USER_ERRORS`` includes it, so the scripts print its
one sentence (naming the YAML, the row and the fix) instead of a traceback."""

from __future__ import annotations


class ModelConfigError(ValueError):
    """A model YAML, or a row of it, that cannot be built."""


class ModelConfigNotFoundError(ModelConfigError, FileNotFoundError):
    """A model YAML that does not exist."""
