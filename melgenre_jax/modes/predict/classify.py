"""Predict's answers: each song's calibrated genres, top-k and timeline, from the engine.

Files go through the streaming engine shared with embed (``stream.py``:
decoding ahead, input order, shared batches); this module turns a song's
segment probabilities into its answer. A file that cannot be used (missing,
empty, corrupt, not audio, too short) gets a result with its reason; the
other files are still answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from melgenre_jax import calibration
from melgenre_jax import inference
from melgenre_jax.data import audio
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.modes.predict import stream
from melgenre_jax.modes.predict.stream import DEFAULT_DECODE_WORKERS
from melgenre_jax.modes.predict.stream import FileJob
from melgenre_jax.modes.predict.stream import Options

SILENCE_WARNING = 'every segment is near silence (< -60 dBFS); the answer means little'


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
  batcher = stream.RowBatcher(model.predict, batch, stream.keep_rows)
  temperature = float(model.temperature)
  threshold = float(model.config.multilabel.threshold) if model.multilabel else None

  def events(job: FileJob) -> Iterator[tuple]:
    return stream.file_events(job.path, spec, hop, options, batch, job.problem)

  for song in stream.songs(jobs, events, batcher, decode_workers):
    if song.failure is not None:
      yield failure(song.item, song.failure)
    else:
      yield song_result(song.item, np.asarray(song.rows, np.float32), song.num_samples,
                        song.padded, song.silent, model.genres, temperature, options,
                        spec.sample_rate, hop, threshold)


def classify_files(model: inference.InferenceModel, paths: Sequence[str],
                   options: Options = Options(),
                   decode_workers: int = DEFAULT_DECODE_WORKERS) -> list[dict[str, Any]]:
  """Results for every path (failures included), in input order."""
  return list(iter_results(model, stream.file_jobs(paths), options, decode_workers))


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
