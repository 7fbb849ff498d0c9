"""The unit of a dataset: a song. Splits, caching and song-level metrics all key on it."""

from __future__ import annotations

import dataclasses


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
  """

  key: str
  path: str
  genre: str
  group: str | None = None
  split: str | None = None
  tags: tuple[str, ...] = ()


def song_tags(song: Song) -> tuple[str, ...]:
  """The song's tags for multi-label tagging: its own, else just its genre."""
  return song.tags or (song.genre,)
