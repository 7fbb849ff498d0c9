"""Distillation: the reference CRNN also learns what a pretrained tagger hears (issue #31).

A small genre set cannot teach a model from random weights much more than its
own labels say; a tagger trained on a large collection (musicnn on the Million
Song Dataset) has heard far more music. With ``config.distill.teacher`` set,
every training song gets the teacher's view of it, computed once and cached:

* ``target='embedding'``: the teacher's penultimate embedding averaged over
  the song's windows, standardised per dimension over the training songs;
* ``target='tags'``: the teacher's tag probabilities averaged over the windows.

The student (``config.model.distill_outputs`` = the targets' width) predicts
them from its own embedding through ``distill_head`` and its loss adds
``config.distill.weight x`` the mean squared error (embedding) or the binary
cross-entropy (tags) to the genre loss (steps.distill_loss). Each training
segment gets its song's targets, so the student is taught on the same audio.
The teacher never saw the genre set: its targets for test songs are never
used, and it is an input like any pretrained feature, not a trained model.

``config.distill.consistent=True`` runs the teacher inside the train step
instead (``step_teacher``): it hears the very audio the student hears after
time shift, noise and waveform mixup, so every augmented or mixed view gets
its own targets ("function matching", Beyer et al. 2022: a student matches a
teacher best when both see the same view). Only the 'tags' target (the
teacher's probabilities) is offered there: the embedding target's
standardisation is a statistic over songs, not over views.

Reading order: ``check``, ``teacher_model``, ``song_targets`` (cached per
song key in the data cache), ``train_targets`` and ``step_teacher`` (what the
train loop calls).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import inference
from melgenre_jax import steps
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import audio
from melgenre_jax.data import cache
from melgenre_jax.data.songs import Song
from melgenre_jax.errors import ConfigError
from melgenre_jax.runtime import atomic

TARGETS = ('embedding', 'tags')


def enabled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.get('distill') and config.distill.get('teacher'))


def check(config: ml_collections.ConfigDict) -> None:
  """The distill settings, before any data or compile work."""
  if not enabled(config):
    return
  d = config.distill
  if config.model.get('name', 'crnn') != 'crnn':
    raise ConfigError('config.distill.teacher teaches the reference model (model.name=crnn); '
                      f'model.name={config.model.name!r} has no distill head.')
  if d.get('target', 'embedding') not in TARGETS:
    raise ConfigError(f'config.distill.target={d.target!r}: choose one of {", ".join(TARGETS)}.')
  weight = d.get('weight', 1.0)
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
    raise ConfigError(f'config.distill.weight={weight!r}: a number >= 0 (the distill loss\'s '
                      'share beside the genre loss).')
  if int(config.model.get('distill_outputs', 0)) <= 0:
    raise ConfigError('config.distill.teacher is set but config.model.distill_outputs is 0: set '
                      'it to the targets\' width (200 for a musicnn embedding, 50 for its tags).')
  if consistent(config) and d.target != 'tags':
    raise ConfigError('config.distill.consistent=True matches the teacher\'s probabilities on '
                      'each view: set --config.distill.target=tags (and '
                      '--config.model.distill_outputs to the teacher\'s output count, 50 for musicnn).')
  if consistent(config) and config.features.where != 'device':
    raise ConfigError('config.distill.consistent=True runs the teacher on the batch\'s audio: '
                      'it needs config.features.where=device (the default).')


def consistent(config: ml_collections.ConfigDict) -> bool:
  """Whether the teacher runs in the train step (``step_teacher``) rather than once per song."""
  return enabled(config) and bool(config.distill.get('consistent', False))


def teacher_workdir(config: ml_collections.ConfigDict) -> str:
  """The teacher's workdir (a ``musicnn:MODEL`` spec was imported when the run started)."""
  teacher = str(config.distill.teacher)
  path = os.path.abspath(os.path.expanduser(teacher))
  if not workdir_lib.has_checkpoints(path):
    raise ConfigError(f'config.distill.teacher={teacher!r} is neither a run\'s workdir (no '
                      'checkpoints/ in it) nor a pretrained spec such as musicnn:MSD_musicnn.')
  return path


def teacher_model(config: ml_collections.ConfigDict) -> inference.InferenceModel:
  """The teacher, ready for inference; short clips filled as ``config.distill.short_clip`` says."""
  workdir = teacher_workdir(config)
  teacher_config = workdir_lib.load_workdir_config(workdir)
  teacher_config.audio.short_clip = str(config.distill.get('short_clip', 'repeat'))
  return inference.load_for_inference(teacher_config, workdir, calibrated=False)  # raw outputs


