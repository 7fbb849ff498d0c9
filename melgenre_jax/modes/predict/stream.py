"""The streaming engine predict and embed share: files in, the model's rows out, in input order.

Every file is read through ``audio.stream_segments``: its windows arrive in
chunks of at most one inference batch and are sent to the model as they come;
a consumer keeps only what it needs of the outputs (predict the probabilities,
embed a running sum), never the wave, so a three-hour file needs about the
memory of a short one.

Decoding runs in a few threads a bounded number of files ahead of the model
(soundfile, soxr and numpy release the GIL, and so does JAX while the device
computes), and each file's events are consumed in input order, so answers come
out in the order the files were given. Rows of consecutive files share
batches: a folder of one-segment clips still fills every batch.

  Options, check_options   how each file is read and answered (the flags)
  FileJob, file_jobs       the inputs, each stamped before anything is decoded
  file_events              one file as events (below); a failure is an event
  in_order                 files decoded ahead in threads, consumed in order
  RowBatcher               rows of consecutive files, whole batches to the model
  songs                    all of it: each input's ``Song`` once fully answered

A file's events: ``('chunk', model inputs [k, ...], all k silent?)`` ...,
then ``('end', samples read, padded)`` or ``('fail', reason)``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from melgenre_jax.data import audio
from melgenre_jax.errors import ConfigError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.modes.predict import inputs

# Threads decoding ahead of the model; 0 decodes in the calling thread.
DEFAULT_DECODE_WORKERS = 2
# Chunks a decoding thread may hold for one file before it waits for the model.
_CHUNKS_AHEAD_PER_FILE = 2


@dataclasses.dataclass(frozen=True)
class Options:
  """How each file is read and answered (predict's flags; embed uses the window ones)."""

  top_k: int = 3
  hop_seconds: float | None = None  # None: the training config's segment hop
  offset_seconds: float = 0.0
  max_seconds: float | None = None  # None: to the end of the file
  min_confidence: float = 0.0  # below it a song is 'uncertain'; 0: off

  def hop(self, config: ml_collections.ConfigDict) -> float:
    return float(config.audio.segment_hop_seconds if self.hop_seconds is None
                 else self.hop_seconds)

  def hop_samples(self, spec: InputSpec, config: ml_collections.ConfigDict) -> int:
    return int(round(self.hop(config) * spec.sample_rate))


def check_options(options: Options, config: ml_collections.ConfigDict) -> None:
  """Refuses flag values that cannot give an answer, naming the flag and the fix.

  Raises:
    ConfigError: a value is out of range.
  """
  sr = int(config.audio.sample_rate)
  if options.top_k < 1:
    raise ConfigError(f'--top_k={options.top_k} must be >= 1.')
  if options.hop_seconds is not None and not (
      math.isfinite(options.hop_seconds) and round(options.hop_seconds * sr) >= 1):
    raise ConfigError(
        f'--hop_seconds={options.hop_seconds}: the time between the starts of consecutive '
        f'windows must be at least one sample (1/{sr} s); leave it out for the training '
        f'hop ({float(config.audio.segment_hop_seconds)} s).')
  if not (math.isfinite(options.offset_seconds) and options.offset_seconds >= 0):
    raise ConfigError(f'--offset_seconds={options.offset_seconds} must be >= 0 (seconds '
                      'skipped at the start of every file).')
  min_song = float(config.data.min_song_seconds)
  if options.max_seconds is not None and not (
      math.isfinite(options.max_seconds) and options.max_seconds > 0
      and options.max_seconds >= min_song):
    raise ConfigError(
        f'--max_seconds={options.max_seconds}: must be at least the shortest song the '
        f'model answers for (data.min_song_seconds = {min_song} s; one window is '
        f'{float(config.audio.segment_seconds)} s); leave it out to read whole files.')
  if not 0.0 <= options.min_confidence <= 1.0:
    raise ConfigError(f'--min_confidence={options.min_confidence} must be in [0, 1] '
                      '(0 turns it off).')


class FileJob(NamedTuple):
  """One input: a file to read, or a path that yields nothing (``problem`` says why)."""

  path: str
  problem: str | None
  stamp: inputs.Stamp


def file_jobs(paths: Sequence[str]) -> list[FileJob]:
  """Expanded inputs, each stamped before anything is decoded (see ``inputs.Stamp``)."""
  return [FileJob(p, problem, inputs.stamp(p)) for p, problem in inputs.expand_paths(paths)]


# ----------------------------------------------------------------------------
# Decoding: one file's events, and files decoded ahead in threads.


def file_events(path: str, spec: InputSpec, hop_samples: int, options: Options,
                max_rows: int, problem: str | None = None) -> Iterator[tuple]:
  """The events of one file (see the module docstring); ``problem``: it fails with that."""
  if problem is not None:
    yield 'fail', problem
    return
  try:
    stream = audio.stream_segments(
        path, spec.sample_rate, spec.segment_samples, hop_samples, spec.min_samples,
        offset_seconds=options.offset_seconds, max_seconds=options.max_seconds,
        max_rows=max_rows, short_clip=spec.short_clip)
    for chunk in stream:
      silent = all(audio.is_silent(s) for s in chunk)
      yield 'chunk', spec.host_inputs(chunk), silent
    yield 'end', int(stream.num_samples), bool(stream.padded)
  except audio.AudioError as e:
    yield 'fail', e.reason
  except Exception as e:  # pylint: disable=broad-except
    # One odd file (a decoder crash) must not cost the answers for the others.
    yield 'fail', f'failed to decode: {type(e).__name__}: {e}'


def _pump(events: Iterator[tuple], out: queue.Queue, stop: threading.Event) -> None:
  """A decoding thread: the file's events into its bounded queue, until done or stopped."""
  for event in events:
    while True:
      if stop.is_set():
        return
      try:
        out.put(event, timeout=0.2)
        break
      except queue.Full:
        continue


def _drain(out: queue.Queue, future: concurrent.futures.Future) -> Iterator[tuple]:
  while True:
    try:
      event = out.get(timeout=0.5)
    except queue.Empty:
      if future.done() and out.empty():
        raise RuntimeError('a decoding thread ended without finishing its file'
                           ) from future.exception()
      continue
    yield event
    if event[0] != 'chunk':
      return


def in_order(items: Iterable[Any], events: Callable[[Any], Iterator[tuple]], workers: int,
             files_ahead: int) -> Iterator[tuple[Any, Iterator[tuple]]]:
  """``(item, its events)`` in input order, decoded up to ``files_ahead`` files ahead.

  Each file's thread waits once it holds a few chunks, so memory stays
  bounded whatever the files' lengths. Threads take files in order, so the
  one being consumed is always already running (no deadlock). Closing the
  generator (or an exception in the consumer, Ctrl-C included) stops the
  threads. ``workers=0``: each file is decoded when it is consumed.
  """
  if workers <= 0:
    for item in items:
      yield item, events(item)
    return
  todo = iter(items)
  window: collections.deque = collections.deque()
  stop = threading.Event()
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='predict-decode')

  def submit() -> None:
    for item in todo:
      out: queue.Queue = queue.Queue(maxsize=_CHUNKS_AHEAD_PER_FILE)
      window.append((item, out, pool.submit(_pump, events(item), out, stop)))
      return

  try:
    for _ in range(max(1, files_ahead)):
      submit()
    while window:
      item, out, future = window.popleft()
      submit()
      yield item, _drain(out, future)
  finally:
    stop.set()
    pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------
