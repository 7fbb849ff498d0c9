"""The train loop's data: discover -> cache -> split, as one segment set per split.

``load_dataset`` runs discover -> cache -> split and returns one ``SegmentSet``
per split (memory-mapped rows of whole songs); ``cached_songs`` is its first
half, for callers that decide the split themselves (cross-validation writes
each fold's split to a file, read back through ``config.data.split='file'``).
The loaders over those sets live in ``loaders``; their names are re-exported
here for the callers that reach them as ``input_pipeline.X``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import cache as cache_lib
from melgenre_jax.data import checksummed_files
# The loaders' names, re-exported for callers that use input_pipeline.X.
from melgenre_jax.data.loaders import checkpoint_restore_args  # pylint: disable=unused-import
from melgenre_jax.data.loaders import checkpoint_save_args  # pylint: disable=unused-import
from melgenre_jax.data.loaders import create_train_loader  # pylint: disable=unused-import
from melgenre_jax.data.loaders import eval_batches  # pylint: disable=unused-import
from melgenre_jax.data.loaders import padded_batches  # pylint: disable=unused-import
from melgenre_jax.data.loaders import SegmentSet
from melgenre_jax.data.loaders import shifted_windows  # pylint: disable=unused-import
from melgenre_jax.data.loaders import song_positions  # pylint: disable=unused-import
from melgenre_jax.data.loaders import steps_per_epoch  # pylint: disable=unused-import
from melgenre_jax.data import sources
from melgenre_jax.data import splits as splits_lib
from melgenre_jax.data.songs import identify
from melgenre_jax.data.songs import Song
from melgenre_jax.data.songs import song_tags
from melgenre_jax.errors import DataError
from melgenre_jax.runtime import processes


@dataclasses.dataclass
class Dataset:
  genres: list[str]  # the output classes: genres, or the tag vocabulary (task='multilabel')
  train: SegmentSet
  validation: SegmentSet
  test: SegmentSet | None
  summary: dict[str, Any]
  task: str = 'genre'


def is_multilabel(config: ml_collections.ConfigDict) -> bool:
  return config.task == 'multilabel'


def song_label_array(songs: list[Song], genre_index: dict[str, int],
                     multilabel: bool) -> np.ndarray:
  """Each song's label: int32 genre index ``[S]``, or multi-hot float32 ``[S, K]`` of its tags."""
  if not multilabel:
    return np.array([genre_index[s.genre] for s in songs], np.int32)
  out = np.zeros((len(songs), len(genre_index)), np.float32)
  for i, s in enumerate(songs):
    out[i, [genre_index[t] for t in song_tags(s)]] = 1.0
  return out


# ------------------------------------------------------------ load_dataset


def _check_quality(summary: dict[str, Any], genres: list[str],
                   config: ml_collections.ConfigDict, summary_path: str):
  """Fails on an empty genre or too many unusable files, naming the causes."""
  per_genre = summary['per_genre']
  bad_by_genre = collections.defaultdict(list)
  for b in summary['bad_files']:
    bad_by_genre[b['genre']].append(b)
  for g in genres:
    stats = per_genre.get(g, {'songs': 0, 'good': 0, 'bad': 0})
    if stats['good'] == 0:
      if stats['songs'] == 0:
        detail = 'no song files were found for it'
      else:
        reasons = '; '.join(f"{os.path.basename(b['path'] or b['key'])}: "
                            f"{b['reason']}" for b in bad_by_genre[g][:3])
        detail = (f"all {stats['songs']} file(s) are unusable (e.g. "
                  f'{reasons})')
      raise DataError(
          f'genre {g!r} has no usable songs: {detail}. Add readable songs for '
          f'it or remove it from the dataset (source={config.data.source!r}, '
          f'root={config.data.root!r}); details in {summary_path}')
  n, bad = summary['num_songs'], summary['num_bad']
  if n and bad / n > config.data.max_bad_fraction:
    reasons = '; '.join(f"{b['key']}: {b['reason']}"
                        for b in summary['bad_files'][:5])
    raise DataError(
        f'{bad} of {n} files ({100 * bad / n:.1f}%) could not be used, more '
        f'than config.data.max_bad_fraction={config.data.max_bad_fraction}. '
        f'First reasons: {reasons}. Fix the files, or raise '
        f'--config.data.max_bad_fraction; full list in {summary_path}')


