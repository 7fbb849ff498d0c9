"""Songs in, answers out: streamed decoding, overlapped with the model, shared batches.

Every file is read through ``audio.stream_segments``: its windows arrive in
chunks of at most one inference batch, are classified as they come, and only
their probabilities are kept, never the wave, so a three-hour file needs about
the memory of a short one.

Decoding runs in a few threads a bounded number of files ahead of the model
(soundfile, soxr and numpy release the GIL, and so does JAX while the device
computes), and chunks are consumed in input order, so results come out in the
order the files were given. Rows of consecutive files share batches: a folder
of one-segment clips still fills every batch.

A file that cannot be used (missing, empty, corrupt, not audio, too short) gets
a result with its reason; the other files are still answered.
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

from melgenre_jax import calibration
from melgenre_jax import inference
from melgenre_jax.data import audio
from melgenre_jax.errors import ConfigError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.modes.predict import inputs

# Threads decoding ahead of the model; 0 decodes in the calling thread.
DEFAULT_DECODE_WORKERS = 2
# Chunks a decoding thread may hold for one file before it waits for the model.
_CHUNKS_AHEAD_PER_FILE = 2
SILENCE_WARNING = 'every segment is near silence (< -60 dBFS); the answer means little'


@dataclasses.dataclass(frozen=True)
class Options:
  """How each file is read and answered (predict's flags)."""

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
#
# A file's events: ('chunk', model inputs [k, ...], all k silent?) ..., then
# ('end', samples read, padded) or ('fail', reason).


def _file_events(path: str, spec: InputSpec, hop_samples: int, options: Options,
                 max_rows: int) -> Iterator[tuple]:
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
  one being consumed is always already running (no deadlock).
  ``workers=0``: each file is decoded when it is consumed.
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
class _Song:
  job: FileJob
  probs: list[list[float]] = dataclasses.field(default_factory=list)  # see RowBatcher
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


def keep_probabilities(song: _Song, outputs: np.ndarray) -> None:
  """predict's ``RowBatcher`` consumer: a song's outputs kept as Python floats."""
  song.probs.extend(outputs.tolist())


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


# ----------------------------------------------------------------------------
# Results.


def failure(job: FileJob, reason: str) -> dict[str, Any]:
  return {'path': job.path, 'ok': False, 'status': 'skipped', 'uncertain': False,
          'reason': reason,
          'size_bytes': job.stamp.size_bytes, 'mtime': job.stamp.mtime}


def song_result(job: FileJob, segment_probs: np.ndarray, num_samples: int, padded: bool,
                silent: bool, genres: Sequence[str], temperature: float, options: Options,
                sample_rate: int, hop_samples: int,
                threshold: float | None = None) -> dict[str, Any]:
  """One song's answer from its raw segment probabilities ``[n, genres]``.

  Song probabilities are calibrated (``calibration.song_probabilities``), and
  so are the timeline's; ``segment_probabilities`` stay the model's raw
  outputs, from which every other number can be recomputed.

  ``threshold`` (a multi-label model's ``config.multilabel.threshold``): the
  outputs are independent tag probabilities, a song's the mean of its
  segments' (not calibrated); ``tags`` lists those reaching the threshold,
  ``top_k`` the highest tags and ``genre`` the top one.
  """
  multilabel = threshold is not None
  if multilabel:
    song = np.asarray(segment_probs, np.float64).mean(axis=0)
    segments = np.asarray(segment_probs, np.float64)
  else:
    song = calibration.song_probabilities(segment_probs, temperature)
    segments = calibration.apply_temperature(segment_probs, temperature)
  order = np.argsort(-song, kind='stable')[:max(1, options.top_k)]
  best = float(song[order[0]])
  certain = multilabel or best >= options.min_confidence
  starts = [options.offset_seconds + i * hop_samples / sample_rate
            for i in range(len(segment_probs))]
  result = {
      'path': job.path, 'ok': True, 'status': 'ok' if certain else 'uncertain',
      'uncertain': not certain,
      'reason': None if certain else (f'top probability {best:.3f} < --min_confidence '
                                      f'{options.min_confidence:g}'),
      'duration_seconds': num_samples / sample_rate,
      'num_segments': int(len(segment_probs)),
      'genre': genres[int(order[0])] if certain else None,
      'top_k': [{'genre': genres[int(i)], 'probability': float(song[i])} for i in order],
      'probabilities': {g: float(p) for g, p in zip(genres, song)},
      'timeline': [{'start_seconds': float(t), 'genre': genres[int(p.argmax())],
                    'probability': float(p.max())} for t, p in zip(starts, segments)],
      'segment_probabilities': np.asarray(segment_probs).astype(float).tolist(),
      'padded': bool(padded),
      'size_bytes': job.stamp.size_bytes, 'mtime': job.stamp.mtime,
  }
  if multilabel:
    result['threshold'] = float(threshold)
    result['tags'] = [genres[int(i)] for i in np.argsort(-song, kind='stable')
                      if song[i] >= threshold]
  if silent:
    result['warning'] = SILENCE_WARNING
  return result


def iter_results(model: inference.InferenceModel, jobs: Iterable[FileJob],
                 options: Options = Options(),
                 decode_workers: int = DEFAULT_DECODE_WORKERS) -> Iterator[dict[str, Any]]:
  """Each job's result (failures included) as soon as it is complete, in input order.

  Every process of a multi-host run must call it with the same jobs (the
  model's batches are collective).
  """
  spec = model.spec
  hop = options.hop_samples(spec, model.config)
  batch = inference.inference_batch_size(model.config.eval_batch_size)
  batcher = RowBatcher(model.predict, batch, keep_probabilities)
  temperature = float(model.temperature)
  threshold = float(model.config.multilabel.threshold) if model.multilabel else None
  waiting: collections.deque[_Song] = collections.deque()

  def events(job: FileJob) -> Iterator[tuple]:
    if job.problem is not None:
      return iter([('fail', job.problem)])
    return _file_events(job.path, spec, hop, options, max_rows=batch)

  def finished() -> Iterator[dict[str, Any]]:
    while waiting and waiting[0].done:
      song = waiting.popleft()
      if song.failure is not None:
        yield failure(song.job, song.failure)
      else:
        yield song_result(song.job, np.asarray(song.probs, np.float32), song.num_samples,
                          song.padded, song.silent, model.genres, temperature, options,
                          spec.sample_rate, hop, threshold)

  for job, file_events in in_order(jobs, events, decode_workers, decode_workers + 1):
    song = _Song(job)
    waiting.append(song)
    for event in file_events:
      if event[0] == 'chunk':
        song.silent = song.silent and event[2]
        batcher.add(song, event[1])
      elif event[0] == 'end':
        song.ended, song.num_samples, song.padded = True, event[1], event[2]
        if not song.rows_in:
          song.failure = 'no segments'  # a stream that ended without windows or an error
      else:
        song.failure = event[1]
    yield from finished()
  batcher.flush()
  yield from finished()


def classify_files(model: inference.InferenceModel, paths: Sequence[str],
                   options: Options = Options(),
                   decode_workers: int = DEFAULT_DECODE_WORKERS) -> list[dict[str, Any]]:
  """Results for every path (failures included), in input order."""
  return list(iter_results(model, file_jobs(paths), options, decode_workers))


def song_segments(path: str, spec: InputSpec) -> tuple[np.ndarray, int]:
  """The whole-file path: decoded, resampled, segmented waves and the song's length.

  What predict did before streaming; the benchmarks and tests compare against it.

  Raises:
    audio.AudioError: the file cannot be used (the reason says why).
  """
  wave = audio.load_audio(path, spec.sample_rate)
  return audio.segment_audio(wave, spec.segment_samples, spec.hop_samples,
                             spec.min_samples, path=path,
                             short_clip=spec.short_clip), int(wave.shape[0])
