"""Classify any song with a trained workdir: top genres and genre over time.

Each file is decoded (any supported format, resampled to the training sample
rate), cut into segments exactly as in training, and every segment of every
file goes through the model in one batched pass. A song's genre is the mean of
its segments' probabilities; the per-segment argmax gives a timeline.

A file that cannot be used (missing, empty, corrupt, not audio, too short) is
reported with its reason and skipped; the others are still answered. Only when
no file at all could be classified does ``predict_paths`` raise.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import config_checks
from melgenre_jax import inference
from melgenre_jax.data import audio
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import NothingClassifiedError
from melgenre_jax.input_spec import InputSpec

PREDICTIONS_DIR = 'predictions'


def expand_paths(paths: list[str] | tuple[str, ...]) -> list[tuple[str, str | None]]:
  """Files as given, folders searched recursively for supported extensions.

  A path that does not exist but holds a wildcard (``*.flac``, quoted so the
  shell left it alone, or a shell without globbing) is expanded here.
  Returns ``(path, problem)`` pairs: ``problem`` is None for a file to try, or
  the reason a given path yields nothing (a missing path, an empty folder).
  Order: as given, folder contents sorted; duplicates kept once.
  """
  out: list[tuple[str, str | None]] = []
  seen = set()

  def add(path, problem=None):
    if path not in seen:
      seen.add(path)
      out.append((path, problem))

  for path in _expand_wildcards(paths):
    if os.path.isdir(path):
      found = sorted(os.path.join(root, name)
                     for root, _, names in os.walk(path) for name in names
                     if audio.has_supported_extension(name))
      if not found:
        add(path, 'folder holds no audio files with a supported extension ('
            + ', '.join(sorted(audio.SUPPORTED_EXTENSIONS)) + ')')
      for f in found:
        add(f)
    elif not os.path.exists(path):
      add(path, 'file not found')
    else:
      add(path)
  return out


def _expand_wildcards(paths: list[str] | tuple[str, ...]) -> list[str]:
  out = []
  for path in paths:
    matches = (sorted(glob.glob(path, recursive=True))
               if not os.path.exists(path) and glob.has_magic(path) else [])
    out.extend(matches or [path])
  return out


def song_segments(path: str, spec: InputSpec) -> tuple[np.ndarray, int]:
  """Decoded, resampled, segmented waves ``[n, segment_samples]`` and the song's length.

  Raises:
    audio.AudioError: the file cannot be used (the reason says why).
  """
  wave = audio.load_audio(path, spec.sample_rate)
  return audio.segment_audio(wave, spec.segment_samples, spec.hop_samples,
                             spec.min_samples, path=path), int(wave.shape[0])


def _song_result(path: str, probs: np.ndarray, num_samples: int, spec: InputSpec,
                 genres: list[str], top_k: int, silent: bool) -> dict[str, Any]:
  mean = probs.mean(axis=0)
  order = np.argsort(-mean, kind='stable')[:max(1, top_k)]
  starts = [i * spec.hop_samples / spec.sample_rate for i in range(len(probs))]
  result = {
      'path': path, 'ok': True, 'reason': None,
      'duration_seconds': num_samples / spec.sample_rate,
      'num_segments': int(len(probs)),
      'genre': genres[int(order[0])],
      'top_k': [{'genre': genres[int(i)], 'probability': float(mean[i])} for i in order],
      'probabilities': {g: float(p) for g, p in zip(genres, mean)},
      'timeline': [{'start_seconds': float(t), 'genre': genres[int(p.argmax())],
                    'probability': float(p.max())} for t, p in zip(starts, probs)],
      'segment_probabilities': probs.astype(float).tolist(),
      'padded': bool(num_samples < spec.segment_samples),
  }
  if silent:
    result['warning'] = 'every segment is near silence (< -60 dBFS); the answer means little'
  return result


def _failure(path: str, reason: str) -> dict[str, Any]:
  return {'path': path, 'ok': False, 'reason': reason}


def _clock(seconds: float) -> str:
  """m:ss, or m:ss.s when segments start between whole seconds."""
  m, s = divmod(float(seconds), 60.0)
  if abs(s - round(s)) < 1e-6:
    return f'{int(m)}:{int(round(s)):02d}'
  return f'{int(m)}:{s:04.1f}'


def format_text(results: list[dict[str, Any]]) -> str:
  """Per song: top-k genres with probabilities and a genre-over-time line."""
  lines = []
  for r in results:
    if not r['ok']:
      lines.append(f"{r['path']}: SKIPPED - {r['reason']}")
      continue
    lines.append(f"{r['path']}  ({r['duration_seconds']:.1f} s, "
                 f"{r['num_segments']} segment{'s' if r['num_segments'] != 1 else ''}"
                 f"{', padded' if r['padded'] else ''})")
    for rank, t in enumerate(r['top_k'], 1):
      lines.append(f"  {rank}. {t['genre']:<14} {t['probability']:.3f}")
    lines.append('  timeline: ' + ' | '.join(
        f"{_clock(x['start_seconds'])} {x['genre']}" for x in r['timeline']))
    if 'warning' in r:
      lines.append(f"  warning: {r['warning']}")
  ok = sum(r['ok'] for r in results)
  lines.append(f'{ok} of {len(results)} file(s) classified.')
  return '\n'.join(lines)


def _plot_name(path: str, used: set[str]) -> str:
  stem = re.sub(r'[^A-Za-z0-9._-]+', '_', os.path.splitext(os.path.basename(path))[0]) or 'song'
  name, i = stem, 1
  while name in used:
    i += 1
    name = f'{stem}_{i}'
  used.add(name)
  return f'{name}_timeline.png'


def classify_files(model: inference.InferenceModel, paths: list[str] | tuple[str, ...],
                   top_k: int = 3, max_pending_segments: int = 2048
                   ) -> list[dict[str, Any]]:
  """Results for every path (failures included), in input order.

  Segments of consecutive files share batches; they are sent to the model
  whenever ``max_pending_segments`` have accumulated, so a folder of a
  thousand songs does not have to fit in memory at once.
  """
  spec = model.spec
  entries = expand_paths(paths)
  results: list[dict[str, Any] | None] = [None] * len(entries)
  pending: list[tuple[int, str, np.ndarray, int, bool]] = []

  def flush():
    if not pending:
      return
    probs = model.predict(np.concatenate([p[2] for p in pending]))
    counts = [len(p[2]) for p in pending]
    bounds = np.cumsum([0] + counts)
    for k, (i, path, _, num_samples, silent) in enumerate(pending):
      results[i] = _song_result(path, probs[bounds[k]:bounds[k + 1]], num_samples,
                                spec, model.genres, top_k, silent)
    pending.clear()

  for i, (path, problem) in enumerate(entries):
    if problem is not None:
      results[i] = _failure(path, problem)
      continue
    try:
      segments, num_samples = song_segments(path, spec)
      x = spec.host_inputs(segments)
    except audio.AudioError as e:
      results[i] = _failure(path, e.reason)
      continue
    except Exception as e:  # pylint: disable=broad-except
      # One odd file (a decoder crash) must not cost the answers for the others.
      results[i] = _failure(path, f'failed to decode: {type(e).__name__}: {e}')
      continue
    silent = all(audio.is_silent(s) for s in segments)
    pending.append((i, path, x, num_samples, silent))
    if sum(len(p[2]) for p in pending) >= max_pending_segments:
      flush()
  flush()
  return results  # type: ignore[return-value]


def predict_paths(config: ml_collections.ConfigDict, workdir: str, paths: list[str],
                  step: int | None = None, output: str = 'text', top_k: int = 3,
                  plot: bool = False) -> list[dict[str, Any]]:
  """``--mode=predict``: classify files/folders with the workdir's best checkpoint.

  Prints the answers (``output='text'``) or writes
  ``WORKDIR/predictions/predictions.json`` (``'json'``, path printed); with
  ``plot`` saves ``WORKDIR/predictions/<song>_timeline.png`` per song.
  Returns every file's result (failures carry ``ok=False`` and ``reason``).

  Raises:
    NothingClassifiedError: no file could be classified.
  """
  if output not in ('text', 'json'):
    raise ConfigError(f"--output={output!r}: allowed values are 'text', 'json'.")
  if not paths:
    raise ConfigError('--mode=predict needs audio files or folders: give them after the '
                      'flags (main.py --workdir W --mode predict song.mp3 my_folder/) or '
                      'with --audio (repeated or comma-separated).')
  if top_k < 1:
    raise ConfigError(f'--top_k={top_k} must be >= 1.')
  workdir = os.path.abspath(workdir)
  config_checks.check_workdir_compatible(config, workdir)
  model = inference.load_for_inference(config, workdir, step)
  results = classify_files(model, paths, top_k=top_k)
  failed = [r for r in results if not r['ok']]
  for r in failed:
    logging.warning('Skipped %s: %s', r['path'], r['reason'])

  chief = jax.process_index() == 0
  out_dir = os.path.join(workdir, PREDICTIONS_DIR)
  if chief and (plot or output == 'json'):
    os.makedirs(out_dir, exist_ok=True)
  if chief and plot:
    from melgenre_jax import reporting  # pylint: disable=g-import-not-at-top
    used: set[str] = set()
    for r in results:
      if r['ok']:
        r['plot'] = os.path.join(out_dir, _plot_name(r['path'], used))
        reporting.plot_genre_timeline(
            np.asarray(r['segment_probabilities']),
            [x['start_seconds'] for x in r['timeline']],
            float(config.audio.segment_seconds), model.genres, r['plot'],
            title=f"{os.path.basename(r['path'])}: {r['genre']}")
  if chief:
    if output == 'json':
      path = os.path.join(out_dir, 'predictions.json')
      with open(path, 'w') as f:
        json.dump({'workdir': workdir, 'checkpoint_step': model.step,
                   'genres': model.genres, 'sample_rate': int(config.audio.sample_rate),
                   'segment_seconds': float(config.audio.segment_seconds),
                   'segment_hop_seconds': float(config.audio.segment_hop_seconds),
                   'results': results}, f, indent=1)
      print(path)  # CLI output
    else:
      print(format_text(results))  # CLI output
  if len(failed) == len(results):
    raise NothingClassifiedError(
        'No file could be classified:\n  ' + '\n  '.join(
            f"{r['path']}: {r['reason']}" for r in failed))
  return results
