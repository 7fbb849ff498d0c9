"""``--mode=embed``: what the classifier sees, as vectors, for songs or a run's splits.

A segment's embedding is the classifier head's input: the two branch
summaries concatenated (``crnn.DualBranchCRNN(return_embedding=True)``),
``D = 2 * config.model.lstm_sizes[-1]`` floats. A song's embedding is the mean
of its segments' (as a song's probabilities are the mean of its segments').
They feed similarity search, clustering and linear probes: a logistic
regression fitted on ``embed_dataset_split`` of a run's train split and scored
on its test split measures how much genre the representation holds.

Files are read by predict's streaming engine (``modes/predict/stream.py``: the
same path expansion, streamed decoding a few files ahead, windows and flags),
so memory stays bounded whatever a file's length; windows of consecutive files
share batches. ``embed_paths`` (the mode; its flags come as one ``EmbedOptions``,
built in modes/dispatch.py) writes, to ``WORKDIR/embeddings/`` (or
``--embed_dir``), each file replaced only once complete:

  embeddings.npy          [songs, D] float32, one row per embedded song
  embeddings.csv          path, duration (seconds read), segments, row
  skipped.csv             path, reason: inputs that gave no embedding
  segment_embeddings.npy  with --per_segment: [total segments, D] float32
  segment_embeddings.csv  with --per_segment: path, segment, start_seconds, row
  embeddings.json         checkpoint step, D, the window settings, counts

All of it reloads with plain numpy and ``csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import config_checks
from melgenre_jax import inference
from melgenre_jax import output_paths
from melgenre_jax import reporting
from melgenre_jax.runtime import atomic
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import audio
from melgenre_jax.data import input_pipeline
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import NothingClassifiedError
from melgenre_jax.modes.predict import inputs as inputs_lib
from melgenre_jax.modes.predict import stream

EMBED_DIR = workdir_lib.EMBEDDINGS
EMBEDDINGS_NPY = 'embeddings.npy'
EMBEDDINGS_CSV = 'embeddings.csv'
SKIPPED_CSV = 'skipped.csv'
SEGMENTS_NPY = 'segment_embeddings.npy'
SEGMENTS_CSV = 'segment_embeddings.csv'
INFO_JSON = 'embeddings.json'
SONG_COLUMNS = ('path', 'duration', 'segments', 'row')
SEGMENT_COLUMNS = ('path', 'segment', 'start_seconds', 'row')
SKIPPED_COLUMNS = ('path', 'reason')


# ----------------------------------------------------------------------------
# A run's cached splits (for probes: fit on train, score on test).


def song_means(segment_embeddings: np.ndarray, song_index: np.ndarray,
               num_songs: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-song mean of segment rows ``[num_songs, D]`` float32, and each song's segment count.

  Songs without segments get a zero row and count 0.
  """
  x = np.asarray(segment_embeddings, np.float64)
  idx = np.asarray(song_index, np.int64)
  sums = np.zeros((num_songs, x.shape[1]), np.float64)
  np.add.at(sums, idx, x)
  counts = np.bincount(idx, minlength=num_songs)
  means = sums / np.maximum(counts, 1)[:, None]
  return means.astype(np.float32), counts


def embed_dataset_split(model: inference.InferenceModel,
                        segment_set: input_pipeline.SegmentSet,
                        batch_size: int | None = None,
                        progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Song embeddings ``[songs, D]`` float32 and their labels of one cached split.

  Rows follow ``segment_set.songs``; a song without segments in the split
  (only ``data.split=segment_random`` has those) is left out. A song's label
  is its segments' label (``segment_set.labels`` row of its first segment, so
  a multi-hot label stays multi-hot).
  """
  segments = model.embed(np.asarray(segment_set.inputs), batch_size, progress)
  song_index = np.asarray(segment_set.song_index)
  means, counts = song_means(segments, song_index, len(segment_set.songs))
  keep = np.flatnonzero(counts)
  first = np.zeros(len(segment_set.songs), np.int64)
  first[song_index[::-1]] = np.arange(len(song_index))[::-1]  # first row of each song
  labels = np.asarray(segment_set.labels)[first[keep]]
  return means[keep], labels


def embed_workdir_splits(config: ml_collections.ConfigDict, workdir: str,
                         step: int | None = None
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{'train'|'validation'|'test': (song embeddings, labels)}`` of a run's own splits.

  Rebuilds the split from the run's config and cache (as ``--mode eval``
  does) and embeds it with the best checkpoint (or ``step``). A run without a
  test split has no ``'test'`` entry.
  """
  workdir = os.path.abspath(workdir)
  config_checks.check_workdir_compatible(config, workdir)
  dataset = input_pipeline.load_dataset(config, workdir)
  model = inference.load_for_inference(config, workdir, step)
  show = bool(config.get('progress_bar', True))
  out = {}
  for name in ('train', 'validation', 'test'):
    split = getattr(dataset, name)
    if split is not None and len(split):
      out[name] = embed_dataset_split(model, split,
                                      progress=f'embed {name}' if show else None)
  return out


