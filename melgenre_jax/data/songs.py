"""The unit of a dataset: a song. Splits, caching and song-level metrics all key on it.

A song is a file, not a name: ``identify`` makes one song of the same file
reached by two paths (a symlink, ``./a.wav`` and ``/data/a.wav``) and marks
byte-identical copies under two names (common in real libraries) with one
``content`` id, which the splits keep on one side (``stratify.unit_key``) and
``stratify.check_disjoint`` refuses across sides. A copy on the train side of
a test song is exactly the leak that inflates a score.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from melgenre_jax import errors

# Bytes read to tell same-sized files apart before hashing them whole.
_PREFIX_BYTES = 64 * 1024
_CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Song:
  """One song of a dataset.

  Attributes:
    key: stable unique id, e.g. ``blues/blues.00000.wav`` (path relative to the
      dataset root) or ``synthetic/reggae/0007``. Published split lists and
      caches refer to songs by it.
    path: absolute file path; '' for generated (synthetic) songs.
    genre: genre name (the label).
    group: artist/album; a split keeps every song of a group on one side.
    split: split given by the source (manifest column), else None.
    tags: every tag of the song for ``config.task='multilabel'`` (a manifest
      label ``rock;guitar;fast``, or the synthetic set's tags), ``genre`` being
      the first; () for a single-label song (its one tag is ``genre``).
    content: the SHA-256 (hex, 16 digits) of the file's bytes when another song
      has the very same bytes, else ''; songs sharing it stay on one side.
  """

  key: str
  path: str
  genre: str
  group: str | None = None
  split: str | None = None
  tags: tuple[str, ...] = ()
  content: str = ''


def song_tags(song: Song) -> tuple[str, ...]:
  """The song's tags for multi-label tagging: its own, else just its genre."""
  return song.tags or (song.genre,)


# ----------------------------------------------------------------------------
# Identity: the same file, the same bytes.


def _digest(path: str, limit: int | None = None) -> str | None:
  """SHA-256 of the file's first ``limit`` bytes (all: None); None when unreadable."""
  h = hashlib.sha256()
  try:
    with open(path, 'rb') as f:
      left = limit
      while left is None or left > 0:
        chunk = f.read(_CHUNK_BYTES if left is None else min(left, _CHUNK_BYTES))
        if not chunk:
          break
        h.update(chunk)
        if left is not None:
          left -= len(chunk)
  except OSError:
    return None
  return h.hexdigest()


def _size(path: str) -> int | None:
  try:
    return os.path.getsize(path)
  except OSError:
    return None


def _refine(groups: list[list[Song]], key_of: Callable[[Song], Any]) -> list[list[Song]]:
  """Each group split by ``key_of``; groups of one (or with no key) dropped."""
  out = []
  for members in groups:
    by: dict[Any, list[Song]] = collections.defaultdict(list)
    for s in members:
      k = key_of(s)
      if k is not None:
        by[k].append(s)
    out.extend(m for m in by.values() if len(m) > 1)
  return out


def identical_files(songs: Sequence[Song]) -> list[list[Song]]:
  """Sets of songs whose files hold the very same bytes (two or more each).

  Cheap: sizes first, then the hash of the first 64 KiB, and only files that
  still collide are hashed whole. Missing or unreadable files are left to
  the decoder, which reports them.
  """
  candidates = [s for s in songs if s.path]
  groups = _refine([candidates], lambda s: _size(s.path))
  groups = _refine(groups, lambda s: _digest(s.path, _PREFIX_BYTES))
  groups = _refine(groups, lambda s: _digest(s.path))
  return [sorted(g, key=lambda s: s.key) for g in groups]


def _drop_aliases(songs: Sequence[Song]) -> tuple[list[Song], list[dict[str, Any]]]:
  """One song per real file (symlinks, relative and absolute paths resolved)."""
  by_real: dict[str, list[Song]] = collections.defaultdict(list)
  for s in sorted(songs, key=lambda s: s.key):
    by_real[os.path.realpath(s.path) if s.path else f'\0{s.key}'].append(s)
  kept, aliases = [], []
  for real, members in by_real.items():
    kept.append(members[0])
    if len(members) == 1:
      continue
    genres = sorted({s.genre for s in members})
    if len(genres) > 1:
      raise errors.DataError(
          f'{real} is listed as {len(members)} songs of different genres ({", ".join(genres)}) '
          f'under {", ".join(s.key for s in members)}: keep one path (a symlink or a '
          'second path to the same file is the same song)')
    logging.warning('%s is the same file as %s (both are %s): counted once, as %s.',
                    ', '.join(s.key for s in members[1:]), members[0].key, real,
                    members[0].key)
    aliases.append({'file': real, 'kept': members[0].key,
                    'dropped': [s.key for s in members[1:]]})
  return sorted(kept, key=lambda s: s.key), aliases


def _mark_copies(songs: list[Song]) -> tuple[list[Song], list[dict[str, Any]]]:
  """Byte-identical songs share a ``content`` id and one group (so one split side)."""
  replaced: dict[str, Song] = {}
  copies = []
  for members in identical_files(songs):
    content = _digest(members[0].path)[:16]
    group = next((s.group for s in members if s.group is not None), None)
    for s in members:
      replaced[s.key] = dataclasses.replace(s, content=content, group=group)
    genres = sorted({s.genre for s in members})
    logging.warning('%d songs are byte-identical copies (%s): kept together on one side of '
                    'every split%s.', len(members), ', '.join(s.key for s in members),
                    f'; they are labelled {", ".join(genres)}' if len(genres) > 1 else '')
    copies.append({'sha256': content, 'songs': [s.key for s in members],
                   'genres': genres})
  return [replaced.get(s.key, s) for s in songs], copies


def identify(songs: Sequence[Song]) -> tuple[list[Song], dict[str, Any]]:
  """The songs with aliases of one file merged and identical copies marked.

  Returns the songs (sorted by key) and what was found, for
  ``data_summary.json``: ``{"same_file": [{"file", "kept", "dropped"}],
  "identical_content": [{"sha256", "songs", "genres"}]}``.

  Raises:
    DataError: one file listed under different genres.
  """
  kept, aliases = _drop_aliases(songs)
  marked, copies = _mark_copies(kept)
  return marked, {'same_file': aliases, 'identical_content': copies}