def _segment_set(c: cache_lib.Cache, song_ids: np.ndarray,
                 genre_index: dict[str, int], multilabel: bool = False) -> SegmentSet:
  """Rows of cache songs ``song_ids`` (ascending) as a SegmentSet."""
  song_ids = np.sort(np.asarray(song_ids, np.int64))
  counts = c.num_rows[song_ids]
  rows = (np.concatenate([np.arange(c.first_row[i], c.first_row[i] + n)
                          for i, n in zip(song_ids, counts)])
          if len(song_ids) else np.zeros(0, np.int64))
  songs = [c.songs[i] for i in song_ids]
  local = np.repeat(np.arange(len(song_ids), dtype=np.int32), counts)
  labels = np.repeat(song_label_array(songs, genre_index, multilabel), counts, axis=0)
  return SegmentSet(inputs=cache_lib.materialize_rows(c, rows),
                    labels=labels, song_index=local, songs=songs)


def _segment_rows_set(c: cache_lib.Cache, rows: np.ndarray,
                      genre_index: dict[str, int], multilabel: bool = False) -> SegmentSet:
  """segment_random: arbitrary rows; ``songs`` is every cached song."""
  rows = np.sort(np.asarray(rows, np.int64))
  song_labels = song_label_array(list(c.songs), genre_index, multilabel)
  return SegmentSet(inputs=cache_lib.materialize_rows(c, rows),
                    labels=song_labels[c.song_index[rows]],
                    song_index=c.song_index[rows].astype(np.int32),
                    songs=list(c.songs))


def _set_summary(s: SegmentSet | None, genres: list[str]) -> dict[str, Any]:
  if s is None:
    return {'songs': 0, 'segments': 0}
  if s.labels.ndim == 2:  # multi-hot: songs and segments carrying each tag
    songs_per = collections.Counter(t for song in s.songs for t in song_tags(song))
    segs_per = s.labels.sum(axis=0).astype(np.int64)
  else:
    songs_per = collections.Counter(song.genre for song in s.songs)
    segs_per = np.bincount(s.labels, minlength=len(genres))
  return {
      'songs': len(s.songs), 'segments': len(s),
      'per_genre': {g: {'songs': songs_per.get(g, 0),
                        'segments': int(segs_per[i])}
                    for i, g in enumerate(genres)},
  }


def _write_summary(path: str, summary: dict[str, Any]):
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  processes.remove_orphaned_temp_files(os.path.dirname(path) or '.')  # of killed writers
  checksummed_files.write_json(path, summary)


@dataclasses.dataclass
class CachedSongs:
  """The usable songs of a source, decoded into the cache, before any split."""
  genres: list[str]
  cache: cache_lib.Cache
  num_discovered: int
  summary: dict[str, Any]  # source, cache and bad files (data_summary.json)
  summary_path: str

  @property
  def songs(self) -> list[Song]:
    return self.cache.songs