# ----------------------------------------------------------------------------
# Songs: files (streamed) or waves, embedded in batches shared across songs.


class _Input(NamedTuple):
  """One item to embed: a file (``problem``: why it yields nothing) or a wave in memory."""

  name: str  # the path, or '<array i>' for a wave given in memory
  problem: str | None = None
  wave: np.ndarray | None = None


def _sum_embeddings(keep_segments: bool) -> Callable[[stream.Song, np.ndarray], None]:
  """embed's ``stream.RowBatcher`` consumer: a running float64 sum, segments as floats."""

  def consume(song: stream.Song, part: np.ndarray) -> None:
    total = part.astype(np.float64).sum(axis=0)
    song.total = total if song.total is None else song.total + total
    if keep_segments:
      song.rows.extend(part.tolist())

  return consume


def _wave_events(wave: np.ndarray, name: str, spec, hop: int,
                 options: stream.Options) -> Iterator[tuple]:
  """A wave in memory (at the model's sample rate) as a file's events (``stream.file_events``)."""
  try:
    sr = spec.sample_rate
    start = int(round(options.offset_seconds * sr))
    stop = None if options.max_seconds is None else start + int(round(options.max_seconds * sr))
    wave = np.asarray(wave, np.float32)[start:stop]
    segments = audio.segment_audio(wave, spec.segment_samples, hop, spec.min_samples,
                                   path=name, short_clip=spec.short_clip)
    yield 'chunk', spec.host_inputs(segments), all(audio.is_silent(s) for s in segments)
    yield 'end', int(wave.shape[0]), int(wave.shape[0]) < spec.segment_samples
  except audio.AudioError as e:
    yield 'fail', e.reason
  except ValueError as e:  # not a mono wave
    yield 'fail', f'not usable as a mono wave: {e}'


def _result(song: stream.Song, sample_rate: int, hop: int, options: stream.Options,
            per_segment: bool) -> dict[str, Any]:
  name = song.item.name
  if song.failure is not None:
    return {'path': name, 'ok': False, 'reason': song.failure}
  out = {'path': name, 'ok': True, 'reason': None,
         'duration': song.num_samples / sample_rate, 'segments': song.rows_out,
         'embedding': (song.total / song.rows_out).astype(np.float32)}
  if per_segment:
    out['segment_embeddings'] = np.asarray(song.rows, np.float32)
    out['start_seconds'] = [options.offset_seconds + i * hop / sample_rate
                            for i in range(song.rows_out)]
  return out


def iter_embeddings(model: inference.InferenceModel, items: Iterable[Any],
                    options: stream.Options = stream.Options(),
                    per_segment: bool = False,
                    decode_workers: int = stream.DEFAULT_DECODE_WORKERS
                    ) -> Iterator[dict[str, Any]]:
  """Each item's result as soon as it is complete, in input order.

  ``items``: ``(path, problem)`` pairs as ``predict.expand_paths`` gives them,
  or 1-D waves at the model's sample rate. A result holds ``path``, ``ok``,
  ``reason`` (why it was skipped), and when ok ``duration`` (seconds read),
  ``segments``, ``embedding`` ``[D]`` (the mean of its segments') and, with
  ``per_segment``, ``segment_embeddings`` ``[segments, D]`` and
  ``start_seconds``. Every process of a multi-host run must call it with the
  same items (the model's batches are collective).
  """
  spec = model.spec
  hop = options.hop_samples(spec, model.config)
  batch = inference.inference_batch_size(model.config.eval_batch_size)
  batcher = stream.RowBatcher(lambda rows: model.embed(rows, batch), batch,
                              _sum_embeddings(per_segment))

  def as_input(i: int, item: Any) -> _Input:
    if isinstance(item, np.ndarray):
      return _Input(f'<array {i}>', wave=item)
    path, problem = item
    return _Input(path, problem)

  def events(item: _Input) -> Iterator[tuple]:
    if item.wave is not None:
      return _wave_events(item.wave, item.name, spec, hop, options)
    return stream.file_events(item.name, spec, hop, options, batch, item.problem)

  inputs = (as_input(i, item) for i, item in enumerate(items))
  for song in stream.songs(inputs, events, batcher, decode_workers):
    yield _result(song, spec.sample_rate, hop, options, per_segment)


