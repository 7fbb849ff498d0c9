"""The training loop: data, the compiled steps, checkpoints and reports, wired together.

Reading order: ``train_and_evaluate`` (checks and the workdir lock), then
``_start`` (everything a run is built from, restored when it resumes),
``_run_epochs`` (one epoch at a time until done or signalled) and ``_finish``
(close, calibrate, the result). The pieces live beside this file:
history.py (the epoch rows and the best epoch), epoch.py (end-of-epoch
validation and reports), transfer.py (``config.init_from``), distill.py
(``config.distill``). The state and
the compiled steps are in steps.py; restoring for prediction is in
inference.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import calibration
from melgenre_jax import checkpointing
from melgenre_jax import config_checks
from melgenre_jax import inference
from melgenre_jax import reporting
from melgenre_jax import schedules
from melgenre_jax import steps
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import input_pipeline
from melgenre_jax.errors import NonFiniteError
from melgenre_jax.errors import UserError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.runtime import atomic
from melgenre_jax.runtime import hostmem
from melgenre_jax.runtime import parallel
from melgenre_jax.runtime import prefetch
from melgenre_jax.runtime.stop_request import StopRequest
from melgenre_jax.runtime import workdir_lock
from melgenre_jax.train import distill
from melgenre_jax.train import epoch as epoch_lib
from melgenre_jax.train import transfer
from melgenre_jax.train.history import RunHistory
from melgenre_jax.train.history import selection_score
from melgenre_jax.train.history import StepMetrics


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
    run = _start(config, workdir)
    with StopRequest() as stop:
      step, last_row, stopped = _run_epochs(run, stop, on_epoch_end)
    return _finish(run, step, last_row, stopped)


@dataclasses.dataclass
class _Run:
  """What the loop works with, built once by ``_start``; ``state`` moves with each step."""

  config: ml_collections.ConfigDict
  workdir: str
  dataset: input_pipeline.Dataset
  is_chief: bool
  multilabel: bool
  steps_per_epoch: int
  total_steps: int
  schedule: Callable[[int], Any]
  mesh: Any
  state: steps.TrainState
  start_step: int
  history: RunHistory
  manager: Any
  writer: reporting.MetricsWriter
  pending: StepMetrics
  batches: prefetch.DevicePrefetch
  p_train: Callable
  p_predict: Callable
  p_stats: Callable | None


# ----------------------------------------------------------------------------
# Set-up: checks, data, state (restored or initialised), compiled steps.


def _start(config: ml_collections.ConfigDict, workdir: str) -> _Run:
  """Checks the run, loads the data, builds or restores the state, compiles the steps."""
  workdir = _prepare_workdir(config, workdir)
  is_chief = jax.process_index() == 0
  spec = InputSpec.from_config(config)
  dataset = input_pipeline.load_dataset(config, workdir)
  if is_chief:
    save_config(config, workdir)
    save_dataset_info(dataset, workdir)
  steps_per_epoch, total_steps = _step_counts(config, len(dataset.train))
  schedule = schedules.create_learning_rate_schedule(config.schedule, steps_per_epoch)
  mesh = parallel.create_mesh()
  teacher = distill.train_targets(config, dataset.train.songs, workdir)  # None: no teacher
  tx = schedules.create_optimizer(config, schedule, steps_per_epoch)
  t0 = time.time()
  logging.info('Compiling the model for %d device(s), global batch %d: its initial state, then '
               'the train and validation steps (XLA, once per run, before the first step)...',
               jax.device_count(), config.batch_size)
  state = steps.build_state(config, len(dataset.genres), mesh, tx,
                            jax.random.PRNGKey(config.seed), spec=spec)
  data_iter = iter(_train_loader(config, spec, dataset))

  parallel.barrier('before_checkpoint_manager')
  manager = checkpointing.create_manager(workdir, config.checkpoint.max_to_keep)
  state, start_step, history = _restore_or_initialize(
      config, workdir, spec, dataset, state, manager, data_iter, mesh, steps_per_epoch)
  writer = reporting.MetricsWriter(workdir, enabled=is_chief)
  if is_chief:  # a rerun of a finished run writes no epoch: files deleted since come back
    reporting.rebuild_missing_history_files(workdir, history.rows,
                                            f'the checkpoint at step {start_step}')
    reporting.plot_learning_rate(
        schedule, steps_per_epoch * config.num_epochs, steps_per_epoch,
        workdir_lib.path(workdir, workdir_lib.LEARNING_RATE_PLOT))
  multilabel = config.task == 'multilabel'
  p_train, p_predict = _compile_train_and_predict(config, spec, state, mesh,
                                                  len(dataset.genres), multilabel, teacher,
                                                  distill.step_teacher(config))
  _log_start(config, dataset, steps_per_epoch, time.time() - t0)
  # Batches reach the devices ahead of the step; checkpoints store its position.
  batches = prefetch.DevicePrefetch(data_iter, prefetch.train_batch_on_device(mesh, teacher),
                                    depth=config.get('prefetch_batches', 2))
  return _Run(
      config=config, workdir=workdir, dataset=dataset, is_chief=is_chief,
      multilabel=multilabel, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      schedule=schedule, mesh=mesh, state=state, start_step=start_step, history=history,
      manager=manager, writer=writer,
      pending=StepMetrics(history, writer if is_chief else None, schedule),
      batches=batches, p_train=p_train, p_predict=p_predict,
      p_stats=_compile_batch_stats(config, spec, state, mesh, len(dataset.genres)))


def _prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The absolute workdir, created; refused early when the run cannot go on there."""
  parallel.check_batch_divisible(config.batch_size)
  parallel.check_batch_divisible(config.eval_batch_size, 'config.eval_batch_size')
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  config_checks.check_workdir_compatible(config, workdir)
  transfer.check_before_training(config, workdir)
  distill.check(config)
  return workdir


