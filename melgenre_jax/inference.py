"""A trained model, restored for prediction only, and prediction on plain arrays.

Evaluation, prediction, export, the per-epoch validation of the training loop
and the benchmarks all predict through this module. Restoring reads only what
prediction needs (weights, BatchNorm and feature statistics): no optimizer, no
learning-rate schedule, no data position.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import weakref
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import calibration
from melgenre_jax import checkpointing
from melgenre_jax import reporting
from melgenre_jax import steps
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import input_pipeline
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import WorkdirError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.runtime import hostmem
from melgenre_jax.runtime import parallel


@dataclasses.dataclass(frozen=True)
class InferenceModel:
  """A model's variables on this machine's devices and what is needed to feed it."""

  variables: steps.ModelVariables
  genres: list[str]
  config: ml_collections.ConfigDict
  spec: InputSpec
  step: int
  mesh: Any
  apply_fn: Callable
  p_predict: Callable
  # Song-level temperature fitted on validation (calibration.py); 1 = uncalibrated.
  temperature: float = 1.0

  def predict(self, inputs: np.ndarray, batch_size: int | None = None,
              progress: str | None = None) -> np.ndarray:
    """Raw (uncalibrated) probabilities ``[N, genres]`` for inputs ``[N, *spec.input_shape]``."""
    batch = inference_batch_size(batch_size or self.config.eval_batch_size)
    announce_first_compile(self.p_predict, 'prediction', batch)
    return predict_arrays(self.p_predict, self.variables, inputs, batch, self.mesh,
                          progress)

  @property
  def multilabel(self) -> bool:
    """Sigmoid tag scores (``config.task='multilabel'``) rather than a genre softmax."""
    return self.config.task == 'multilabel'

  def song_probabilities(self, segment_probs: np.ndarray) -> np.ndarray:
    """Calibrated probabilities ``[genres]`` of one song from ``predict``'s rows for its segments.

    softmax(log(mean of the segment probabilities) / temperature): the same
    top genre as the plain mean, its confidence rescaled by the temperature
    fitted on validation (1, unchanged, when the step was never calibrated).
    Multi-label: the plain mean per tag (tags are not calibrated).
    """
    if self.multilabel:
      return np.asarray(segment_probs, np.float64).mean(axis=0)
    return calibration.song_probabilities(segment_probs, self.temperature)

  @property
  def embedding_dim(self) -> int:
    """Width ``D`` of ``embed``'s rows: the classifier head's input size."""
    return int(self.variables.params['head']['kernel'].shape[0])

  @functools.cached_property
  def p_embed(self) -> Callable:
    """The compiled embed step, built on first use (prediction never pays for it)."""
    return steps.make_embed_step(
        self.mesh, self.apply_fn, self.spec.device_preprocess(),
        steps.resolve_microbatch(self.config.get('eval_microbatch', -1)))

  def embed(self, inputs: np.ndarray, batch_size: int | None = None,
            progress: str | None = None) -> np.ndarray:
    """Embeddings ``[N, D]`` float32 (what the head reads) for inputs ``[N, *spec.input_shape]``."""
    batch = inference_batch_size(batch_size or self.config.eval_batch_size)
    announce_first_compile(self.p_embed, 'embedding', batch)
    return embed_arrays(self.p_embed, self.variables, inputs, batch, self.mesh,
                        self.embedding_dim, progress)


_ANNOUNCED: weakref.WeakSet = weakref.WeakSet()  # jitted steps whose first call was said


def announce_first_compile(step_fn: Callable, what: str, batch_size: int) -> None:
  """One line before a jitted step's first call: XLA compiles it then (seconds to a minute).

  Without it the first batch is a silent pause that reads like a hang.
  """
  if step_fn in _ANNOUNCED:
    return
  _ANNOUNCED.add(step_fn)
  logging.info('Compiling the %s step for %d device(s), batch %d (XLA, first batch only).',
               what, jax.device_count(), batch_size)


def inference_batch_size(requested: int) -> int:
  """``requested`` rounded up to a multiple of this machine's device count.

  A run trained on 8 accelerators may be evaluated on a 2-core CPU (or the
  reverse); the batch only has to split evenly over the devices present.
  """
  n = jax.device_count()
  return max(n, -(-int(requested) // n) * n)


def predict_arrays(p_predict: Callable, variables: steps.ModelVariables,
                   inputs: np.ndarray, batch_size: int, mesh,
                   progress: str | None = None) -> np.ndarray:
  """Probabilities for every row of ``inputs``, in order ``[N, classes]``.

  ``p_predict`` is a (compiled) ``steps.make_predict_step``; each process feeds
  its slice of every padded global batch and gets all rows back.
  """
  out = []
  batches = input_pipeline.padded_batches({'inputs': inputs}, batch_size)
  if progress:
    batches = reporting.progress_bar(batches, total=-(-len(inputs) // batch_size),
                                     desc=progress)
  rows = parallel.process_slice(batch_size)
  for batch in batches:
    local = {'inputs': np.asarray(batch['inputs'], np.float32)[rows]}
    probs = parallel.to_host(p_predict(variables, parallel.global_batch(local, mesh)['inputs']))
    out.append(probs[np.asarray(batch['mask'])])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_arrays(p_embed: Callable, variables: steps.ModelVariables, inputs: np.ndarray,
                 batch_size: int, mesh, dim: int, progress: str | None = None) -> np.ndarray:
  """Embeddings for every row of ``inputs``, in order ``[N, dim]`` float32.

  ``p_embed`` is a ``steps.make_embed_step``; batching, padding and the
  per-process slices are those of ``predict_arrays``.
  """
  if not len(inputs):
    return np.zeros((0, dim), np.float32)
  return np.asarray(predict_arrays(p_embed, variables, inputs, batch_size, mesh, progress),
                    np.float32)


def make_inference_model(config: ml_collections.ConfigDict, genres: list[str],
                         variables: steps.ModelVariables, mesh, step: int,
                         temperature: float = 1.0) -> InferenceModel:
  """Wraps variables already placed on ``mesh`` (restored, or fresh for benchmarks)."""
  return _wrap(config, InputSpec.from_config(config), genres, variables, mesh, step,
               temperature)


def _wrap(config: ml_collections.ConfigDict, spec: InputSpec, genres: list[str],
          variables: steps.ModelVariables, mesh, step: int,
          temperature: float) -> InferenceModel:
  apply_fn = steps.create_model(config, len(genres)).apply
  return InferenceModel(
      variables=variables, genres=list(genres), config=config, spec=spec, step=int(step),
      mesh=mesh, apply_fn=apply_fn,
      p_predict=steps.make_predict_step(
          mesh, apply_fn, spec.device_preprocess(),
          steps.resolve_microbatch(config.get('eval_microbatch', -1)),
          multilabel=config.task == 'multilabel'),
      temperature=float(temperature))


def _pick_step(workdir: str, manager, step: int | None) -> int:
  steps_saved = manager.all_steps()
  if not steps_saved:
    raise WorkdirError(
        f'No complete checkpoint in {workdir_lib.checkpoint_dir(workdir)}: train first, '
        'or wait for the running training to write its first checkpoint.')
  if step is None:
    return int(manager.best_step() or manager.latest_step())
  if step not in steps_saved:
    raise ConfigError(f'--step={step}: no checkpoint at that step; available: '
                      f'{sorted(steps_saved)}.')
  return int(step)


def checkpoint_step(workdir: str, step: int | None = None) -> int:
  """The step ``load_for_inference`` would restore (the best by default), restoring nothing."""
  workdir = os.path.abspath(workdir)
  if not workdir_lib.has_checkpoints(workdir):
    raise WorkdirError(f'No checkpoints in {workdir}: train first.')
  manager = checkpointing.create_manager(workdir, read_only=True)
  try:
    return _pick_step(workdir, manager, step)
  finally:
    manager.close()


def load_for_inference(config: ml_collections.ConfigDict, workdir: str,
                       step: int | None = None, calibrated: bool = True) -> InferenceModel:
  """Restores the best checkpoint (or ``step``) onto this machine's devices.

  Works whatever number of devices trained the model: variables are saved
  replicated and restored onto a mesh of the devices here (CPU included).
  The step's temperature comes from ``WORKDIR/calibration.json`` (1 when the
  step was never calibrated, said in the log). ``calibrated=False``: T = 1
  without reading it or saying so, for callers that use raw probabilities
  (calibration itself, which would otherwise announce "uncalibrated" just
  before fitting one; a teacher or source model).
  """
  if config.get('keep_host_memory', True):
    hostmem.keep_freed_memory()
  workdir = os.path.abspath(workdir)
  genres = workdir_lib.load_genres(workdir)
  if not workdir_lib.has_checkpoints(workdir):
    raise WorkdirError(f'No checkpoints in {workdir}: train first.')
  manager = checkpointing.create_manager(workdir, read_only=True)
  try:
    fallback = step is None  # the best; an explicit --step is refused when damaged
    step = _pick_step(workdir, manager, step)
    mesh = parallel.create_mesh()
    spec = InputSpec.from_config(config)
    model = steps.create_model(config, len(genres))
    fresh = jax.eval_shape(lambda rng: steps.init_variables(spec, model, rng),
                           jax.random.PRNGKey(0))
    sharding = parallel.replicated(mesh)
    abstract = {f.name: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        getattr(fresh, f.name)) for f in dataclasses.fields(fresh)}
    if config.get('ema_decay', 0.0) > 0:  # the averaged weights are the model
      abstract['ema_params'] = abstract.pop('params')
    step, parts = checkpointing.restore_readable_parts(manager, step, abstract, fallback)
    if 'ema_params' in parts:
      parts['params'] = parts.pop('ema_params')
    variables = steps.ModelVariables(**parts)
  finally:
    manager.close()
  # Tag scores are never calibrated (song_probabilities), so a tag run has no T to look up.
  calibrated = calibrated and config.task != 'multilabel'
  return _wrap(config, spec, genres, variables, mesh, step,
               calibration.temperature_for(workdir, step) if calibrated else 1.0)



def rebuild_history_files(workdir: str) -> list[str]:
  """``metrics.json``/``.csv`` and the curves, when deleted, from the newest checkpoint.

  For modes that read a finished run (eval); a rerun of training does the
  same from the history it restores. Never fails the mode: a checkpoint that
  cannot be read, or a workdir that cannot be written, is one warning.
  Returns the names written again.
  """
  workdir = os.path.abspath(workdir)
  missing = [n for n in reporting.HISTORY_FILES
             if not os.path.exists(workdir_lib.path(workdir, n))]
  if not missing or not workdir_lib.has_checkpoints(workdir):
    return []
  manager = checkpointing.create_manager(workdir, read_only=True)
  step = manager.latest_step()
  try:
    if step is None:
      return []
    rows = checkpointing.read_progress(manager, step).get('history', [])
    return reporting.rebuild_missing_history_files(workdir, rows, f'the checkpoint at step {step}')
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('%s missing from %s and not rebuilt (%s: %s); rerun the training command '
                    'to write them again.', ', '.join(missing), workdir, type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else '')
    return []
  finally:
    manager.close()