def embed_songs(model: inference.InferenceModel, songs_or_paths: Sequence[Any],
                options: stream.Options = stream.Options(), per_segment: bool = False,
                decode_workers: int = stream.DEFAULT_DECODE_WORKERS
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """``(embeddings [embedded songs, D] float32, rows)`` for files, folders or waves.

  ``songs_or_paths``: paths (files, folders searched recursively, wildcards;
  as predict takes them) and/or 1-D float waves at ``model.spec.sample_rate``.
  ``rows`` has one dict per input file (see ``iter_embeddings``), the
  ``embedding`` moved into the returned array: ``row`` is its index there,
  None for a skipped input (``reason`` says why).
  """
  items: list[Any] = []
  seen: set[str] = set()
  for s in songs_or_paths:
    if isinstance(s, np.ndarray):
      items.append(s)
      continue
    for path, problem in inputs_lib.expand_paths([os.fspath(s)]):  # a folder: its files
      if path not in seen:
        seen.add(path)
        items.append((path, problem))
  rows, vectors = [], []
  for r in iter_embeddings(model, items, options, per_segment, decode_workers):
    r['row'] = len(vectors) if r['ok'] else None
    if r['ok']:
      vectors.append(r.pop('embedding'))
    rows.append(r)
  embeddings = (np.stack(vectors).astype(np.float32) if vectors
                else np.zeros((0, model.embedding_dim), np.float32))
  return embeddings, rows


# ----------------------------------------------------------------------------
# The mode: files in, .npy and .csv out.


def default_embed_dir(workdir: str) -> str:
  return os.path.join(workdir, EMBED_DIR)


def _write_csv(path: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
  with atomic.replaced_when_written(path, newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)


def _write_npy(path: str, array: np.ndarray) -> None:
  with atomic.replaced_when_written(path, 'wb') as f:
    np.save(f, np.asarray(array, np.float32))


def write_outputs(out_dir: str, results: list[dict[str, Any]], dim: int, per_segment: bool,
                  info: dict[str, Any]) -> None:
  """Writes the embedding files of ``results`` (``iter_embeddings``'s) into ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  ok = [r for r in results if r['ok']]
  songs = (np.stack([r['embedding'] for r in ok]) if ok else np.zeros((0, dim), np.float32))
  _write_npy(os.path.join(out_dir, EMBEDDINGS_NPY), songs)
  _write_csv(os.path.join(out_dir, EMBEDDINGS_CSV), SONG_COLUMNS,
             [(r['path'], f"{r['duration']:.6f}", r['segments'], i) for i, r in enumerate(ok)])
  _write_csv(os.path.join(out_dir, SKIPPED_CSV), SKIPPED_COLUMNS,
             [(r['path'], r['reason']) for r in results if not r['ok']])
  segment_files = [os.path.join(out_dir, n) for n in (SEGMENTS_NPY, SEGMENTS_CSV)]
  if per_segment:
    blocks = [r['segment_embeddings'] for r in ok]
    _write_npy(segment_files[0], np.concatenate(blocks) if blocks
               else np.zeros((0, dim), np.float32))
    table, row = [], 0
    for r in ok:
      for i, start in enumerate(r['start_seconds']):
        table.append((r['path'], i, f'{start:.6f}', row))
        row += 1
    _write_csv(segment_files[1], SEGMENT_COLUMNS, table)
  else:
    for path in segment_files:  # an earlier --per_segment run's: no longer these songs'
      if os.path.exists(path):
        os.remove(path)
  with atomic.replaced_when_written(os.path.join(out_dir, INFO_JSON)) as f:
    json.dump({**info, 'dim': int(dim), 'songs': len(ok), 'skipped': len(results) - len(ok),
               'per_segment': bool(per_segment)}, f, indent=1)


@dataclasses.dataclass(frozen=True)
class EmbedOptions:
  """What embed reads and where the vectors go: its flags, built once in
  modes/dispatch.py and passed down as the Flax examples pass ``config, workdir``.

  ``paths``: files, folders and wildcards. ``reading``: the window flags
  (``--hop_seconds``, ``--offset_seconds``, ``--max_seconds``), read as
  predict reads them; its answer fields (top-k, confidence) are unused.
  ``embed_dir``: where the files go (None: ``WORKDIR/embeddings``).
  """

  paths: tuple[str, ...] = ()
  reading: stream.Options = stream.Options()
  step: int | None = None  # None: the best checkpoint
  per_segment: bool = False
  embed_dir: str | None = None
  decode_workers: int = stream.DEFAULT_DECODE_WORKERS


def embed_paths(config: ml_collections.ConfigDict, workdir: str,
                options: EmbedOptions) -> dict[str, Any]:
  """``--mode=embed``: embeds ``options.paths`` with the best checkpoint (or ``options.step``).

  Writes the files listed in the module docstring to ``options.embed_dir``
  (default ``WORKDIR/embeddings``). Returns
  ``{'dir', 'checkpoint_step', 'embeddings', 'results'}``.

  Raises:
    NothingClassifiedError: no input gave an embedding (each reason listed).
  """
  if not options.paths:
    raise ConfigError('--mode=embed needs audio files or folders: give them after the '
                      'flags (main.py --workdir W --mode embed song.mp3 my_folder/) or '
                      'with --audio (repeated or comma-separated).')
  reading, embed_dir, per_segment = options.reading, options.embed_dir, options.per_segment
  stream.check_options(reading, config)
  workdir = os.path.abspath(workdir)
  output_paths.check_output_dir(embed_dir or default_embed_dir(workdir), '--embed_dir')
  config_checks.check_workdir_compatible(config, workdir)
  jobs = [(os.path.abspath(p) if problem is None else p, problem)
          for p, problem in inputs_lib.expand_paths(options.paths)]
  model = inference.load_for_inference(config, workdir, options.step)
  out_dir = os.path.abspath(embed_dir or default_embed_dir(workdir))

  start = time.monotonic()
  results = []
  embedded = iter_embeddings(model, jobs, reading, per_segment, options.decode_workers)
  for r in reporting.progress_bar(embedded, total=len(jobs), desc='embed (files)',
                                  enabled=bool(config.get('progress_bar', True))):
    results.append(r)
  seconds = time.monotonic() - start
  failed = [r for r in results if not r['ok']]
  for r in failed:
    logging.warning('Skipped %s: %s', r['path'], r['reason'])
  logging.info('Embedded %d file(s) in %.1f s (D=%d): %d skipped.',
               len(results) - len(failed), seconds, model.embedding_dim, len(failed))
  info = {'workdir': workdir, 'checkpoint_step': int(model.step),
          'sample_rate': int(model.spec.sample_rate),
          'segment_seconds': float(config.audio.segment_seconds),
          'hop_seconds': reading.hop(config), 'offset_seconds': float(reading.offset_seconds),
          'max_seconds': reading.max_seconds,
          'embedding': 'mean over the song of the classifier head input '
                       '(concatenated branch summaries)'}
  if jax.process_index() == 0:
    write_outputs(out_dir, results, model.embedding_dim, per_segment, info)
    print(out_dir)  # CLI output
  if len(failed) == len(results):
    raise NothingClassifiedError(
        'No file could be embedded:\n  ' + '\n  '.join(
            f"{r['path']}: {r['reason']}" for r in failed))
  ok = [r for r in results if r['ok']]
  return {'dir': out_dir, 'checkpoint_step': int(model.step),
          'embeddings': np.stack([r['embedding'] for r in ok]), 'results': results}
