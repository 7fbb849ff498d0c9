"""The training loop: data, the compiled step, checkpoints and reports, wired together.

Reading order: ``train_and_evaluate`` (set-up, then one epoch at a time), then
the pieces it calls: the run's history, the end-of-epoch work, signal handling
and the files a run writes. The state and the compiled steps are in steps.py;
restoring for prediction is in inference.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import calibration
from melgenre_jax import checkpointing
from melgenre_jax import config_checks
from melgenre_jax import inference
from melgenre_jax import metrics as metrics_lib
from melgenre_jax import reporting
from melgenre_jax import schedules
from melgenre_jax import steps
from melgenre_jax import transfer
from melgenre_jax.data import features
from melgenre_jax.data import input_pipeline
from melgenre_jax.errors import NonFiniteError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.runtime import hostmem
from melgenre_jax.runtime import parallel
from melgenre_jax.runtime import prefetch
from melgenre_jax.runtime import workdir_lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_epoch_end: Callable[[dict], None] | None = None) -> dict:
  """Trains (resuming from WORKDIR/checkpoints when present), evaluates each epoch.

  ``on_epoch_end(row)`` is called after each epoch's checkpoint is written
  (hyperparameter search reports to its pruner there; an exception it raises
  ends the run with everything up to that epoch saved).
  Returns the final epoch's metrics row (plus ``best`` and ``stopped`` info).

  The workdir is locked for the whole run (another trainer on it is refused
  before any data or compile work: runtime/workdir_lock.py), and a write that
  fails on a full disk stops the run with ``DiskFullError``.
  """
  config_checks.validate(config)
  if config.get('keep_host_memory', True):
    hostmem.keep_freed_memory()  # before the lock's process count starts JAX's backend
  with checkpointing.stop_on_full_disk(workdir), workdir_lock.hold(workdir, 'train'):
    return _train_and_evaluate(config, workdir, on_epoch_end)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        on_epoch_end: Callable[[dict], None] | None) -> dict:
  """The run itself, with the workdir locked."""
  parallel.check_batch_divisible(config.batch_size)
  parallel.check_batch_divisible(config.eval_batch_size, 'config.eval_batch_size')
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  config_checks.check_workdir_compatible(config, workdir)
  transfer.check_before_training(config, workdir)
  is_chief = jax.process_index() == 0
  spec = InputSpec.from_config(config)

  dataset = input_pipeline.load_dataset(config, workdir)
  num_classes = len(dataset.genres)
  if is_chief:
    save_config(config, workdir)
    save_dataset_info(dataset, workdir)

  steps_per_epoch = input_pipeline.steps_per_epoch(len(dataset.train), config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs
  if config.debug.max_steps > 0:
    total_steps = min(total_steps, config.debug.max_steps)
  schedule = schedules.create_learning_rate_schedule(config.schedule, steps_per_epoch)
  mesh = parallel.create_mesh()
  tx = steps.create_optimizer(config, schedule, steps_per_epoch)
  state = steps.build_state(config, num_classes, mesh, tx, jax.random.PRNGKey(config.seed))

  loader = input_pipeline.create_train_loader(
      dataset.train, global_batch_size=config.batch_size, seed=config.seed,
      worker_count=config.data.worker_count,
      process_index=jax.process_index(), process_count=jax.process_count(),
      shift_hop=spec.hop_samples if config.audio.get('train_offsets') == 'random' else 0)
  data_iter = iter(loader)

  parallel.barrier('before_checkpoint_manager')
  manager = checkpointing.create_manager(workdir, config.checkpoint.max_to_keep)
  history = RunHistory()
  restored = checkpointing.restore_latest_good(
      manager, jax.tree.map(_abstract, state), data_iter)
  if restored is not None:
    start_step, state, progress = restored
    history = RunHistory(progress)
    logging.info('Resumed from checkpoint at step %d (epoch %.2f) in %s.',
                 start_step, start_step / steps_per_epoch, manager.directory)
  else:
    start_step = 0
    if config.get('init_from'):
      state = transfer.initialize_from(config, state, dataset.genres, workdir, mesh)
    elif spec.normalize:  # a source's statistics come with its weights
      mean, std = compute_feature_stats(spec, dataset.train)
      state = state.replace(feature_mean=jax.device_put(mean, parallel.replicated(mesh)),
                            feature_std=jax.device_put(std, parallel.replicated(mesh)))

  writer = reporting.MetricsWriter(workdir, enabled=is_chief)
  if is_chief:
    reporting.plot_learning_rate(schedule, steps_per_epoch * config.num_epochs,
                                 steps_per_epoch, os.path.join(workdir, 'learning_rate.png'))
  logging.info('%d train / %d validation segments, %d genres, %d steps per epoch, '
               '%d devices (%d processes), global batch %d.', len(dataset.train),
               len(dataset.validation), num_classes, steps_per_epoch,
               jax.device_count(), jax.process_count(), config.batch_size)

  # Compile both steps ahead of time: the first epoch's time is then training
  # only, and processes of a multi-host run meet before their first collective.
  multilabel = config.get('task', 'genre') == 'multilabel'
  label_shape = (config.batch_size, num_classes) if multilabel else (config.batch_size,)
  p_train = steps.compile_ahead(
      'train', steps.make_train_step(mesh, config, num_classes), state,
      {'inputs': (config.batch_size,) + spec.input_shape, 'label': label_shape}, mesh)
  p_predict = steps.compile_ahead(
      'predict', steps.make_predict_step(
          mesh, state.apply_fn, spec.device_preprocess(),
          steps.resolve_microbatch(config.get('eval_microbatch', -1)), multilabel=multilabel),
      state.variables(), (config.eval_batch_size,) + spec.input_shape, mesh)

  # Batches reach the devices ahead of the step; checkpoints store its position.
  batches = prefetch.DevicePrefetch(data_iter, prefetch.train_batch_on_device(mesh),
                                    depth=config.get('prefetch_batches', 2))

  p_stats = None
  if config.get('bn_recompute_batches', 0) > 0:
    p_stats = steps.compile_ahead(
        'batch_stats', steps.make_batch_stats_step(mesh, config, num_classes,
                                                   spec.device_preprocess()),
        state.variables(), (config.batch_size,) + spec.input_shape, mesh)

  def end_epoch(epoch: int, step: int, seconds: float, signalled: bool,
                state: steps.TrainState) -> tuple[dict, steps.TrainState]:
    """BatchNorm statistics, validation, history, reports and the epoch's checkpoint."""
    row = history.close_epoch(epoch, step, float(schedule(step - 1)), seconds)
    do_eval = epoch % config.eval_every_epochs == 0 or step >= total_steps
    do_save = epoch % config.checkpoint.every_epochs == 0 or step >= total_steps or signalled
    if p_stats is not None and (do_eval or do_save):
      state = state.replace(batch_stats=population_batch_stats(
          p_stats, state.variables(), dataset.train, config.batch_size,
          config.bn_recompute_batches, config.seed + epoch, mesh))
    if do_eval:
      val, _ = evaluate_split(p_predict, state.variables(), dataset.validation,
                              config.eval_batch_size, mesh, multilabel=multilabel)
      row.update(validation_row(val, multilabel))
    history.append(row, evaluated=do_eval)
    _log_epoch(row)
    if is_chief:
      write_epoch_reports(writer, history, step, row, workdir)
    if do_save:
      # BEST_METRIC is only the key: the number is song ROC-AUC for multilabel runs.
      ckpt_metrics = {checkpointing.BEST_METRIC: selection_score(row)} if do_eval else None
      checkpointing.save(manager, step, state, batches, history.progress, ckpt_metrics)
    return row, state

  last_row: dict = history.rows[-1] if history.rows else {}
  stopped = None
  step = start_step
  pending = StepMetrics(history, writer if is_chief else None, schedule)

  def check_metrics() -> None:
    """Fetches the steps' metrics; a non-finite step stops the run before any save."""
    bad_step = pending.fetch(config.log_every_steps)
    if bad_step is not None:
      manager.wait_until_finished()
      raise NonFiniteError(
          f'Non-finite loss or gradient at step {bad_step} (epoch '
          f'{bad_step // steps_per_epoch + 1}); the update was not applied and nothing '
          'after the last checkpoint was saved (latest good checkpoint: step '
          f'{manager.latest_step()}). Lower the learning rate (config.schedule.*_lrs) '
          'or check the input data.')

  with _StopRequest() as stop:
    while step < total_steps:
      epoch = step // steps_per_epoch + 1
      epoch_end = min(epoch * steps_per_epoch, total_steps)
      bar = reporting.progress_bar(
          range(step, epoch_end), total=steps_per_epoch,
          desc=f'epoch {epoch}/{config.num_epochs}', enabled=config.progress_bar,
          initial=step - (epoch - 1) * steps_per_epoch)
      t0 = time.time()
      for _ in bar:
        state, m = p_train(state, next(batches))
        pending.add(step, m)
        step += 1
        if config.debug.step_delay_seconds > 0:  # test hook: widen the kill window
          time.sleep(config.debug.step_delay_seconds)
        if step % config.log_every_steps == 0:
          check_metrics()
        if stop.signal_name and step < epoch_end:
          break
      check_metrics()
      if step < epoch_end:  # stopped by a signal mid-epoch: save exactly here
        checkpointing.save(manager, step, state, batches, history.progress, None)
        stopped = stop.signal_name
        break

      last_row, state = end_epoch(epoch, step, time.time() - t0, bool(stop.signal_name), state)
      if on_epoch_end is not None:
        manager.wait_until_finished()  # the epoch's checkpoint is on disk first
        try:
          on_epoch_end(last_row)
        except BaseException:
          manager.close()
          writer.close()
          raise
      if stop.signal_name:  # arrived during the epoch's last step or its eval
        stopped = stop.signal_name
        break

  manager.wait_until_finished()
  manager.close()
  writer.close()
  if stopped:
    logging.warning('Stopped by %s at step %d; run the same command to resume.',
                    stopped, step)
  if multilabel:
    logging.info('Multi-label run: not calibrated (temperature scaling is for the genre '
                 'softmax; tag probabilities are reported as the model gives them).')
  else:
    calibration.calibrate_after_training(config, workdir, dataset.validation, stopped)
  best = history.best()
  result = {**last_row, 'best_epoch': best.get('epoch'),
            'best_val_song_accuracy': best.get('val_song_accuracy'),
            'stopped': stopped, 'final_step': step}
  if multilabel:
    result['best_val_song_roc_auc'] = best.get('val_song_roc_auc')
  return result


