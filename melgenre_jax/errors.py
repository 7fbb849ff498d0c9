"""The errors whose message tells the user what to do.

``main.py`` prints a ``UserError`` as one line, without a traceback, and exits
with status 1: the message names the field, file or step and the fix. Anything
else is a bug and keeps its traceback. Each class also derives from the
built-in it refines, so ``except ValueError`` keeps working for callers.
"""

from __future__ import annotations


class UserError(Exception):
  """Bad input or a run that cannot go on; the message says what to do."""


class ConfigError(UserError, ValueError):
  """A configuration or flag value is out of range; the message names the field."""


class DataError(UserError, ValueError):
  """The dataset (folder, manifest, split lists) cannot give a usable run."""


class MissingPathError(ConfigError, FileNotFoundError):
  """A path the config names (data root, manifest) does not exist."""


class OutputPathError(ConfigError):
  """An output file or folder cannot be written (a folder where a file goes, no
  permission, another format's file); raised before any audio is decoded."""


class NotGtzanError(DataError, FileNotFoundError):
  """``config.data.root`` holds no GTZAN genre folder in any known layout."""


class WorkdirError(UserError, FileNotFoundError):
  """The workdir lacks what the mode needs (a config, a checkpoint)."""


class NonFiniteError(UserError, RuntimeError):
  """The loss or a gradient became NaN/Inf; the poisoned update was not applied."""


class NothingClassifiedError(UserError, RuntimeError):
  """No input file could be classified; the message lists each file's reason."""


class WorkdirBusyError(UserError):
  """Another live process owns the workdir (train, tune); the message names it."""


class DiskFullError(UserError, OSError):
  """A write failed because the disk is full; the message says where and what is intact."""


class PeerLostError(UserError, RuntimeError):
  """A process of a multi-host run died or stopped answering; the message names it."""
