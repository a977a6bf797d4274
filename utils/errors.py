"""The errors a user can cause. Each message is one sentence that names the file or value and the fix;
each script's main() prints it and exits with status 2, so a user sees that
sentence and no traceback.

The classes also derive from the built-in exception a caller would otherwise catch (a missing file is
a ``FileNotFoundError``, a bad value a ``ValueError``), so library callers need not know this module.
"""

from __future__ import annotations

from models.errors import ModelConfigError


class UserError(Exception):
    """Base of every error a user can fix by changing an input."""


class DataError(UserError, ValueError):
    """An unusable dataset YAML, image list, label set or image."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset YAML, image folder or list that does not exist."""


class ImageError(DataError):
    """An image handed to the detector that cannot be used: unreadable, or an array of the wrong shape or
    dtype."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An image path that does not exist."""


class ConfigError(UserError, ValueError):
    """An unusable model YAML, hyperparameter file or run option."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A hyperparameter file that does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used (missing, corrupt, foreign or of the wrong form)."""


class DeviceError(UserError, ValueError):
    """A device that does not exist on this machine."""


class WeightsError(UserError, ValueError):
    """Weights that inference cannot load (an unknown suffix, an export without metadata)."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Weights that do not exist."""


class ConversionError(UserError, RuntimeError):
    """A conversion or export refused because its result would not match the trained model."""


# What the scripts catch to print one sentence and exit with status 2.
USER_ERRORS = (UserError, ModelConfigError)