# ----------------------------------------------------------------------------
# The run's history: saved in every checkpoint, so a resumed run continues it.


def selection_score(row: dict) -> float:
  """What picks the best epoch: validation song accuracy, or song macro ROC-AUC (multilabel).

  -1 for a row without validation (or whose AUC could not be scored: no tag
  had both classes among the validation songs), so any evaluated epoch beats it.
  """
  value = row.get('val_song_roc_auc', row.get('val_song_accuracy', -1.0))
  value = -1.0 if value is None else float(value)
  return value if np.isfinite(value) else -1.0


class RunHistory:
  """Per-epoch metric rows plus the running sums of the current epoch.

  ``progress`` is the JSON saved with each checkpoint: a run killed mid-epoch
  resumes with the partial sums of that epoch intact. The best epoch is the
  one with the highest ``selection_score``.
  """

  def __init__(self, progress: dict | None = None):
    self.progress = progress or {'history': [], 'epoch_sums': self._zero()}

  @staticmethod
  def _zero() -> dict:
    return {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}

  @property
  def rows(self) -> list[dict]:
    return self.progress['history']

  def add_step(self, loss: float, accuracy: float) -> None:
    sums = self.progress['epoch_sums']
    sums['loss'] += loss
    sums['accuracy'] += accuracy
    sums['steps'] += 1

  def close_epoch(self, epoch: int, step: int, learning_rate: float,
                  seconds: float) -> dict:
    """The epoch's training row (means over its steps); starts the next epoch's sums."""
    sums = self.progress['epoch_sums']
    n = max(sums['steps'], 1)
    self.progress['epoch_sums'] = self._zero()
    return {'epoch': epoch, 'step': step, 'learning_rate': learning_rate,
            'train_loss': sums['loss'] / n, 'train_accuracy': sums['accuracy'] / n,
            'epoch_seconds': seconds}

  def append(self, row: dict, evaluated: bool) -> None:
    """Adds ``row``, marking it best when its ``selection_score`` is.

    Ties go to the later epoch, as in the checkpoint manager's best_step().
    """
    previous_best = max((selection_score(r) for r in self.rows), default=-1)
    row['best'] = bool(evaluated and selection_score(row) >= previous_best)
    self.rows.append(row)

  def best(self) -> dict:
    if not self.rows:
      return {}
    return max(reversed(self.rows), key=selection_score)


