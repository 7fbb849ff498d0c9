"""Song splits keep songs and groups whole: the pieces every split rule shares.

A song's segments are near-duplicates, and so are an artist's songs, so a
split files indivisible units (a group, or a lone song) per genre and
``check_disjoint`` refuses any song or group on two sides. ``splits`` builds
the split kinds from these and ``gtzan`` its published lists.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from melgenre_jax import errors
from melgenre_jax.data.songs import Song

SPLIT_NAMES = ('train', 'validation', 'test')


@dataclasses.dataclass
class SongSplit:
  """Songs per split; ``leaky`` marks segment_random (songs on every side)."""
  train: list[Song]
  validation: list[Song]
  test: list[Song]
  leaky: bool = False
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  def as_dict(self) -> dict[str, list[Song]]:
    return {'train': self.train, 'validation': self.validation,
            'test': self.test}


def unit_key(song: Song) -> str:
  """What a split keeps on one side: the song's group, its byte-identical copies, or itself.

  ``songs.identify`` gives copies one group when any of them has one, so a
  group takes its members' copies along.
  """
  if song.group is not None:
    return f'group:{song.group}'
  return f'content:{song.content}' if song.content else f'song:{song.key}'


def units_by_genre(songs: Iterable[Song]) -> dict[str, list[list[Song]]]:
  """Groups songs into indivisible units (a group, or a lone song) per genre.

  A group spanning genres is filed under its most common genre (ties: name).
  """
  units: dict[str, list[Song]] = collections.defaultdict(list)
  for s in sorted(songs, key=lambda s: s.key):
    units[unit_key(s)].append(s)
  by_genre: dict[str, list[list[Song]]] = collections.defaultdict(list)
  for key in sorted(units):
    members = units[key]
    counts = collections.Counter(s.genre for s in members)
    genre = min(counts, key=lambda g: (-counts[g], g))
    by_genre[genre].append(members)
  return dict(by_genre)


def ungrouped(songs: Iterable[Song]) -> list[Song]:
  """The songs with their groups dropped: each song (with its copies) becomes its own unit."""
  return [dataclasses.replace(s, group=None) if s.group is not None else s
          for s in songs]


def units_per_genre(songs: Sequence[Song]) -> dict[str, int]:
  """Indivisible units (groups, lone songs) filed under each genre."""
  return {g: len(u) for g, u in units_by_genre(songs).items()}


def side_target(fraction: float, n_songs: int, n_units: int) -> int:
  """Songs to put on a side; >= 1 when asked for and the genre can spare it."""
  t = int(round(fraction * n_songs))
  if fraction > 0 and t == 0 and n_units >= 3:
    t = 1
  return t


def check_fractions(validation_fraction: float, test_fraction: float):
  """Refuses fractions that leave no train songs: each in [0, 1), sum < 1."""
  if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or (
      validation_fraction + test_fraction >= 1):
    raise errors.ConfigError(
        f'config.data.validation_fraction={validation_fraction} and '
        f'test_fraction={test_fraction} must each be in [0, 1) and sum to '
        'less than 1')


def stratify(songs: Sequence[Song], fractions: dict[str, float],
             rng: np.random.Generator, rest: str) -> dict[str, list[Song]]:
  """Per genre, shuffles units and fills each side up to its song target.

  A unit goes to the first side in ``fractions`` whose remaining deficit it
  shrinks (so a big artist group cannot blow a side far past its fraction);
  everything else goes to ``rest``.
  """
  out: dict[str, list[Song]] = {name: [] for name in [*fractions, rest]}
  for _, units in sorted(units_by_genre(songs).items()):
    n = sum(len(u) for u in units)
    deficit = {name: side_target(frac, n, len(units))
               for name, frac in fractions.items()}
    for i in rng.permutation(len(units)):
      unit = units[i]
      side = next((name for name, d in deficit.items() if len(unit) < 2 * d),
                  rest)
      if side != rest:
        deficit[side] -= len(unit)
      out[side].extend(unit)
  return {k: sorted(v, key=lambda s: s.key) for k, v in out.items()}


def check_disjoint(split: SongSplit) -> None:
  """Refuses a song or a group on two sides (except the leaky protocol)."""
  if split.leaky:
    return
  sides = split.as_dict()
  for a_i, a in enumerate(SPLIT_NAMES):
    for b in SPLIT_NAMES[a_i + 1:]:
      keys = {s.key for s in sides[a]} & {s.key for s in sides[b]}
      if keys:
        raise ValueError(f'split leak: {len(keys)} song(s) in both {a} and '
                         f'{b}, e.g. {sorted(keys)[:5]}')
      _check_no_copies_across(sides[a], a, sides[b], b)
      ga = {s.group for s in sides[a] if s.group is not None}
      gb = {s.group for s in sides[b] if s.group is not None}
      if ga & gb:
        raise errors.DataError(
            f'split leak: group(s) {sorted(ga & gb)[:5]} have songs in both '
            f'{a} and {b}: a group (artist/album) must stay on one side; fix '
            'the manifest split column or use split=stratified/kfold, which '
            'keep groups together')


def _check_no_copies_across(side_a: Sequence[Song], a: str, side_b: Sequence[Song],
                            b: str) -> None:
  """Refuses byte-identical copies (``Song.content``) on two sides: a leak by another name."""
  in_a = {s.content: s.key for s in side_a if s.content}
  pairs = sorted((in_a[s.content], s.key) for s in side_b if s.content in in_a)
  if pairs:
    raise errors.DataError(
        f'split leak: {len(pairs)} {b} song(s) are byte-identical copies of {a} songs, e.g. '
        f'{pairs[0][1]} = {pairs[0][0]}: remove the copies, or put them in the same split '
        '(a split that is not given by a list, e.g. split=stratified, keeps them together)')