# Batching rows of consecutive songs.


@dataclasses.dataclass(eq=False)
class Song:
  """One input on its way through the engine.

  ``item`` is what the caller gave (predict: a ``FileJob``). ``rows`` and
  ``total`` are the consumer's (see ``RowBatcher``): rows kept as Python
  floats, or a running float64 sum.
  """

  item: Any
  rows: list[list[float]] = dataclasses.field(default_factory=list)
  total: np.ndarray | None = None
  rows_in: int = 0
  rows_out: int = 0
  silent: bool = True
  ended: bool = False
  num_samples: int = 0
  padded: bool = False
  failure: str | None = None

  @property
  def done(self) -> bool:
    return self.failure is not None or (self.ended and self.rows_out == self.rows_in)

  def take(self, event: tuple, batcher: RowBatcher) -> None:
    """One of its file's events: chunks go to ``batcher``, the end or failure is noted."""
    if event[0] == 'chunk':
      self.silent = self.silent and event[2]
      batcher.add(self, event[1])
    elif event[0] == 'end':
      self.ended, self.num_samples, self.padded = True, event[1], event[2]
      if not self.rows_in:
        self.failure = 'no segments'  # a stream that ended without windows or an error
    else:
      self.failure = event[1]


def keep_rows(song: Song, outputs: np.ndarray) -> None:
  """A ``RowBatcher`` consumer (predict's): a song's outputs kept as Python floats."""
  song.rows.extend(outputs.tolist())