class StepMetrics:
  """Train-step metrics left on the device until fetched, a batch of steps at a time.

  Reading a step's loss right after it runs would make the host wait for the
  device on every step; fetched every ``log_every_steps`` and at epoch end,
  the host stays ahead and the devices never wait for input.
  """

  def __init__(self, history: RunHistory, writer: reporting.MetricsWriter | None,
               schedule: Callable[[int], Any]):
    self._history = history
    self._writer = writer
    self._schedule = schedule
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Records step ``step``'s (not yet computed) metrics."""
    self._pending.append((step, metrics))

  def fetch(self, log_every_steps: int) -> int | None:
    """Adds the pending steps to the history; the first non-finite step, if any."""
    fetched = jax.device_get([m for _, m in self._pending])
    steps_done = [s for s, _ in self._pending]
    self._pending.clear()
    for step, m in zip(steps_done, fetched):
      if not bool(m['finite']):
        return step
      self._history.add_step(float(m['loss']), float(m['accuracy']))
      if self._writer is not None and (step + 1) % log_every_steps == 0:
        self._writer.write_scalars(step + 1, {
            'train/loss_step': float(m['loss']),
            'train/learning_rate': float(self._schedule(step + 1))})
    return None


# ----------------------------------------------------------------------------
# End-of-epoch work.


