"""Train/validation/test splits by song (and by artist group), never by segment.

Segments of one song are near-duplicates, so a segment-level split leaks and
inflates accuracy; every split here keeps each song - and each group, when
songs carry one - on one side, and ``check_disjoint`` refuses any overlap.
The one exception, ``segment_random``, exists only to measure that leak.
The shared pieces (``SongSplit``, units, ``stratify``) live in ``stratify``.
The published GTZAN split lists (``gtzan_*``) are read and matched in ``gtzan``;
``split_songs`` dispatches to them by name. ``file`` reads an explicit split
(song keys per side) from JSON: how ``--mode=cv`` hands each fold run exactly
the songs its recorded fold assignment gives it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from absl import logging
import ml_collections
import numpy as np

from melgenre_jax import errors
from melgenre_jax.data import gtzan
from melgenre_jax.data.songs import Song
from melgenre_jax.data.stratify import check_disjoint
from melgenre_jax.data.stratify import check_fractions
from melgenre_jax.data.stratify import side_target
from melgenre_jax.data.stratify import SongSplit
from melgenre_jax.data.stratify import SPLIT_NAMES
from melgenre_jax.data.stratify import stratify
from melgenre_jax.data.stratify import ungrouped
from melgenre_jax.data.stratify import unit_key  # pylint: disable=unused-import (callers: splits.unit_key)
from melgenre_jax.data.stratify import units_by_genre
from melgenre_jax.data.stratify import units_per_genre  # pylint: disable=unused-import (callers: splits.units_per_genre)

SPLITS = ('stratified', 'kfold', 'manifest', 'file', 'gtzan_fault_filtered',
          'gtzan_stratified', 'gtzan_artist_3fold', 'segment_random')
# What a fold keeps together: 'auto' is the group when the songs have one.
FOLD_UNITS = ('auto', 'song', 'group')

LEAK_WARNING = (
    "config.data.split='segment_random' shuffles SEGMENTS across songs: "
    'segments of the same song land in train AND validation/test, so the '
    'reported accuracy LEAKS and is inflated. Use it only to reproduce or '
    'measure that leak, never to report results.')


def resolve_fold_unit(songs: Sequence[Song], by: str,
                      field: str = 'config.cv.by') -> str:
  """'song' or 'group': what a fold keeps together (``auto``: groups if any)."""
  has_groups = any(s.group is not None for s in songs)
  if by == 'auto':
    return 'group' if has_groups else 'song'
  if by == 'group' and not has_groups:
    raise errors.DataError(
        f"{field}='group' but no song has a group (only a manifest's group "
        'column gives them): use auto or song, or add the group column')
  if by not in FOLD_UNITS:
    raise errors.ConfigError(f'{field}={by!r} is not one of {FOLD_UNITS}')
  return by


# ------------------------------------------------------------- split kinds


def stratified_split(songs: Sequence[Song], validation_fraction: float,
                     test_fraction: float, seed: int) -> SongSplit:
  """Seeded random split by song/group, stratified by genre."""
  check_fractions(validation_fraction, test_fraction)
  rng = np.random.default_rng([int(seed), 1])
  sides = stratify(songs, {'test': test_fraction,
                           'validation': validation_fraction}, rng,
                   rest='train')
  return SongSplit(train=sides['train'], validation=sides['validation'],
                   test=sides['test'])


def assign_folds(songs: Sequence[Song], num_folds: int,
                 seed: int) -> dict[str, int]:
  """Test fold (0..num_folds-1) of every song: seeded, genre-stratified.

  Whole units (a group, or a song without one; pass ``ungrouped(songs)`` to
  fold by song) go to one fold; per genre, each unit goes to the fold with the
  fewest songs of that genre, then the fewest overall, so folds are balanced
  per genre as far as the unit sizes allow. Independent of the songs' order.
  """
  if num_folds < 2:
    raise errors.ConfigError(f'num_folds={num_folds} must be >= 2')
  rng = np.random.default_rng([int(seed), 2])
  folds: list[list[Song]] = [[] for _ in range(num_folds)]
  for _, units in sorted(units_by_genre(songs).items()):
    per_genre = [0] * num_folds
    for i in rng.permutation(len(units)):
      k = min(range(num_folds),
              key=lambda f: (per_genre[f], len(folds[f]), f))
      folds[k].extend(units[i])
      per_genre[k] += len(units[i])
  return {s.key: k for k, fold in enumerate(folds) for s in fold}


def fold_split(songs: Sequence[Song], folds: dict[str, int], fold: int,
               validation_fraction: float, seed: int) -> SongSplit:
  """Fold ``fold`` of an assignment as test; validation carved from the rest.

  The carve is by unit (group/song) and stratified by genre, seeded by
  ``(seed, fold)``, so every fold of a partition gets its own validation.
  """
  check_fractions(validation_fraction, 0.0)
  unassigned = [s.key for s in songs if s.key not in folds]
  if unassigned:
    raise errors.DataError(
        f'{len(unassigned)} song(s) have no fold in the assignment, e.g. '
        f'{sorted(unassigned)[:3]}')
  test = [s for s in songs if folds[s.key] == fold]
  rest = [s for s in songs if folds[s.key] != fold]
  sides = stratify(rest, {'validation': validation_fraction},
                   np.random.default_rng([int(seed), 3, fold]), rest='train')
  return SongSplit(train=sides['train'], validation=sides['validation'],
                   test=sorted(test, key=lambda s: s.key),
                   info={'num_folds': max(folds.values()) + 1, 'fold': fold})


def kfold_split(songs: Sequence[Song], num_folds: int, fold: int,
                validation_fraction: float, seed: int) -> SongSplit:
  """Fold ``fold`` of a seeded, genre-stratified k-fold by song/group.

  The held-out fold is the test split; validation is carved (by song/group,
  stratified) out of the other folds with ``validation_fraction``. The fold
  partition itself does not depend on ``fold``.
  """
  if num_folds < 2:
    raise errors.ConfigError(
        f'config.data.num_folds={num_folds} must be >= 2')
  if not 0 <= fold < num_folds:
    raise errors.ConfigError(
        f'config.data.fold={fold} must be in 0..{num_folds - 1} '
        f'(config.data.num_folds={num_folds})')
  split = fold_split(songs, assign_folds(songs, num_folds, seed), fold,
                     validation_fraction, seed)
  split.info = {'num_folds': num_folds, 'fold': fold}
  return split


def carve_validation(split: SongSplit, fraction: float, seed: int,
                     what: str) -> SongSplit:
  """Moves ``fraction`` of the training songs (by group, per genre) to validation.

  For splits that name only train and test (the usual shape of a published
  split): early stopping and calibration need songs the model never trained on.
  """
  sides = stratify(split.train, {'validation': fraction},
                   np.random.default_rng([int(seed), 6]), rest='train')
  n_train = len(split.train)
  logging.info(
      '%s has no validation songs: carved %d of its %d training songs '
      '(fraction %.3g, config.data.validation_fraction; by group and genre) '
      'as validation', what, len(sides['validation']), n_train, fraction)
  info = dict(split.info, validation_carved_from_train={
      'songs': len(sides['validation']), 'of': n_train, 'fraction': fraction})
  return dataclasses.replace(split, train=sides['train'],
                             validation=sides['validation'], info=info)


def manifest_split(songs: Sequence[Song], validation_fraction: float = 0.0,
                   seed: int = 0) -> SongSplit:
  """The manifest's split column; validation is carved from train when it has none."""
  unset = [s.key for s in songs if s.split is None]
  if unset:
    raise errors.DataError(
        f"config.data.split='manifest' needs a split column value "
        f'(train/validation/test) for every song, but {len(unset)} have none, '
        f'e.g. {unset[:3]}: fill the column or use split=stratified')
  sides: dict[str, list[Song]] = {k: [] for k in SPLIT_NAMES}
  for s in sorted(songs, key=lambda s: s.key):
    sides[s.split].append(s)
  split = SongSplit(**sides)
  if not split.validation and split.train and validation_fraction > 0:
    split = carve_validation(split, validation_fraction, seed,
                             'the manifest')
  return split


