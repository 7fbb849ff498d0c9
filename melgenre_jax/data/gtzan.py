"""GTZAN: its genres, folder layouts, track names and the shipped split lists.

Copies of GTZAN differ in layout (the original tarball's ``genres/``, Kaggle's
``Data/genres_original/``) and in extension (``.au``, ``.wav``), but every one
names a track ``<genre>.000NN``; so do the published split lists shipped in
``gtzan_splits/`` (see ``gtzan_splits/ORIGIN.md``: Kereliuk et al.'s
fault-filtered and stratified lists, Sturm's artist-filtered 3-fold lists).
Songs are matched to the lists by that name, so the lists also work on GTZAN
files reached through another source (folder, manifest).

``sources`` lists the songs of ``source='gtzan'`` with ``list_gtzan``;
``splits.split_songs`` dispatches the ``gtzan_*`` split names here.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
from typing import Sequence

from absl import logging
import numpy as np

from melgenre_jax import errors
from melgenre_jax.data import audio
from melgenre_jax.data import stratify
from melgenre_jax.data.songs import Song
from melgenre_jax.data.stratify import SongSplit


# GTZAN's ten genres, in the conventional (alphabetical) label order.
GTZAN_GENRES = ('blues', 'classical', 'country', 'disco', 'hiphop', 'jazz',
                'metal', 'pop', 'reggae', 'rock')

# Where the genre folders sit relative to config.data.root, most specific first:
# the original tarball (genres/), Kaggle's copy (genres_original/, often under
# Data/), or root pointing straight at the folder holding blues/, classical/...
_GTZAN_LAYOUTS = (
    'genres', 'genres_original', os.path.join('Data', 'genres_original'),
    os.path.join('Data', 'genres'), '')

_GTZAN_NAME = re.compile(r'^(?P<genre>[a-z]+)[._](?P<number>\d{5})$')

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
# The split names of those lists (``config.data.split``).
LIST_SPLITS = tuple(_GTZAN_LISTS)


# ------------------------------------------------------------- the dataset


def gtzan_key(name: str) -> str | None:
  """Normalises a GTZAN file name to its key ``<genre>.000NN``.

  Accepts ``blues/blues.00012.wav``, ``./blues_00012.wav``, ``blues.00012.au``
  (the spellings of the published split lists and of the dataset copies);
  returns None when the name is not a GTZAN track name.
  """
  stem, ext = os.path.splitext(os.path.basename(name.strip()))
  if ext.lower() not in audio.SUPPORTED_EXTENSIONS:
    stem += ext  # '.00012' of 'blues.00012' is not an extension
  m = _GTZAN_NAME.match(stem.lower())
  if not m:
    return None
  return f"{m.group('genre')}.{m.group('number')}"


def find_gtzan_genres_dir(root: str) -> str:
  """Returns the folder under ``root`` that holds GTZAN's genre folders."""
  for rel in _GTZAN_LAYOUTS:
    cand = os.path.join(root, rel) if rel else root
    if os.path.isdir(cand) and any(
        os.path.isdir(os.path.join(cand, g)) for g in GTZAN_GENRES):
      return cand
  raise errors.NotGtzanError(
      f'config.data.root={root!r} does not look like GTZAN: expected genre '
      f'folders ({", ".join(GTZAN_GENRES)}) in one of '
      + ', '.join(os.path.join(root, r or '.') for r in _GTZAN_LAYOUTS)
      + ' (e.g. genres/blues/blues.00000.au or '
      'Data/genres_original/blues/blues.00000.wav). Point --config.data.root '
      'at the extracted dataset.')


def list_gtzan(root: str) -> list[Song]:
  """GTZAN songs keyed ``<genre>.000NN`` (the names the published lists use)."""
  genres_dir = find_gtzan_genres_dir(root)
  songs: dict[str, Song] = {}
  missing = []
  for genre in GTZAN_GENRES:
    gdir = os.path.join(genres_dir, genre)
    if not os.path.isdir(gdir):
      missing.append(genre)
      continue
    for name in sorted(os.listdir(gdir)):
      path = os.path.join(gdir, name)
      # Hidden files (macOS '._' forks too) are not tracks; a stray __MACOSX
      # file fails the extension check below, as in the folder source.
      if name.startswith('.') or not os.path.isfile(path):
        continue
      if not audio.has_supported_extension(name):
        continue
      key = gtzan_key(name)
      if key is None or not key.startswith(genre + '.'):
        logging.warning('GTZAN: ignoring %s: not named %s.000NN.<ext>', path,
                        genre)
        continue
      if key in songs:
        logging.warning('GTZAN: %s and %s are the same track %s; using the '
                        'first', songs[key].path, path, key)
        continue
      songs[key] = Song(key=key, path=path, genre=genre)
  if missing:
    logging.warning('GTZAN: genre folders missing under %s: %s', genres_dir,
                    ', '.join(missing))
  logging.info('GTZAN: %d songs under %s', len(songs), genres_dir)
  return sorted(songs.values(), key=lambda s: s.key)


# ------------------------------------------------------ the split lists


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
    key = gtzan_key(cols[0])
    if key is None:
      raise ValueError(f'unexpected entry {line!r} in split list {relpath}')
    out.append((key, cols[1].strip() if len(cols) > 1 else None))
  return out


def _gtzan_lookup(songs: Sequence[Song]) -> dict[str, Song]:
  """Songs by GTZAN track name, from the key or else the file name."""
  lookup = {}
  for s in songs:
    name = gtzan_key(s.key) or (
        gtzan_key(os.path.basename(s.path)) if s.path else None)
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
    raise errors.DataError(
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
    raise errors.ConfigError(f'config.data.fold={fold} must be 0, 1 or 2 for '
                             "split='gtzan_artist_3fold'")
  stratify.check_fractions(validation_fraction, 0.0)
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
  carved = stratify.stratify(
      sides['train'], {'validation': validation_fraction},
      np.random.default_rng([int(seed), 4, fold]), rest='train')
  info['fold'] = fold
  return SongSplit(train=carved['train'],
                   validation=carved['validation'],
                   test=sorted(sides['test'], key=lambda s: s.key),
                   info=info)
