"""The project's error classes, in one module every layer can import.

Errors about bad input derive from `UserError`: the command line prints their
one-line message alone (`error: ...`, exit status 1), without a traceback.
"""


class UserError(ValueError):
  """A problem the user can fix: its message names the cause and the fix."""


class NotFoundError(UserError, FileNotFoundError):
  """A file or folder the command needs (a config, a run's files) is missing."""


class ConfigError(UserError):
  """A config that cannot run: a missing file, an unknown field, a bad or unfitting value."""


class DistributedConfigError(ConfigError):
  """`config.distributed` asks for something the environment cannot give."""


class DatasetNotPreparedError(UserError):
  """A tfds data set is not prepared and the input pipeline will not download it."""


class BadImageError(UserError):
  """Image files that cannot be decoded, found with `on_bad_image='fail'`."""


class CheckpointMismatchError(UserError):
  """A checkpoint was written for another model or data set than the one asked for."""


class NoCheckpointError(NotFoundError):
  """A path holds no checkpoint, or none of its checkpoints can be read."""


class NonFiniteError(UserError, FloatingPointError):
  """Training produced a NaN or infinite loss or norm."""