def evaluate_split(p_predict: Callable, variables: steps.ModelVariables,
                   segments: input_pipeline.SegmentSet, batch_size: int,
                   mesh, multilabel: bool = False) -> tuple[dict, np.ndarray]:
  """Segment/song accuracies and loss of one split, plus the raw probabilities.

  ``multilabel``: segment- and song-level (mean of segment probabilities)
  per-tag ROC-AUC/PR-AUC and the mean binary cross-entropy instead
  (``metrics.multilabel_summary``).
  """
  probs = inference.predict_arrays(p_predict, variables, segments.inputs, batch_size, mesh)
  labels = np.asarray(segments.labels)
  if multilabel:
    return metrics_lib.multilabel_summary(probs, labels, np.asarray(segments.song_index),
                                          len(segments.songs)), probs
  summary = metrics_lib.classification_summary(
      probs, labels, np.asarray(segments.song_index), len(segments.songs))
  picked = probs[np.arange(len(labels)), labels]
  summary['loss'] = float(-np.log(np.maximum(picked, 1e-12)).mean())
  return summary, probs


def population_batch_stats(p_stats: Callable, variables: steps.ModelVariables,
                           segments: input_pipeline.SegmentSet, batch_size: int,
                           max_batches: int, seed: int, mesh) -> Any:
  """BatchNorm statistics of up to ``max_batches`` training batches under the current weights.

  Replaces the running averages before an evaluation: with few steps an epoch
  (small sets), averages at momentum 0.99 still hold the early weights'
  statistics for 10+ epochs and an evaluation would read a broken model.
  """
  order = np.random.default_rng(seed).permutation(len(segments))
  count = max(1, min(max_batches, len(order) // batch_size))
  order = np.resize(order, count * batch_size)  # a set smaller than one batch repeats rows
  rows = parallel.process_slice(batch_size)
  per_batch = []
  for b in range(count):
    idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
    local = np.asarray(segments.inputs[idx], np.float32)[rows]
    # One call at a time: the calls share no data, and two in flight at once
    # could meet in each other's cross-device mean (CPU collectives abort on it).
    per_batch.append(jax.block_until_ready(
        p_stats(variables, parallel.global_batch({'inputs': local}, mesh)['inputs'])))
  return jax.device_put(steps.pool_batch_stats(per_batch), parallel.replicated(mesh))


def validation_row(val: dict, multilabel: bool) -> dict:
  """The epoch row's validation columns from ``evaluate_split``'s summary."""
  if multilabel:
    return {'val_loss': val['loss'],
            'val_segment_roc_auc': val['segment']['roc_auc_macro'],
            'val_segment_pr_auc': val['segment']['pr_auc_macro'],
            'val_song_roc_auc': val['song']['roc_auc_macro'],
            'val_song_pr_auc': val['song']['pr_auc_macro']}
  return {'val_loss': val['loss'], 'val_segment_accuracy': val['segment_accuracy'],
          'val_song_accuracy': val['song_accuracy'],
          'val_song_vote_accuracy': val['song_vote_accuracy']}


def _log_epoch(row: dict) -> None:
  if 'val_song_roc_auc' in row:
    logging.info(
        'epoch %d step %d: train loss %.4f tag acc %.3f | val loss %.4f song ROC-AUC %.3f '
        'PR-AUC %.3f, segment ROC-AUC %.3f PR-AUC %.3f%s (%.1fs)', row['epoch'], row['step'],
        row['train_loss'], row['train_accuracy'], row['val_loss'], row['val_song_roc_auc'],
        row['val_song_pr_auc'], row['val_segment_roc_auc'], row['val_segment_pr_auc'],
        ' *best*' if row['best'] else '', row['epoch_seconds'])
    return
  logging.info(
      'epoch %d step %d: train loss %.4f acc %.3f | val loss %.4f segment acc '
      '%.3f song acc %.3f%s (%.1fs)', row['epoch'], row['step'], row['train_loss'],
      row['train_accuracy'], row.get('val_loss', float('nan')),
      row.get('val_segment_accuracy', float('nan')),
      row.get('val_song_accuracy', float('nan')),
      ' *best*' if row['best'] else '', row['epoch_seconds'])


def write_epoch_reports(writer: reporting.MetricsWriter, history: RunHistory, step: int,
                        row: dict, workdir: str) -> None:
  """TensorBoard scalars, metrics.json/csv and the training-curve plot."""
  writer.write_scalars(step, {f'epoch/{k}': v for k, v in row.items()
                              if isinstance(v, float)})
  writer.write_history(history.rows)
  reporting.plot_training_curves(history.rows, os.path.join(workdir, 'training_curves.png'))


# ----------------------------------------------------------------------------
# Signals, run files, feature statistics.


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag: the loop saves a checkpoint, then exits."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint at the end of this step, '
                    'then stopping.', self.signal_name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """config.json, rewritten by every run and read back by the next one's checks."""
  with reporting.replaced_when_written(os.path.join(workdir, 'config.json')) as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))


