"""Train/validation/test splits by song (and by artist group), never by segment.

Segments of one song are near-duplicates, so a segment-level split leaks and
inflates accuracy; every split here keeps each song - and each group, when
songs carry one - on one side, and ``check_disjoint`` refuses any overlap.
The one exception, ``segment_random``, exists only to measure that leak.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.resources
import os
from typing import Any, Iterable, Sequence

from absl import logging
import ml_collections
import numpy as np

from melgenre_jax.data import sources
from melgenre_jax.data.songs import Song

SPLITS = ('stratified', 'kfold', 'manifest', 'gtzan_fault_filtered',
          'gtzan_stratified', 'gtzan_artist_3fold', 'segment_random')
SPLIT_NAMES = ('train', 'validation', 'test')

# Published list files, relative to melgenre_jax/data/gtzan_splits/.
_GTZAN_LISTS = {
    'gtzan_fault_filtered': {
        'train': 'kereliuk_fault_filtered/train_filtered.txt',
        'validation': 'kereliuk_fault_filtered/valid_filtered.txt',
        'test': 'kereliuk_fault_filtered/test_filtered.txt',
    },
    'gtzan_stratified': {
        'train': 'kereliuk_stratified/train_stratified.txt',
        'validation': 'kereliuk_stratified/valid_stratified.txt',
        'test': 'kereliuk_stratified/test_stratified.txt',
    },
}
_ARTIST_3FOLD_DIR = 'sturm_artist_filtered_3fold'

LEAK_WARNING = (
    "config.data.split='segment_random' shuffles SEGMENTS across songs: "
    'segments of the same song land in train AND validation/test, so the '
    'reported accuracy LEAKS and is inflated. Use it only to reproduce or '
    'measure that leak, never to report results.')


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


# ----------------------------------------------------------------- helpers


def _unit_key(song: Song) -> str:
  return f'group:{song.group}' if song.group is not None else f'song:{song.key}'


def _units_by_genre(songs: Iterable[Song]) -> dict[str, list[list[Song]]]:
  """Groups songs into indivisible units (a group, or a lone song) per genre.

  A group spanning genres is filed under its most common genre (ties: name).
  """
  units: dict[str, list[Song]] = collections.defaultdict(list)
  for s in sorted(songs, key=lambda s: s.key):
    units[_unit_key(s)].append(s)
  by_genre: dict[str, list[list[Song]]] = collections.defaultdict(list)
  for key in sorted(units):
    members = units[key]
    counts = collections.Counter(s.genre for s in members)
    genre = min(counts, key=lambda g: (-counts[g], g))
    by_genre[genre].append(members)
  return dict(by_genre)


def _target(fraction: float, n_songs: int, n_units: int) -> int:
  """Songs to put on a side; >= 1 when asked for and the genre can spare it."""
  t = int(round(fraction * n_songs))
  if fraction > 0 and t == 0 and n_units >= 3:
    t = 1
  return t


def _check_fractions(validation_fraction: float, test_fraction: float):
  if not 0 <= validation_fraction < 1 or not 0 <= test_fraction < 1 or (
      validation_fraction + test_fraction >= 1):
    raise ValueError(
        f'config.data.validation_fraction={validation_fraction} and '
        f'test_fraction={test_fraction} must each be in [0, 1) and sum to '
        'less than 1')


def _stratified(songs: Sequence[Song], fractions: dict[str, float],
                rng: np.random.Generator, rest: str) -> dict[str, list[Song]]:
  """Per genre, shuffles units and fills each side up to its song target.

  A unit goes to the first side in ``fractions`` whose remaining deficit it
  shrinks (so a big artist group cannot blow a side far past its fraction);
  everything else goes to ``rest``.
  """
  out: dict[str, list[Song]] = {name: [] for name in [*fractions, rest]}
  for _, units in sorted(_units_by_genre(songs).items()):
    n = sum(len(u) for u in units)
    deficit = {name: _target(frac, n, len(units))
               for name, frac in fractions.items()}
    for i in rng.permutation(len(units)):
      unit = units[i]
      side = next((name for name, d in deficit.items() if len(unit) < 2 * d),
                  rest)
      if side != rest:
        deficit[side] -= len(unit)
      out[side].extend(unit)
  return {k: sorted(v, key=lambda s: s.key) for k, v in out.items()}


# ------------------------------------------------------------- split kinds


def stratified_split(songs: Sequence[Song], validation_fraction: float,
                     test_fraction: float, seed: int) -> SongSplit:
  """Seeded random split by song/group, stratified by genre."""
  _check_fractions(validation_fraction, test_fraction)
  rng = np.random.default_rng([int(seed), 1])
  sides = _stratified(songs, {'test': test_fraction,
                              'validation': validation_fraction}, rng,
                      rest='train')
  return SongSplit(train=sides['train'], validation=sides['validation'],
                   test=sides['test'])


def kfold_split(songs: Sequence[Song], num_folds: int, fold: int,
                validation_fraction: float, seed: int) -> SongSplit:
  """Fold ``fold`` of a seeded, genre-stratified k-fold by song/group.

  The held-out fold is the test split; validation is carved (by song/group,
  stratified) out of the other folds with ``validation_fraction``. The fold
  partition itself does not depend on ``fold``.
  """
  if num_folds < 2:
    raise ValueError(f'config.data.num_folds={num_folds} must be >= 2')
  if not 0 <= fold < num_folds:
    raise ValueError(f'config.data.fold={fold} must be in 0..{num_folds - 1} '
                     f'(config.data.num_folds={num_folds})')
  _check_fractions(validation_fraction, 0.0)
  rng = np.random.default_rng([int(seed), 2])
  folds: list[list[Song]] = [[] for _ in range(num_folds)]
  for _, units in sorted(_units_by_genre(songs).items()):
    per_genre = [0] * num_folds
    for i in rng.permutation(len(units)):
      # Fewest songs of this genre first, then fewest overall: balanced folds.
      k = min(range(num_folds),
              key=lambda f: (per_genre[f], len(folds[f]), f))
      folds[k].extend(units[i])
      per_genre[k] += len(units[i])
  test = folds[fold]
  rest = [s for f in range(num_folds) if f != fold for s in folds[f]]
  sides = _stratified(rest, {'validation': validation_fraction},
                      np.random.default_rng([int(seed), 3, fold]), rest='train')
  return SongSplit(train=sides['train'], validation=sides['validation'],
                   test=sorted(test, key=lambda s: s.key),
                   info={'num_folds': num_folds, 'fold': fold})


def manifest_split(songs: Sequence[Song]) -> SongSplit:
  """The manifest's split column, as given."""
  unset = [s.key for s in songs if s.split is None]
  if unset:
    raise ValueError(
        f"config.data.split='manifest' needs a split column value "
        f'(train/validation/test) for every song, but {len(unset)} have none, '
        f'e.g. {unset[:3]}: fill the column or use split=stratified')
  sides: dict[str, list[Song]] = {k: [] for k in SPLIT_NAMES}
  for s in sorted(songs, key=lambda s: s.key):
    sides[s.split].append(s)
  return SongSplit(**sides)


