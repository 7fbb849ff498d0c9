"""Files that are replaced whole or not at all.

A run killed mid-write must leave the previous file intact, never a truncated
one (an emptied config.json made every later run of its workdir fail). Every
writer in the package goes through here: the new content goes to a temporary
sibling, is flushed to disk, and is renamed over the target. On any failure,
Ctrl-C included, the temporary file is removed and the target is untouched.

The sibling is ``path.tmp`` for files one process writes (a run's files, written
by process 0 under the workdir lock): a SIGKILL's leftover is then replaced by
the next write of the same file. Files that several processes may write at once
(the shared data cache) ask for ``unique=True``: a name carrying host and pid
(``processes.temp_path``), whose orphans ``processes.remove_orphaned_temp_files``
clears.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO

from melgenre_jax.runtime import processes


def _fsync(path: str) -> None:
  with open(path, 'rb') as f:
    os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(path: str, suffix: str = '', unique: bool = False) -> Iterator[str]:
  """A temporary path to build ``path``'s new content in; renamed over it on success.

  For writers that want a file name rather than a file object (``onnx.save``, a
  copy of an audio file whose tags are then edited). ``suffix`` keeps an
  extension a writer insists on.
  The body may raise to abandon the write: the temporary file is removed and
  ``path`` keeps its old content.
  """
  tmp = (processes.temp_path(path) if unique else path + '.tmp') + suffix
  try:
    yield tmp
    _fsync(tmp)
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(OSError):
      os.remove(tmp)


@contextlib.contextmanager
def replaced_when_written(path: str, mode: str = 'w', unique: bool = False,
                          **kwargs) -> Iterator[IO]:
  """A file object for ``path``'s new content; it replaces ``path`` when the block ends."""
  with replacing(path, unique=unique) as tmp:
    with open(tmp, mode, **kwargs) as f:
      yield f


def write_bytes(path: str, data: bytes | bytearray | str, unique: bool = False) -> None:
  """Writes ``data`` (bytes, or text as UTF-8) to ``path`` atomically and durably."""
  text = isinstance(data, str)
  with replaced_when_written(path, 'w' if text else 'wb', unique=unique,
                             **({'encoding': 'utf-8'} if text else {})) as f:
    f.write(data)