def save_dataset_info(dataset: input_pipeline.Dataset, workdir: str) -> None:
  """Genre names (a multi-label run's tags), task, split song keys: all eval/predict need."""
  info = {'genres': list(dataset.genres), 'task': dataset.task,
          'splits': {name: [s.key for s in split.songs]
                     for name, split in (('train', dataset.train),
                                         ('validation', dataset.validation),
                                         ('test', dataset.test)) if split is not None}}
  with reporting.replaced_when_written(os.path.join(workdir, 'dataset.json')) as f:
    json.dump(info, f, indent=1)


def compute_feature_stats(spec: InputSpec, segments: input_pipeline.SegmentSet,
                          max_segments: int = 2048) -> tuple[np.ndarray, np.ndarray]:
  """Per-band mean/std of training features before standardising (a deterministic subset)."""
  n = len(segments)
  idx = np.linspace(0, n - 1, num=min(n, max_segments)).astype(int)
  raw = spec.device_preprocess(normalize=False)
  fn = jax.jit(lambda x: raw(x, jnp.zeros(spec.n_mels), jnp.ones(spec.n_mels)))
  batches = [np.asarray(fn(jnp.asarray(segments.inputs[idx[i:i + 64]])))
             for i in range(0, len(idx), 64)]
  mean, std = features.band_stats(batches)
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _abstract(x: Any) -> Any:
  """Shape/dtype/sharding of an array, the restore target for Orbax."""
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if hasattr(x, 'shape') else x