def _log_start(config: ml_collections.ConfigDict, dataset: input_pipeline.Dataset,
               steps_per_epoch: int, seconds: float) -> None:
  logging.info('%d train / %d validation segments, %d genres, %d steps per epoch, '
               '%d devices (%d processes), global batch %d; compiled and set up in %.1f s.',
               len(dataset.train), len(dataset.validation), len(dataset.genres),
               steps_per_epoch, jax.device_count(), jax.process_count(), config.batch_size,
               seconds)
  if not len(dataset.validation):
    logging.info('No validation songs (config.data.validation_fraction=0): no epoch is '
                 'chosen; eval, predict and export read the last one.')


def _step_counts(config: ml_collections.ConfigDict, num_segments: int) -> tuple[int, int]:
  """Steps per epoch and in the whole run (``config.debug.max_steps`` caps it)."""
  steps_per_epoch = input_pipeline.steps_per_epoch(num_segments, config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs
  if config.debug.max_steps > 0:
    total_steps = min(total_steps, config.debug.max_steps)
  return steps_per_epoch, total_steps


def _train_loader(config: ml_collections.ConfigDict, spec: InputSpec,
                  dataset: input_pipeline.Dataset) -> Any:
  return input_pipeline.create_train_loader(
      dataset.train, global_batch_size=config.batch_size, seed=config.seed,
      worker_count=config.data.worker_count,
      process_index=jax.process_index(), process_count=jax.process_count(),
      shift_hop=spec.hop_samples if config.audio.get('train_offsets') == 'random' else 0)


def _restore_or_initialize(config: ml_collections.ConfigDict, workdir: str, spec: InputSpec,
                           dataset: input_pipeline.Dataset, state: steps.TrainState,
                           manager, data_iter, mesh,
                           steps_per_epoch: int) -> tuple[steps.TrainState, int, RunHistory]:
  """The latest good checkpoint (state, step, history), else a fresh run's start.

  A fresh run takes ``config.init_from``'s weights, or computes the feature
  statistics when it standardises its inputs (a source's come with its weights).
  """
  restored = checkpointing.restore_latest_good(
      manager, jax.tree.map(_abstract, state), data_iter)
  if restored is not None:
    start_step, state, progress = restored
    logging.info('Resumed from checkpoint at step %d (epoch %.2f) in %s.',
                 start_step, start_step / steps_per_epoch, manager.directory)
    return state, start_step, RunHistory(progress)
  if config.get('init_from'):
    state = transfer.initialize_from(config, state, dataset.genres, workdir, mesh)
  elif spec.normalize:
    mean, std = epoch_lib.compute_feature_stats(spec, dataset.train)
    state = state.replace(feature_mean=jax.device_put(mean, parallel.replicated(mesh)),
                          feature_std=jax.device_put(std, parallel.replicated(mesh)))
  return state, 0, RunHistory()


def _compile_train_and_predict(config: ml_collections.ConfigDict, spec: InputSpec,
                               state: steps.TrainState, mesh, num_classes: int,
                               multilabel: bool, teacher: np.ndarray | None,
                               step_teacher: steps.StepTeacher | None
                               ) -> tuple[Callable, Callable]:
  """Both steps compiled ahead of time.

  The first epoch's time is then training only, and processes of a multi-host
  run meet before their first collective. ``teacher``: distillation targets
  per training song (their width is the batch's ``'teacher'`` rows);
  ``step_teacher``: a teacher the train step runs itself (distill.consistent).
  """
  label_shape = (config.batch_size, num_classes) if multilabel else (config.batch_size,)
  batch_shapes = {'inputs': (config.batch_size,) + spec.input_shape, 'label': label_shape}
  if teacher is not None:
    batch_shapes['teacher'] = (config.batch_size, teacher.shape[1])
  p_train = steps.compile_ahead(
      'train', steps.make_train_step(mesh, config, num_classes, spec=spec,
                                     teacher=step_teacher), state,
      batch_shapes, mesh)
  p_predict = steps.compile_ahead(
      'predict', steps.make_predict_step(
          mesh, state.apply_fn, spec.device_preprocess(),
          steps.resolve_microbatch(config.get('eval_microbatch', -1)), multilabel=multilabel),
      state.variables(), (config.eval_batch_size,) + spec.input_shape, mesh)
  return p_train, p_predict


def _compile_batch_stats(config: ml_collections.ConfigDict, spec: InputSpec,
                         state: steps.TrainState, mesh, num_classes: int) -> Callable | None:
  """The BatchNorm-statistics step when ``config.bn_recompute_batches`` asks for it."""
  if config.get('bn_recompute_batches', 0) <= 0:
    return None
  return steps.compile_ahead(
      'batch_stats', steps.make_batch_stats_step(mesh, config, num_classes,
                                                 spec.device_preprocess()),
      state.variables(), (config.batch_size,) + spec.input_shape, mesh)


# ----------------------------------------------------------------------------
# The epochs.


def _run_epochs(run: _Run, stop: StopRequest,
                on_epoch_end: Callable[[dict], None] | None) -> tuple[int, dict, str | None]:
  """Trains until the last step or a signal: the final step, last epoch row, signal name."""
  last_row: dict = run.history.rows[-1] if run.history.rows else {}
  step = run.start_step
  while step < run.total_steps:
    epoch = step // run.steps_per_epoch + 1
    epoch_end = min(epoch * run.steps_per_epoch, run.total_steps)
    t0 = time.time()
    step = _train_epoch(run, stop, step, epoch, epoch_end)
    if step < epoch_end:  # stopped by a signal mid-epoch: save exactly here
      checkpointing.save(run.manager, step, run.state, run.batches, run.history.progress, None)
      return step, last_row, stop.signal_name
    last_row = _end_epoch(run, epoch, step, time.time() - t0, bool(stop.signal_name))
    if on_epoch_end is not None:
      _call_on_epoch_end(run, on_epoch_end, last_row)
    if stop.signal_name:  # arrived during the epoch's last step or its eval
      return step, last_row, stop.signal_name
  return step, last_row, None


def _train_epoch(run: _Run, stop: StopRequest, step: int, epoch: int, epoch_end: int) -> int:
  """The train steps from ``step`` to ``epoch_end`` (fewer when signalled); the step reached."""
  config = run.config
  bar = reporting.progress_bar(
      range(step, epoch_end), total=run.steps_per_epoch,
      desc=f'epoch {epoch}/{config.num_epochs}', enabled=config.progress_bar,
      initial=step - (epoch - 1) * run.steps_per_epoch)
  for _ in bar:
    run.state, m = run.p_train(run.state, next(run.batches))
    run.pending.add(step, m)
    step += 1
    if config.debug.step_delay_seconds > 0:  # test hook: widen the kill window
      time.sleep(config.debug.step_delay_seconds)
    if step % config.log_every_steps == 0:
      _check_metrics(run)
    if stop.signal_name and step < epoch_end:
      break
  _check_metrics(run)
  return step


def _check_metrics(run: _Run) -> None:
  """Fetches the steps' metrics; a non-finite step stops the run before any save."""
  bad_step = run.pending.fetch(run.config.log_every_steps)
  if bad_step is not None:
    run.manager.wait_until_finished()
    raise NonFiniteError(
        f'Non-finite loss or gradient at step {bad_step} (epoch '
        f'{bad_step // run.steps_per_epoch + 1}); the update was not applied and nothing '
        'after the last checkpoint was saved (latest good checkpoint: step '
        f'{run.manager.latest_step()}). Lower the learning rate (config.schedule.*_lrs) '
        'or check the input data.')


def _end_epoch(run: _Run, epoch: int, step: int, seconds: float, signalled: bool) -> dict:
  """BatchNorm statistics, validation, history, reports and the epoch's checkpoint."""
  config, dataset = run.config, run.dataset
  row = run.history.close_epoch(epoch, step, float(run.schedule(step - 1)), seconds)
  do_eval = bool(len(dataset.validation)) and (
      epoch % config.eval_every_epochs == 0 or step >= run.total_steps)
  do_save = (epoch % config.checkpoint.every_epochs == 0 or step >= run.total_steps
             or signalled)
  if run.p_stats is not None and (do_eval or do_save):
    run.state = run.state.replace(batch_stats=epoch_lib.population_batch_stats(
        run.p_stats, run.state.variables(), dataset.train, config.batch_size,
        config.bn_recompute_batches, config.seed + epoch, run.mesh))
  if do_eval:
    val, _ = epoch_lib.evaluate_split(run.p_predict, run.state.variables(),
                                      dataset.validation, config.eval_batch_size, run.mesh,
                                      multilabel=run.multilabel)
    row.update(epoch_lib.validation_row(val, run.multilabel))
  run.history.append(row, evaluated=do_eval)
  epoch_lib.log_epoch(row)
  if run.is_chief:
    epoch_lib.write_epoch_reports(run.writer, run.history, step, row, run.workdir)
  if do_save:
    # BEST_METRIC is only the key: the number is song ROC-AUC for multilabel runs.
    ckpt_metrics = ({checkpointing.BEST_METRIC: selection_score(row)}
                    if do_eval else None)
    checkpointing.save(run.manager, step, run.state, run.batches, run.history.progress,
                       ckpt_metrics)
  return row


def _call_on_epoch_end(run: _Run, on_epoch_end: Callable[[dict], None], row: dict) -> None:
  """``on_epoch_end(row)`` once the epoch's checkpoint is on disk; what it raises ends the run."""
  run.manager.wait_until_finished()
  try:
    on_epoch_end(row)
  except BaseException:
    run.manager.close()
    run.writer.close()
    raise


# ----------------------------------------------------------------------------
# The end of a run.


def _finish(run: _Run, step: int, last_row: dict, stopped: str | None) -> dict:
  """Closes the checkpoints and reports, calibrates the best step; the run's result."""
  run.manager.wait_until_finished()
  run.manager.close()
  run.writer.close()
  if stopped:
    logging.warning('Stopped by %s at step %d; run the same command to resume.',
                    stopped, step)
  if run.multilabel:
    logging.info('Multi-label run: not calibrated (temperature scaling is for the genre '
                 'softmax; tag probabilities are reported as the model gives them).')
  else:
    calibrate_after_training(run.config, run.workdir, run.dataset.validation, stopped)
  best = run.history.best()
  result = {**last_row, 'best_epoch': best.get('epoch'),
            'best_val_song_accuracy': best.get('val_song_accuracy'),
            'stopped': stopped, 'final_step': step}
  if run.multilabel:
    result['best_val_song_roc_auc'] = best.get('val_song_roc_auc')
  return result


def calibrate_after_training(config: ml_collections.ConfigDict, workdir: str,
                             validation: input_pipeline.SegmentSet | None,
                             stopped: str | None) -> dict[str, Any] | None:
  """The end of a training run: fits T for the best checkpoint on validation.

  Skipped (with a log line) when the run was stopped early (its resumption
  calibrates), has no validation songs, or the best step is already
  calibrated (a rerun of a finished run). A calibration that cannot be done
  is a warning, not a failed run: the checkpoints are all saved by then, and
  ``--mode=calibrate`` can retry. Every process calls it.
  """
  if stopped:
    return None
  if not calibration.has_songs(validation):
    logging.info('No validation songs: the run stays uncalibrated (temperature 1).')
    return None
  try:
    step = inference.checkpoint_step(workdir)
    entry = calibration.entry_for(workdir, step)
    if entry is not None:
      logging.info('Step %d is already calibrated (temperature %.4f).', step,
                   entry['temperature'])
      return entry
    model = inference.load_for_inference(config, workdir, step, calibrated=False)
    return calibration.calibrate_model(model, validation, workdir)
  except UserError as e:
    logging.warning('Not calibrated (%s); the run stays uncalibrated until '
                    '--mode=calibrate succeeds.', e)
    return None


# ----------------------------------------------------------------------------
# Run files.


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """config.json, rewritten by every run and read back by the next one's checks."""
  with atomic.replaced_when_written(workdir_lib.path(workdir, workdir_lib.CONFIG)) as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))


def save_dataset_info(dataset: input_pipeline.Dataset, workdir: str) -> None:
  """Genre names (a multi-label run's tags), task, split song keys: all eval/predict need."""
  info = {'genres': list(dataset.genres), 'task': dataset.task,
          'splits': {name: [s.key for s in split.songs]
                     for name, split in (('train', dataset.train),
                                         ('validation', dataset.validation),
                                         ('test', dataset.test)) if split is not None}}
  with atomic.replaced_when_written(workdir_lib.path(workdir, workdir_lib.DATASET)) as f:
    json.dump(info, f, indent=1)


def _abstract(x: Any) -> Any:
  """Shape/dtype/sharding of an array, the restore target for Orbax."""
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if hasattr(x, 'shape') else x
