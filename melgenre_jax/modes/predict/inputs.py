"""Which files a predict run reads: paths, folders and wildcards, and each file's stamp."""

from __future__ import annotations

import dataclasses
import datetime
import glob
import os

from melgenre_jax.data import audio
from melgenre_jax.data import folders


def expand_paths(paths: list[str] | tuple[str, ...]) -> list[tuple[str, str | None]]:
  """Files as given, folders searched recursively for supported extensions.

  Linked folders are searched too; a link loop, or a folder reached twice, is
  read once with a warning (``data.folders``).

  A path that does not exist but holds a wildcard (``*.flac``, quoted so the
  shell left it alone, or a shell without globbing) is expanded here.
  Returns ``(path, problem)`` pairs: ``problem`` is None for a file to try, or
  the reason a given path yields nothing (a missing path, an empty folder).
  Order: as given, folder contents sorted; duplicates kept once.
  """
  out: list[tuple[str, str | None]] = []
  seen = set()

  def add(path, problem=None):
    if path not in seen:
      seen.add(path)
      out.append((path, problem))

  for path in _expand_wildcards(paths):
    if os.path.isdir(path):
      found = folders.files_under(path, audio.has_supported_extension)  # links followed
      if not found:
        add(path, 'folder holds no audio files with a supported extension ('
            + ', '.join(sorted(audio.SUPPORTED_EXTENSIONS)) + ')')
      for f in found:
        add(f)
    elif not os.path.exists(path):
      add(path, 'file not found')
    else:
      add(path)
  return out


def _expand_wildcards(paths: list[str] | tuple[str, ...]) -> list[str]:
  out = []
  for path in paths:
    matches = (sorted(glob.glob(path, recursive=True))
               if not os.path.exists(path) and glob.has_magic(path) else [])
    out.extend(matches or [path])
  return out


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class Stamp:
  """What says a file is still the one a CSV row was made from.

  ``size_bytes`` and ``mtime`` are '' for a path that cannot be stat'ed (a
  missing file), so its 'file not found' row also matches on a re-run.
  """

  path: str  # absolute: the same file is the same row from any working directory
  size_bytes: str
  mtime: str  # UTC, ISO 8601 to the microsecond: exact to compare, readable in a sheet


def stamp(path: str) -> Stamp:
  try:
    st = os.stat(path)
  except OSError:
    return Stamp(os.path.abspath(path), '', '')
  when = _EPOCH + datetime.timedelta(microseconds=st.st_mtime_ns // 1000)  # exact, no float
  return Stamp(os.path.abspath(path), str(st.st_size),
               when.strftime('%Y-%m-%dT%H:%M:%S.%fZ'))