def read_split_file(path: str) -> dict[str, Any]:
  """``{"train": [keys], "validation": [keys], "test": [keys], "by": ...}``.

  A run's ``dataset.json`` (the keys under ``"splits"``) is accepted too, so
  the exact split of an earlier run can be replayed.
  """
  if not path:
    raise errors.ConfigError(
        "config.data.split='file' needs --config.data.split_file=/path/to/"
        'split.json ({"train": [song keys], "validation": [...], "test": '
        '[...]})')
  if not os.path.isfile(path):
    raise errors.MissingPathError(
        f'config.data.split_file={path!r} does not exist')
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.DataError(
        f'config.data.split_file={path!r} is not readable JSON: {e}') from None
  if isinstance(data, dict) and isinstance(data.get('splits'), dict):
    data = {**data['splits'], 'by': data.get('by', 'group')}
  if not isinstance(data, dict) or not any(k in data for k in SPLIT_NAMES):
    raise errors.DataError(
        f'split file {path} must be a JSON object with lists of song keys '
        f'under some of {SPLIT_NAMES}')
  for side in SPLIT_NAMES:
    keys = data.get(side, [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise errors.DataError(
          f'split file {path}: {side!r} must be a list of song keys (strings)')
  seen: dict[str, str] = {}
  for side in SPLIT_NAMES:
    for key in data.get(side, []):
      if key in seen:
        raise errors.DataError(
            f'split file {path}: song {key!r} is listed under both '
            f'{seen[key]!r} and {side!r}')
      seen[key] = side
  return data


def file_split(songs: Sequence[Song], path: str, validation_fraction: float,
               seed: int) -> SongSplit:
  """An explicit split from JSON (``read_split_file``), matched by song key.

  Listed songs missing here (absent, or skipped as unreadable) are reported
  and left out, as are songs the file does not list. ``"by": "song"`` lets
  one group span sides (cross-validation by song). With no validation keys,
  validation is carved from train (``carve_validation``).
  """
  data = read_split_file(path)
  by = data.get('by', 'group')
  if by not in ('song', 'group'):
    raise errors.DataError(
        f'split file {path}: "by" is {by!r}; use "song" or "group"')
  if by == 'song':
    songs = ungrouped(songs)
  lookup = {s.key: s for s in songs}
  sides: dict[str, list[Song]] = {}
  missing: dict[str, list[str]] = {}
  for side in SPLIT_NAMES:
    keys = data.get(side, [])
    sides[side] = sorted((lookup[k] for k in keys if k in lookup),
                         key=lambda s: s.key)
    missing[side] = [k for k in keys if k not in lookup]
  listed = {k for side in SPLIT_NAMES for k in data.get(side, [])}
  if not listed & set(lookup):
    raise errors.DataError(
        f'split file {path}: none of its {len(listed)} song keys matches one '
        f'of the {len(songs)} usable songs (e.g. listed {sorted(listed)[:2]}, '
        f'found {sorted(lookup)[:2]}): was it written for another dataset?')
  n_missing = sum(map(len, missing.values()))
  if n_missing:
    logging.warning('split file %s: %d listed song(s) are missing or unreadable '
                    'here and are left out: %s', path, n_missing,
                    {k: v[:10] for k, v in missing.items() if v})
  unlisted = sorted(set(lookup) - listed)
  if unlisted:
    logging.info('split file %s: %d song(s) are in no list and are left out',
                 path, len(unlisted))
  info = {'split_file': path, 'by': by, 'num_missing_listed': n_missing,
          'missing_listed': {k: v[:50] for k, v in missing.items() if v},
          'num_excluded_unlisted': len(unlisted)}
  if isinstance(data.get('info'), dict):
    info.update(data['info'])
  split = SongSplit(**sides, info=info)
  if not split.validation and not data.get('validation') and split.train and (
      validation_fraction > 0):
    split = carve_validation(split, validation_fraction, seed,
                             f'split file {path}')
  return split


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
  check_fractions(validation_fraction, test_fraction)
  rng = np.random.default_rng([int(seed), 5])
  labels = np.asarray(labels)
  train, val, test = [], [], []
  for label in np.unique(labels):
    idx = np.flatnonzero(labels == label)
    idx = idx[rng.permutation(len(idx))]
    n_test = side_target(test_fraction, len(idx), len(idx))
    n_val = side_target(validation_fraction, len(idx), len(idx))
    test.append(idx[:n_test])
    val.append(idx[n_test:n_test + n_val])
    train.append(idx[n_test + n_val:])
  cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(
      0, np.int64)
  return cat(train), cat(val), cat(test)


# ------------------------------------------------------------------ entry



def split_songs(songs: Sequence[Song],
                config: ml_collections.ConfigDict) -> SongSplit:
  """Splits by ``config.data.split``; deterministic in ``config.seed``.

  Validation may be empty only when asked for (``validation_fraction=0``): a
  refit on every training song, whose run keeps its last epoch.
  """
  name = config.data.split
  d = config.data
  if name == 'stratified':
    split = stratified_split(songs, d.validation_fraction, d.test_fraction,
                             config.seed)
  elif name == 'kfold':
    split = kfold_split(songs, d.num_folds, d.fold, d.validation_fraction,
                        config.seed)
  elif name == 'manifest':
    split = manifest_split(songs, d.validation_fraction, config.seed)
  elif name == 'file':
    split = file_split(songs, d.get('split_file', ''), d.validation_fraction,
                       config.seed)
  elif name in gtzan.LIST_SPLITS:
    split = gtzan.gtzan_list_split(songs, name)
  elif name == 'gtzan_artist_3fold':
    split = gtzan.gtzan_artist_3fold_split(songs, d.fold,
                                           d.validation_fraction, config.seed)
  elif name == 'segment_random':
    split = segment_random_split(songs)
  else:
    raise errors.ConfigError(
        f'config.data.split={name!r} is not one of {SPLITS}')
  check_disjoint(split)
  split.info.setdefault('name', name)
  if not split.train:
    raise errors.DataError(
        f'config.data.split={name!r} left the train split empty '
        f'({len(songs)} usable songs)')
  if not split.validation and d.validation_fraction > 0:
    raise errors.DataError(
        f'config.data.split={name!r} left the validation split empty '
        f'({len(songs)} usable songs): raise config.data.validation_fraction, '
        'add songs, or set it to 0 to train on every training song (the run then '
        'keeps its last epoch)')
  return split
