"""Telling a full disk from other write failures, wherever it surfaces.

A full disk reaches the code in several shapes: a plain ``OSError`` with
ENOSPC/EDQUOT from our own writes, and from Orbax a ``ValueError`` wrapping
tensorstore's text (its background write fails, and the error surfaces from a
later call). The checkpoint guard and the cache builder both ask here, so both
recognise the same cases.
"""

from __future__ import annotations

import errno
import os
import shutil

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How tensorstore (Orbax) and SQLite (Optuna) word it when no errno survives.
_FULL_TEXT = ('No space left on device', "os_error_code='28'", 'Disk quota exceeded',
              'database or disk is full')


def is_disk_full(exc: BaseException | None) -> bool:
  """True when ``exc``, or an exception it was raised from or during, is a full disk."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
      return True
    if any(text in str(exc) for text in _FULL_TEXT):
      return True
    exc = exc.__cause__ or exc.__context__
  return False


def free_space(path: str) -> str:
  """Free space of the file system holding ``path`` (its nearest existing folder), in words."""
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    free = shutil.disk_usage(path or '/').free
  except OSError:
    return 'unknown space'
  return f'{free / 2 ** 20:.1f} MiB'