class RowBatcher:
  """Rows of consecutive songs, sent to ``fn`` a whole number of batches at a time.

  Partial batches are padded by the model, so holding the remainder back until
  the next song's rows arrive keeps padding to the very last call. Each
  song's slice of an output goes to ``consume(song, outputs)`` (predict keeps
  probabilities, embed sums embeddings); ``song`` needs ``rows_in`` and
  ``rows_out`` counters, which the batcher keeps.

  Consumers keep what they need as Python floats or a small running sum, not
  as slices of each call's output: small numpy arrays that live as long as a
  long file sit between the model's large temporaries in the heap, which is
  never trimmed (runtime/hostmem.py), and the heap then grows with the file's
  length. Python's own allocator keeps its objects apart from that heap.
  """

  def __init__(self, fn: Callable[[np.ndarray], np.ndarray], batch: int,
               consume: Callable[[Any, np.ndarray], None]):
    self._fn = fn
    self._batch = batch
    self._consume = consume
    self._pending: list[tuple[Any, np.ndarray]] = []
    self._rows = 0

  def add(self, song: Any, rows: np.ndarray) -> None:
    song.rows_in += len(rows)
    self._pending.append((song, rows))
    self._rows += len(rows)
    if self._rows >= self._batch:
      self.flush(final=False)

  def flush(self, final: bool = True) -> None:
    n = self._rows if final else self._rows // self._batch * self._batch
    if not n:
      return
    rows = (self._pending[0][1] if len(self._pending) == 1  # a long file's full chunk: no copy
            else np.concatenate([x for _, x in self._pending]))[:n]
    outputs = self._fn(rows)
    start, keep = 0, []
    for song, x in self._pending:
      take = min(len(x), n - start)
      if take:
        self._consume(song, outputs[start:start + take])
        song.rows_out += take
      if take < len(x):
        keep.append((song, x[take:]))
      start += take
    self._pending, self._rows = keep, self._rows - n


def songs(items: Iterable[Any], events: Callable[[Any], Iterator[tuple]], batcher: RowBatcher,
          decode_workers: int = DEFAULT_DECODE_WORKERS) -> Iterator[Song]:
  """Each item's ``Song`` as soon as all its rows are answered (or it failed), in input order.

  ``events(item)`` gives the item's events (``file_events`` for a file).
  Every process of a multi-host run must call it with the same items (the
  model's batches are collective).
  """
  waiting: collections.deque[Song] = collections.deque()

  def finished() -> Iterator[Song]:
    while waiting and waiting[0].done:
      yield waiting.popleft()

  for item, item_events in in_order(items, events, decode_workers, decode_workers + 1):
    song = Song(item)
    waiting.append(song)
    for event in item_events:
      song.take(event, batcher)
    yield from finished()
  batcher.flush()
  yield from finished()