def cached_songs(config: ml_collections.ConfigDict, workdir: str) -> CachedSongs:
  """Discovers songs and builds/reuses the cache; refuses an empty genre.

  Cross-validation calls this once to assign folds over exactly the songs
  the fold runs will read (unreadable files are already left out). On a
  refusal the summary, with the error, is written to
  ``WORKDIR/data_summary.json`` before raising.
  """
  songs, duplicates = identify(sources.discover_songs(config))  # one song per file and content
  genres = sources.genre_names(config, songs)
  # Multi-label: the outputs are the tags; the quality check stays per genre
  # (first tag), as the cache's per-genre counts are.
  outputs = sources.tag_names(config, songs) if is_multilabel(config) else genres
  cache_dir = config.data.cache_dir or workdir_lib.path(workdir, workdir_lib.CACHE)
  c = cache_lib.build_or_load(config, songs, cache_dir,
                              progress=bool(config.get('progress_bar', True)))
  summary_path = workdir_lib.path(workdir, workdir_lib.DATA_SUMMARY)
  summary: dict[str, Any] = {
      'source': config.data.source, 'root': config.data.root,
      'manifest': config.data.manifest, 'cache': c.path,
      'cache_reused': c.reused, 'genres': outputs, 'duplicates': duplicates,
      **{k: v for k, v in c.summary.items() if k != 'fingerprint'},
  }
  try:
    _check_quality(c.summary, genres, config, summary_path)
  except ValueError as e:
    summary['error'] = str(e)
    _write_summary(summary_path, summary)
    raise
  return CachedSongs(genres=outputs, cache=c, num_discovered=len(songs),
                     summary=summary, summary_path=summary_path)


def load_dataset(config: ml_collections.ConfigDict, workdir: str) -> Dataset:
  """Discovers songs, builds/reuses the cache, splits by song; logs a summary.

  Also writes the summary (bad files with reasons, counts per split and
  genre) to ``WORKDIR/data_summary.json``.
  """
  found = cached_songs(config, workdir)
  genres, c, summary = found.genres, found.cache, found.summary
  summary_path = found.summary_path
  genre_index = {g: i for i, g in enumerate(genres)}
  multilabel = is_multilabel(config)
  try:
    split = splits_lib.split_songs(c.songs, config)
  except ValueError as e:
    summary['error'] = str(e)
    _write_summary(summary_path, summary)
    raise

  if split.leaky:
    # Stratified by genre (a multi-label song's first tag).
    song_labels = np.array([genre_index[s.genre] for s in c.songs], np.int32)
    tr, va, te = splits_lib.split_segments_randomly(
        song_labels[c.song_index], config.data.validation_fraction,
        config.data.test_fraction, config.seed)
    train = _segment_rows_set(c, tr, genre_index, multilabel)
    validation = _segment_rows_set(c, va, genre_index, multilabel)
    test = _segment_rows_set(c, te, genre_index, multilabel) if len(te) else None
  else:
    pos = {s.key: i for i, s in enumerate(c.songs)}
    ids = {name: np.array([pos[s.key] for s in side], np.int64)
           for name, side in split.as_dict().items()}
    train = _segment_set(c, ids['train'], genre_index, multilabel)
    validation = _segment_set(c, ids['validation'], genre_index, multilabel)
    test = (_segment_set(c, ids['test'], genre_index, multilabel) if len(ids['test'])
            else None)

  summary['task'] = config.task
  summary['split'] = {
      'name': config.data.split, 'seed': config.seed, 'leaky': split.leaky,
      **{k: v for k, v in split.info.items() if k != 'name'},
      'train': _set_summary(train, genres),
      'validation': _set_summary(validation, genres),
      'test': _set_summary(test, genres),
  }
  for name, s in (('train', train), ('validation', validation), ('test', test)):
    if s is not None and len(s):
      empty = [g for g, v in summary['split'][name]['per_genre'].items()
               if v['songs'] == 0]
      if empty:
        logging.warning('%s split has no songs of %s %s', name,
                        'tag(s)' if multilabel else 'genre(s)', empty)
  _write_summary(summary_path, summary)
  logging.info(
      'data: %s, %d genres, %d songs discovered, %d skipped as bad, cache %s '
      '(%s); split %s%s: train %d songs/%d segments, validation %d/%d, test '
      '%d/%d; summary in %s', config.data.source, len(genres), found.num_discovered,
      c.summary['num_bad'], c.path, 'reused' if c.reused else 'built',
      config.data.split, ' (LEAKY)' if split.leaky else '',
      len(train.songs), len(train), len(validation.songs), len(validation),
      len(test.songs) if test else 0, len(test) if test else 0, summary_path)
  return Dataset(genres=genres, train=train, validation=validation, test=test,
                 summary=summary, task=config.task)