def windows_of(model: inference.InferenceModel, wave: np.ndarray) -> np.ndarray:
  """One song's model inputs, cut as the teacher's input format says."""
  spec = model.spec
  segments = audio.segment_audio(wave, spec.segment_samples, spec.hop_samples, 1,
                                 short_clip=spec.short_clip)
  return spec.host_inputs(segments)


def targets_of(model: inference.InferenceModel, rows: np.ndarray, song_of_row: np.ndarray,
               num_songs: int, target: str) -> np.ndarray:
  """Per song: its windows' mean embedding, or mean tag probabilities (one batched pass)."""
  out = model.predict(rows) if target == 'tags' else model.embed(rows)
  sums = np.zeros((num_songs, out.shape[1]), np.float64)
  np.add.at(sums, song_of_row, out)
  return (sums / np.bincount(song_of_row, minlength=num_songs)[:, None]).astype(np.float32)


def cache_path(cache_dir: str, config: ml_collections.ConfigDict) -> str:
  """One file per teacher, target and window rule (the song keys are inside)."""
  d = config.distill
  name = f'{d.teacher}|{d.get("target", "embedding")}|{d.get("short_clip", "repeat")}'
  digest = hashlib.sha1(name.encode()).hexdigest()[:12]
  return os.path.join(cache_dir, f'teacher_{digest}.npz')


def song_targets(config: ml_collections.ConfigDict, songs: Sequence[Song],
                 cache_dir: str) -> np.ndarray:
  """``[len(songs), D]`` raw teacher targets, read from the cache or computed (and cached)."""
  path = cache_path(cache_dir, config)
  cached: dict[str, np.ndarray] = {}
  if os.path.isfile(path):
    with np.load(path) as f:
      cached = dict(zip(f['keys'].tolist(), f['targets']))
  missing = [s for s in songs if s.key not in cached]
  if missing:
    model = teacher_model(config)
    teacher_config = model.config
    params = cache.decode_params(teacher_config)
    target = str(config.distill.get('target', 'embedding'))
    logging.info('distill: the teacher (%s) hears %d songs (%d cached in %s).',
                 config.distill.teacher, len(missing), len(cached), path)
    windows = [windows_of(model, cache.song_wave(song, params)) for song in missing]
    song_of_row = np.repeat(np.arange(len(missing)), [len(w) for w in windows])
    targets = targets_of(model, np.concatenate(windows), song_of_row, len(missing), target)
    cached.update(zip((s.key for s in missing), targets))
    keys = sorted(cached)
    os.makedirs(cache_dir, exist_ok=True)
    with atomic.replaced_when_written(path, 'wb', unique=True) as f:  # the shared data cache
      np.savez(f, keys=np.asarray(keys), targets=np.stack([cached[k] for k in keys]))
  return np.stack([np.asarray(cached[s.key], np.float32) for s in songs])


def train_targets(config: ml_collections.ConfigDict, train_songs: Sequence[Song],
                  workdir: str) -> np.ndarray | None:
  """What the train step's batches carry per training song (``[songs, distill_outputs]``).

  None without a teacher. Cached beside the run's audio cache (``config.data.cache_dir``).
  """
  if not enabled(config) or consistent(config):
    return None
  raw = song_targets(config, train_songs, config.data.cache_dir or os.path.join(workdir, 'cache'))
  if str(config.distill.get('target', 'embedding')) == 'embedding':
    raw = (raw - raw.mean(axis=0)) / (raw.std(axis=0) + 1e-6)
  _check_width(config, raw.shape[1])
  return raw.astype(np.float32)


def _check_width(config: ml_collections.ConfigDict, width: int) -> None:
  """The distill head must have as many outputs as the teacher's targets have columns."""
  head = int(config.model.distill_outputs)
  if head != width:
    raise ConfigError(f'config.model.distill_outputs={head}, but the teacher\'s targets have '
                      f'{width} columns: set --config.model.distill_outputs={width}.')


def step_teacher(config: ml_collections.ConfigDict) -> steps.StepTeacher | None:
  """The teacher for the train step when ``config.distill.consistent``, else None."""
  if not consistent(config):
    return None
  model = teacher_model(config)
  width = len(model.genres)
  _check_width(config, width)
  if not model.spec.takes_waves:
    raise ConfigError(f'config.distill.teacher={config.distill.teacher!r} computes its features '
                      'on the host (features.where=host): a consistent teacher must take audio.')
  logging.info('distill: the teacher (%s, %d outputs, %d Hz) runs in every train step on the '
               'student\'s augmented audio.', config.distill.teacher, width, model.spec.sample_rate)
  host_variables = jax.tree.map(np.asarray, model.variables)  # constants of the student's step
  return steps.StepTeacher(variables=host_variables, apply_fn=model.apply_fn, spec=model.spec,
                           multilabel=model.multilabel,
                           microbatch=steps.resolve_microbatch(-1))