def _read_resource(relpath: str) -> list[str]:
  res = importlib.resources.files('melgenre_jax').joinpath(
      'data', 'gtzan_splits', *relpath.split('/'))
  return [ln for ln in res.read_text(encoding='utf-8').splitlines()
          if ln.strip()]


def read_gtzan_list(relpath: str) -> list[tuple[str, str | None]]:
  """(track key, second column or None) per line of a shipped list file."""
  out = []
  for line in _read_resource(relpath):
    cols = line.strip().split('\t')
    key = sources.gtzan_key(cols[0])
    if key is None:
      raise ValueError(f'unexpected entry {line!r} in split list {relpath}')
    out.append((key, cols[1].strip() if len(cols) > 1 else None))
  return out


def _gtzan_lookup(songs: Sequence[Song]) -> dict[str, Song]:
  """Songs by GTZAN track name, from the key or else the file name."""
  lookup = {}
  for s in songs:
    name = sources.gtzan_key(s.key) or (
        sources.gtzan_key(os.path.basename(s.path)) if s.path else None)
    if name is not None:
      lookup.setdefault(name, s)
  return lookup


def _apply_lists(songs: Sequence[Song], lists: dict[str, list[str]],
                 split_name: str) -> tuple[dict[str, list[Song]], dict]:
  """Maps listed track names to songs; missing ones are warned, not fatal."""
  lookup = _gtzan_lookup(songs)
  sides: dict[str, list[Song]] = {}
  missing: dict[str, list[str]] = {}
  used = set()
  for side, names in lists.items():
    sides[side], missing[side] = [], []
    for name in names:
      song = lookup.get(name)
      if song is None:
        missing[side].append(name)
      else:
        sides[side].append(song)
        used.add(song.key)
  matched = sum(len(v) for v in sides.values())
  if matched == 0:
    raise ValueError(
        f'config.data.split={split_name!r}: none of the {len(songs)} songs '
        'matches a track of the published GTZAN lists by name '
        '(<genre>.000NN); use source=gtzan with the GTZAN files, or another '
        'split')
  n_missing = sum(len(v) for v in missing.values())
  if n_missing:
    logging.warning(
        '%s: %d listed song(s) are missing or unreadable here and are left '
        'out: %s', split_name, n_missing,
        {k: v[:10] for k, v in missing.items() if v})
  excluded = sorted(s.key for s in songs if s.key not in used)
  if excluded:
    logging.info('%s: %d song(s) are in no list and are left out', split_name,
                 len(excluded))
  info = {'missing_listed': {k: v for k, v in missing.items() if v},
          'num_missing_listed': n_missing,
          'num_excluded_unlisted': len(excluded),
          'excluded_unlisted': excluded[:50]}
  return sides, info


def gtzan_list_split(songs: Sequence[Song], name: str) -> SongSplit:
  """Kereliuk et al.'s published train/valid/test lists, matched by name."""
  lists = {side: [k for k, _ in read_gtzan_list(rel)]
           for side, rel in _GTZAN_LISTS[name].items()}
  sides, info = _apply_lists(songs, lists, name)
  return SongSplit(train=sides['train'], validation=sides['validation'],
                   test=sides['test'], info=info)


