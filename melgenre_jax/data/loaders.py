"""Batches for the train loop: a grain loader for training, padded batches for eval.

``create_train_loader`` wraps a ``SegmentSet`` in an infinite, per-epoch
reshuffled, per-process sharded ``grain.DataLoader`` whose iterator state is
checkpointable; ``eval_batches`` walks a set once, in order, padding the last
batch with a mask. ``input_pipeline.load_dataset`` builds the sets.

Checkpointing the loader: pass ``checkpoint_save_args(iterator)`` /
``checkpoint_restore_args(iterator)`` (grain's Orbax handlers) as one item of
``ocp.args.Composite``; or store ``iterator.get_state()`` bytes yourself and
call ``iterator.set_state(bytes)`` on a fresh ``iter(loader)``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import sys
import zlib
from typing import Iterator

from absl import flags
import numpy as np

from melgenre_jax.data.songs import Song
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import DataError


@dataclasses.dataclass
class SegmentSet:
  """One split of the cached dataset: segments of whole songs."""
  inputs: np.ndarray  # memmap [N, segment_samples] or [N, frames, n_mels]
  # [N] int32 genre index; task='multilabel': [N, num_tags] float32 multi-hot
  labels: np.ndarray
  song_index: np.ndarray  # [N] int32 index into ``songs``
  songs: list[Song]  # songs of this split

  def __len__(self) -> int:
    return int(self.labels.shape[0])


def steps_per_epoch(num_train_segments: int, global_batch_size: int) -> int:
  """Full batches per epoch (the remainder of each epoch is dropped)."""
  if global_batch_size <= 0:
    raise ConfigError(f'config.batch_size={global_batch_size} must be > 0')
  steps = int(num_train_segments) // int(global_batch_size)
  if steps < 1:
    raise DataError(
        f'only {num_train_segments} training segments, fewer than one batch '
        f'of config.batch_size={global_batch_size}: lower --config.batch_size '
        'or add songs')
  return steps


@functools.lru_cache(maxsize=8)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(num_records)
  perm.setflags(write=False)
  return perm


@functools.lru_cache(maxsize=8)
def _epoch_shifts(num_records: int, hop: int, seed: int, epoch: int) -> np.ndarray:
  """Each segment's window shift this epoch, uniform in ``[-hop/2, hop/2)`` samples."""
  shifts = np.random.default_rng([seed, epoch, 1]).integers(
      -(hop // 2), hop - hop // 2, size=num_records)
  shifts.setflags(write=False)
  return shifts


def song_positions(song_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each row's position in its song and its song's row count.

  Rows of one song must be consecutive and in order (as ``load_dataset``
  lays them out).
  """
  song_index = np.asarray(song_index)
  n = len(song_index)
  starts = np.flatnonzero(np.r_[True, song_index[1:] != song_index[:-1]]) if n else \
      np.zeros(0, np.int64)
  counts = np.diff(np.r_[starts, n])
  return np.arange(n) - np.repeat(starts, counts), np.repeat(counts, counts)


def shifted_windows(rows: np.ndarray, idx: np.ndarray, shifts: np.ndarray,
                    position: np.ndarray, count: np.ndarray, hop: int) -> np.ndarray:
  """Song windows starting ``shifts`` samples after rows ``idx``'s own starts.

  ``rows[i]`` is the song audio ``[p*hop, p*hop + L)`` for row ``i`` at
  position ``p`` of its song, so any start between 0 and the last row's is
  real audio of the same song: the tail of one row and the head of the next
  (at ``L - hop`` into it, which covers the overlap when ``hop < L``).
  Starts are clipped to the song, so a one-row song keeps its one window.
  """
  length = rows.shape[1]
  idx = np.asarray(idx, np.int64)
  start = np.clip(position[idx] * hop + shifts[idx], 0, (count[idx] - 1) * hop)
  first = idx - position[idx] + start // hop  # row holding the window's start
  cut = start % hop  # samples into that row
  out = np.empty((len(idx), length), np.float32)
  order = np.argsort(first)  # ascending reads from a memmap
  heads = rows[first[order]]
  nexts = rows[np.minimum(first[order] + 1, len(rows) - 1)]
  for k, o in enumerate(order):
    c = int(cut[o])
    out[o, :length - c] = heads[k, c:]
    if c:
      out[o, length - c:] = nexts[k, length - hop:length - hop + c]
  return out


class BatchSource:
  """grain random-access source whose record ``k`` is local train batch ``k``.

  Batch ``k`` is step ``k % steps`` of epoch ``k // steps``; epoch ``e`` is a
  permutation of the segments seeded by ``(seed, e)`` with its remainder
  dropped, and process ``p`` takes slice ``p`` of every global batch. Whole
  batches as records make the stream identical for any ``worker_count`` and
  keep each epoch exactly ``steps`` batches, and one fancy-indexed read per
  batch is much faster than per-segment records. Memory-mapped inputs are
  reopened by file name in each process: pickling a memmap would copy the
  whole split into every grain worker.
  """

  def __init__(self, segments: SegmentSet, global_batch_size: int, seed: int,
               process_index: int, process_count: int, shift_hop: int = 0):
    x = segments.inputs
    self._filename = None
    if isinstance(x, np.memmap) and x.filename:
      try:
        reopened = np.load(x.filename, mmap_mode='r')
        if reopened.shape == x.shape and reopened.dtype == x.dtype:
          self._filename = os.fspath(x.filename)
      except (OSError, ValueError):
        pass
    self._array = None if self._filename else np.asarray(x)
    self._inputs = None
    labels = np.asarray(segments.labels)
    # Genre indices, or multi-hot float32 rows (task='multilabel').
    self._labels = labels if labels.ndim == 2 else labels.astype(np.int32)
    self._songs = np.asarray(segments.song_index, np.int32)
    self._num = int(x.shape[0])
    self._global_batch = int(global_batch_size)
    self._local_batch = self._global_batch // process_count
    self._offset = process_index * self._local_batch
    self._seed = int(seed)
    self._steps = steps_per_epoch(self._num, self._global_batch)
    # shift_hop > 0: every epoch moves each training window by a fresh random
    # shift within its song (audio.train_offsets='random'), so a song is not
    # always cut at the same points. Windows must be waveform rows.
    self._shift_hop = int(shift_hop)
    if self._shift_hop:
      if x.ndim != 2:
        raise ConfigError("audio.train_offsets='random' needs waveform rows "
                          "(features.where='device'); got rows of shape "
                          f'{tuple(x.shape[1:])}: use --config.features.where=device '
                          "or --config.audio.train_offsets=grid")
      self._position, self._count = song_positions(self._songs)
    crc = zlib.crc32(self._labels.tobytes())
    crc = zlib.crc32(self._songs.tobytes(), crc)
    # grain checks repr() on restore: a different split or batch is refused.
    self._repr = (f'BatchSource(shape={tuple(x.shape)}, crc={crc:08x}, '
                  f'global_batch_size={self._global_batch}, '
                  f'local_batch={self._local_batch}, offset={self._offset}, '
                  f'seed={self._seed}'
                  + (f', shift_hop={self._shift_hop})' if self._shift_hop else ')'))

  @property
  def steps_per_epoch(self) -> int:
    return self._steps

  def _rows(self) -> np.ndarray:
    if self._inputs is None:
      self._inputs = (np.load(self._filename, mmap_mode='r')
                      if self._filename else self._array)
    return self._inputs

  def indices(self, batch: int) -> np.ndarray:
    """Segment indices of this process's part of global batch ``batch``."""
    epoch, step = divmod(int(batch), self._steps)
    start = step * self._global_batch + self._offset
    perm = _epoch_permutation(self._num, self._seed, epoch)
    return perm[start:start + self._local_batch]

  def __len__(self) -> int:
    return sys.maxsize  # an endless stream of batches

  def __getitem__(self, batch: int) -> dict[str, np.ndarray]:
    idx = self.indices(batch)
    if self._shift_hop:
      shifts = _epoch_shifts(self._num, self._shift_hop, self._seed, int(batch) // self._steps)
      inputs = shifted_windows(self._rows(), idx, shifts, self._position, self._count,
                               self._shift_hop)
    else:
      order = np.argsort(idx)
      inputs = np.empty((len(idx), *self._rows().shape[1:]), np.float32)
      inputs[order] = self._rows()[idx[order]]  # ascending reads from the map
    return {'inputs': inputs, 'label': self._labels[idx],
            'song': self._songs[idx]}

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_inputs'] = None
    return state

  def __repr__(self) -> str:
    return self._repr


class _StreamSampler:
  """Record ``k`` is batch ``k``: the order lives in BatchSource."""

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index: int):
    import grain  # pylint: disable=g-import-not-at-top
    if index < 0:
      raise IndexError(index)
    return grain.RecordMetadata(index=index, record_key=index, rng=None)

  def __repr__(self) -> str:
    return '_StreamSampler()'


def create_train_loader(segments: SegmentSet, *, global_batch_size: int,
                        seed: int, worker_count: int, process_index: int = 0,
                        process_count: int = 1, shift_hop: int = 0):
  """Infinite, per-epoch reshuffled, per-process sharded grain DataLoader.

  ``shift_hop`` > 0 (the rows' hop in samples): each epoch, every window
  starts at a fresh random shift in ``[-hop/2, hop/2)`` from its grid position,
  within its song (``BatchSource``); 0 keeps the grid.

  Yields dict(inputs=[B_local, ...] float32, label=[B_local] int32 (multi-label:
  [B_local, num_tags] float32), song=[B_local] int32), ``B_local = global_batch_size // process_count``.
  Batch ``k`` of the stream is step ``k % steps_per_epoch`` of epoch
  ``k // steps_per_epoch``, whatever ``worker_count``; the processes' parts
  of a step are disjoint and together form the global batch.

  ``worker_count=0`` is usually fastest here: a batch is one fancy-indexed
  memmap read, done ahead by two reader threads, while grain workers must ship
  every multi-MB batch between processes (far fewer batches/s with workers on
  a loaded 2-core box: numbers in benchmarks/README.md;
  benchmarks/bench_input_pipeline.py times both). The iterator state
  (``get_state``) names the source's shape, a label checksum, batch size, seed
  and worker count; grain refuses to restore it into a loader that differs in
  any of them.
  """
  import grain  # pylint: disable=g-import-not-at-top
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in '
                     f'0..process_count-1 (process_count={process_count})')
  if global_batch_size % process_count:
    raise ValueError(
        f'config.batch_size={global_batch_size} must be divisible by the '
        f'number of processes ({process_count})')
  if worker_count < 0:
    raise ConfigError(f'config.data.worker_count={worker_count} must be >= 0')
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    # grain reads its absl flags when starting workers; outside an absl app
    # (tests, notebooks) nobody parsed them, so use their defaults.
    flags.FLAGS.mark_as_parsed()
  source = BatchSource(segments, global_batch_size, seed, process_index,
                       process_count, shift_hop)
  return grain.DataLoader(
      data_source=source,
      sampler=_StreamSampler(),
      worker_count=worker_count,
      # Sharding is done by BatchSource: every process reads the same batch
      # numbers and takes its own slice of each.
      shard_options=grain.sharding.NoSharding(),
      read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=4),
  )


def checkpoint_save_args(iterator):
  """Orbax args saving a grain iterator (one item of ocp.args.Composite)."""
  import grain  # pylint: disable=g-import-not-at-top
  return grain.checkpoint.CheckpointSave(iterator)


def checkpoint_restore_args(iterator):
  """Orbax args restoring into ``iterator`` (a fresh iter(loader)) in place."""
  import grain  # pylint: disable=g-import-not-at-top
  return grain.checkpoint.CheckpointRestore(iterator)


def _padded_batch(arrays: dict[str, np.ndarray], start: int,
                  batch_size: int) -> dict[str, np.ndarray]:
  n = len(next(iter(arrays.values())))
  k = min(n, start + batch_size) - start
  batch = {}
  for name, values in arrays.items():
    out = np.zeros((batch_size, *values.shape[1:]), values.dtype)
    out[:k] = values[start:start + k]
    batch[name] = out
  batch['mask'] = np.arange(batch_size) < k
  return batch


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int,
                   prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Rows of equally long arrays in order, once; the last batch zero-padded.

  Adds ``mask`` (False on padding). A background thread reads up to
  ``prefetch`` batches ahead, so disk reads of a memmap overlap the device's
  work.
  """
  if batch_size <= 0:
    raise ValueError(f'eval batch_size={batch_size} must be > 0')
  starts = range(0, len(next(iter(arrays.values()))), batch_size)
  if prefetch <= 0:
    for start in starts:
      yield _padded_batch(arrays, start, batch_size)
    return
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = collections.deque()
    for start in starts:
      pending.append(pool.submit(_padded_batch, arrays, start, batch_size))
      if len(pending) > prefetch:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def eval_batches(segments: SegmentSet, batch_size: int,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Every segment once, in order; the last batch padded, mask False there.

  Keys inputs/label/song/mask.
  """
  return padded_batches({'inputs': segments.inputs, 'label': segments.labels,
                         'song': segments.song_index}, batch_size, prefetch)