def gtzan_artist_3fold_split(songs: Sequence[Song], fold: int,
                             validation_fraction: float,
                             seed: int) -> SongSplit:
  """Fold ``fold`` (0..2) of the artist-filtered 3-fold lists.

  Songs get their artist id as ``group``; validation is carved by artist out
  of the fold's train list, so no artist spans two splits.
  """
  if fold not in (0, 1, 2):
    raise ValueError(f'config.data.fold={fold} must be 0, 1 or 2 for '
                     "split='gtzan_artist_3fold'")
  _check_fractions(validation_fraction, 0.0)
  f = fold + 1
  groups = {}
  for part in ('train', 'evaluate'):
    for key, gid in read_gtzan_list(f'{_ARTIST_3FOLD_DIR}/f{f}_{part}_groups.txt'):
      groups[key] = f'artist{gid}'
  lists = {
      'train': [k for k, _ in read_gtzan_list(f'{_ARTIST_3FOLD_DIR}/f{f}_train.txt')],
      'test': [k for k, _ in read_gtzan_list(f'{_ARTIST_3FOLD_DIR}/f{f}_test.txt')],
  }
  lookup = _gtzan_lookup(songs)
  grouped = [dataclasses.replace(s, group=groups.get(name, s.group))
             for name, s in lookup.items()]
  sides, info = _apply_lists(grouped, lists, 'gtzan_artist_3fold')
  carved = _stratified(sides['train'], {'validation': validation_fraction},
                       np.random.default_rng([int(seed), 4, fold]),
                       rest='train')
  info['fold'] = fold
  return SongSplit(train=carved['train'], validation=carved['validation'],
                   test=sorted(sides['test'], key=lambda s: s.key), info=info)


def segment_random_split(songs: Sequence[Song]) -> SongSplit:
  """The leaky protocol: every song on every side; segments are split later."""
  logging.warning('!' * 78)
  logging.warning(LEAK_WARNING)
  logging.warning('!' * 78)
  all_songs = sorted(songs, key=lambda s: s.key)
  return SongSplit(train=list(all_songs), validation=list(all_songs),
                   test=list(all_songs), leaky=True,
                   info={'leaky': True, 'warning': LEAK_WARNING})


def split_segments_randomly(labels: np.ndarray, validation_fraction: float,
                            test_fraction: float,
                            seed: int) -> tuple[np.ndarray, np.ndarray,
                                                np.ndarray]:
  """segment_random: label-stratified random split of SEGMENT indices (leaks)."""
  _check_fractions(validation_fraction, test_fraction)
  rng = np.random.default_rng([int(seed), 5])
  labels = np.asarray(labels)
  train, val, test = [], [], []
  for label in np.unique(labels):
    idx = np.flatnonzero(labels == label)
    idx = idx[rng.permutation(len(idx))]
    n_test = _target(test_fraction, len(idx), len(idx))
    n_val = _target(validation_fraction, len(idx), len(idx))
    test.append(idx[:n_test])
    val.append(idx[n_test:n_test + n_val])
    train.append(idx[n_test + n_val:])
  cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(
      0, np.int64)
  return cat(train), cat(val), cat(test)


# ------------------------------------------------------------------ entry


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
      ga = {s.group for s in sides[a] if s.group is not None}
      gb = {s.group for s in sides[b] if s.group is not None}
      if ga & gb:
        raise ValueError(
            f'split leak: group(s) {sorted(ga & gb)[:5]} have songs in both '
            f'{a} and {b}: a group (artist/album) must stay on one side; fix '
            'the manifest split column or use split=stratified/kfold, which '
            'keep groups together')


def split_songs(songs: Sequence[Song],
                config: ml_collections.ConfigDict) -> SongSplit:
  """Splits by ``config.data.split``; deterministic in ``config.seed``."""
  name = config.data.split
  d = config.data
  if name == 'stratified':
    split = stratified_split(songs, d.validation_fraction, d.test_fraction,
                             config.seed)
  elif name == 'kfold':
    split = kfold_split(songs, d.num_folds, d.fold, d.validation_fraction,
                        config.seed)
  elif name == 'manifest':
    split = manifest_split(songs)
  elif name in _GTZAN_LISTS:
    split = gtzan_list_split(songs, name)
  elif name == 'gtzan_artist_3fold':
    split = gtzan_artist_3fold_split(songs, d.fold, d.validation_fraction,
                                     config.seed)
  elif name == 'segment_random':
    split = segment_random_split(songs)
  else:
    raise ValueError(f'config.data.split={name!r} is not one of {SPLITS}')
  check_disjoint(split)
  split.info.setdefault('name', name)
  if not split.train:
    raise ValueError(f'config.data.split={name!r} left the train split empty '
                     f'({len(songs)} usable songs)')
  if not split.validation:
    raise ValueError(
        f'config.data.split={name!r} left the validation split empty '
        f'({len(songs)} usable songs): raise config.data.validation_fraction '
        'or add songs')
  return split
