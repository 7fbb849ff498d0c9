"""Training loop: one compiled, data-parallel step, checkpointed so runs resume exactly.

Reading order: state and optimizer, the per-device step (features, augmentation,
loss, gradient all-reduce) and its shard_map, evaluation, then
``train_and_evaluate`` which wires data, checkpoints and reporting together.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from melgenre_jax.data import augment
from melgenre_jax import checkpointing
from melgenre_jax import config_checks
from melgenre_jax.data import features
from melgenre_jax.runtime import hostmem
from melgenre_jax.data import input_pipeline
from melgenre_jax import metrics as metrics_lib
from melgenre_jax import models
from melgenre_jax.runtime import parallel
from melgenre_jax import reporting
from melgenre_jax import schedules

AXIS = parallel.AXIS


class TrainState(train_state.TrainState):
  """Everything that changes during training, as one pytree.

  ``rng`` is the run's base key: the step's key is derived from it and the
  step number, so restoring (rng, step) reproduces every later random draw.
  ``feature_mean``/``feature_std`` are the per-band normalisation statistics
  (zeros/ones when normalisation is off) computed on the training split.
  """

  batch_stats: Any
  rng: jax.Array
  feature_mean: jax.Array
  feature_std: jax.Array


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN/Inf; the poisoned update was not applied."""

  user_error = True


# ----------------------------------------------------------------------------
# Optimizer and state.


def kernel_mask(params: Any) -> Any:
  """True on kernels (conv, dense, LSTM), False on biases and BatchNorm."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {path: path[-1] == 'kernel' for path in flat})


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate: optax.Schedule) -> optax.GradientTransformation:
  """Adam with a coupled L2 penalty on kernels.

  ``add_decayed_weights(2 * l2)`` before Adam's scaling adds the gradient of
  ``l2 * sum(W**2)`` - the same as Keras' ``kernel_regularizer=l2(l2)`` in the
  reference - without computing the penalty inside the loss.
  """
  return optax.chain(
      optax.add_decayed_weights(2.0 * config.optim.l2, mask=kernel_mask),
      optax.scale_by_adam(b1=config.optim.b1, b2=config.optim.b2,
                          eps=config.optim.eps),
      optax.scale_by_learning_rate(learning_rate),
  )


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Shape of one model input as the loader delivers it (waveform or features)."""
  samples = int(round(config.audio.segment_seconds * config.audio.sample_rate))
  if config.features.where == 'device':
    return (samples,)
  return (features.num_frames(samples, config.features.hop_length),
          config.features.n_mels)


def create_train_state(config: ml_collections.ConfigDict, model: models.DualBranchCRNN,
                       tx: optax.GradientTransformation, rng: jax.Array,
                       preprocess: Callable) -> TrainState:
  """Initialises parameters from ``rng`` (pure; jit it with out_shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  dummy = jnp.zeros((1,) + input_shape(config), jnp.float32)
  n_mels = config.features.n_mels
  spec = preprocess(dummy, jnp.zeros(n_mels), jnp.ones(n_mels))
  variables = model.init({'params': init_rng, 'dropout': init_rng}, spec,
                         train=False)
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx,
      batch_stats=variables['batch_stats'], rng=state_rng,
      feature_mean=jnp.zeros(n_mels, jnp.float32),
      feature_std=jnp.ones(n_mels, jnp.float32))


# ----------------------------------------------------------------------------
# Features: the same function in training, evaluation, prediction and export.


def make_preprocess(config: ml_collections.ConfigDict) -> Callable:
  """Returns ``f(inputs, mean, std) -> log-mel [B, frames, mels]``.

  With ``features.where == 'device'`` the inputs are waveforms and the log-mel
  is computed here, inside the compiled program; with ``'host'`` they already
  are librosa log-mels from the cache.
  """
  frontend = (features.make_frontend(config.audio, config.features)
              if config.features.where == 'device' else None)
  normalize = bool(config.features.normalize)

  def preprocess(inputs: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    spec = frontend(inputs) if frontend is not None else inputs
    return features.normalize(spec, mean, std) if normalize else spec

  return preprocess


# ----------------------------------------------------------------------------
# The train step, per device, mapped over the mesh.


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               preprocess: Callable, config: ml_collections.ConfigDict,
               num_classes: int) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on this device's shard of the global batch.

  Runs inside ``shard_map``: gradients, metrics and BatchNorm statistics are
  averaged over the ``data`` axis explicitly (``lax.pmean``), so the update is
  that of the global batch whatever the device count.
  """
  key = jax.random.fold_in(state.rng, state.step)
  key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))  # own dropout per device
  k_wave, k_spec, k_mix, k_drop = jax.random.split(key, 4)

  inputs = batch['inputs']
  if config.features.where == 'device':
    inputs = augment.augment_waves(k_wave, inputs, config.augment,
                                   config.audio.sample_rate)
  spec = preprocess(inputs, state.feature_mean, state.feature_std)
  spec = augment.augment_specs(k_spec, spec, config.augment)
  targets = jax.nn.one_hot(batch['label'], num_classes)
  if config.augment.mixup_alpha > 0:
    spec, targets = augment.mixup(k_mix, spec, targets, config.augment.mixup_alpha)

  # Test hook: poison the loss (and so every gradient) at one step.
  poison = jnp.where(state.step == config.debug.nan_at_step, jnp.nan, 1.0)

  def loss_fn(params):
    logits, new_vars = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, spec, train=True,
        rngs={'dropout': k_drop}, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy(logits, targets).mean() * poison
    return loss, (logits, new_vars['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  loss, accuracy = jax.lax.pmean((loss, accuracy), AXIS)

  finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  # NaN guard: a non-finite step leaves the state as it was (host stops the run).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           new_state, state)
  return new_state, {'loss': loss, 'accuracy': accuracy, 'finite': finite}


def make_train_step(mesh, preprocess: Callable, config: ml_collections.ConfigDict,
                    num_classes: int) -> Callable:
  """The compiled data-parallel step: ``jit(shard_map(train_step))``.

  ``check_vma=False``: we write the collectives ourselves (pmean of gradients
  as with pmap); with the checker on, JAX would already sum the gradients of
  replicated parameters and our pmean would double them.
  """
  step = functools.partial(train_step, preprocess=preprocess, config=config,
                           num_classes=num_classes)
  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)),
                         out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,))


def predict_step(state: TrainState, inputs: jax.Array, *,
                 preprocess: Callable) -> jax.Array:
  """Softmax probabilities for this device's shard (inference mode)."""
  spec = preprocess(inputs, state.feature_mean, state.feature_std)
  logits = state.apply_fn({'params': state.params,
                           'batch_stats': state.batch_stats}, spec, train=False)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def make_predict_step(mesh, preprocess: Callable) -> Callable:
  mapped = jax.shard_map(functools.partial(predict_step, preprocess=preprocess),
                         mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                         check_vma=False)
  return jax.jit(mapped)


# ----------------------------------------------------------------------------
# Evaluation over a whole split.


def predict_segments(p_predict: Callable, state: TrainState,
                     segments: input_pipeline.SegmentSet, batch_size: int,
                     mesh, progress: str | None = None) -> np.ndarray:
  """Probabilities for every segment of ``segments``, in order ``[N, classes]``."""
  out = []
  batches = input_pipeline.eval_batches(segments, batch_size)
  if progress:
    batches = _progress(batches, total=-(-len(segments) // batch_size), desc=progress)
  rows = parallel.process_slice(batch_size)
  for batch in batches:
    local = {'inputs': np.asarray(batch['inputs'])[rows]}
    probs = parallel.to_host(p_predict(state, parallel.global_batch(local, mesh)['inputs']))
    out.append(probs[np.asarray(batch['mask'])])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate_split(p_predict: Callable, state: TrainState,
                   segments: input_pipeline.SegmentSet, batch_size: int,
                   mesh, progress: str | None = None) -> tuple[dict, np.ndarray]:
  """Segment/song accuracies and loss of one split, plus the raw probabilities."""
  probs = predict_segments(p_predict, state, segments, batch_size, mesh, progress)
  labels = np.asarray(segments.labels)
  summary = metrics_lib.classification_summary(
      probs, labels, np.asarray(segments.song_index), len(segments.songs))
  picked = probs[np.arange(len(labels)), labels]
  summary['loss'] = float(-np.log(np.maximum(picked, 1e-12)).mean())
  return summary, probs


# ----------------------------------------------------------------------------
# Small host-side helpers.


def _progress(iterable, total: int, desc: str, enabled: bool = True, initial: int = 0):
  """A tqdm bar on process 0 (to stderr), or the plain iterable."""
  if not enabled or jax.process_index() != 0:
    return iterable
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False,
              dynamic_ncols=True, mininterval=1.0)


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
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))


def save_dataset_info(dataset: input_pipeline.Dataset, workdir: str) -> None:
  """Genre names and split song keys, so eval/predict need only the workdir."""
  info = {'genres': list(dataset.genres),
          'splits': {name: [s.key for s in split.songs]
                     for name, split in (('train', dataset.train),
                                         ('validation', dataset.validation),
                                         ('test', dataset.test)) if split is not None}}
  with open(os.path.join(workdir, 'dataset.json'), 'w') as f:
    json.dump(info, f, indent=1)


def compute_feature_stats(config: ml_collections.ConfigDict,
                          segments: input_pipeline.SegmentSet,
                          preprocess_raw: Callable, max_segments: int = 2048
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Per-band mean/std of training features (a deterministic subset)."""
  n = len(segments)
  idx = np.linspace(0, n - 1, num=min(n, max_segments)).astype(int)
  n_mels = config.features.n_mels
  fn = jax.jit(lambda x: preprocess_raw(x, jnp.zeros(n_mels), jnp.ones(n_mels)))
  batches = [np.asarray(fn(jnp.asarray(segments.inputs[idx[i:i + 64]])))
             for i in range(0, len(idx), 64)]
  mean, std = features.band_stats(batches)
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


# ----------------------------------------------------------------------------
# The whole run.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_epoch_end: Callable[[dict], None] | None = None) -> dict:
  """Trains (resuming from WORKDIR/checkpoints when present), evaluates each epoch.

  ``on_epoch_end(row)`` is called after each epoch's checkpoint is written
  (hyperparameter search reports to its pruner there; an exception it raises
  ends the run with everything up to that epoch saved).
  Returns the final epoch's metrics row (plus ``best`` and ``stopped`` info).
  """
  config_checks.validate(config)
  if config.get('keep_host_memory', True):
    hostmem.keep_freed_memory()
  parallel.check_batch_divisible(config.batch_size)
  parallel.check_batch_divisible(config.eval_batch_size, 'config.eval_batch_size')
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  config_checks.check_workdir_compatible(config, workdir)
  is_chief = jax.process_index() == 0

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
  tx = create_optimizer(config, schedule)

  mesh = parallel.create_mesh()
  model = models.create_model(config.model, num_classes, bn_axis_name=AXIS)
  eval_model = models.create_model(config.model, num_classes)
  preprocess = make_preprocess(config)
  state = jax.jit(functools.partial(create_train_state, config, eval_model, tx,
                                    preprocess=preprocess),
                  out_shardings=parallel.replicated(mesh))(
                      jax.random.PRNGKey(config.seed))
  # The train step needs BatchNorm to average its statistics over devices.
  state = state.replace(apply_fn=model.apply)

  loader = input_pipeline.create_train_loader(
      dataset.train, global_batch_size=config.batch_size, seed=config.seed,
      worker_count=config.data.worker_count,
      process_index=jax.process_index(), process_count=jax.process_count())
  data_iter = iter(loader)

  parallel.barrier('before_checkpoint_manager')
  manager = checkpointing.create_manager(workdir, config.checkpoint.max_to_keep)
  progress = {'history': [], 'epoch_sums': {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}}
  restored = checkpointing.restore_latest_good(
      manager, jax.tree.map(ocp_abstract, state), data_iter)
  if restored is not None:
    start_step, state, progress = restored
    state = state.replace(apply_fn=model.apply, tx=tx)
    logging.info('Resumed from checkpoint at step %d (epoch %.2f) in %s.',
                 start_step, start_step / steps_per_epoch, manager.directory)
  else:
    start_step = 0
    if config.features.normalize:
      mean, std = compute_feature_stats(config, dataset.train,
                                        make_preprocess(_raw_config(config)))
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
  p_train = compile_ahead('train', make_train_step(mesh, preprocess, config, num_classes),
                          state, {'inputs': (config.batch_size,) + input_shape(config),
                                  'label': (config.batch_size,)}, mesh)
  p_predict = compile_ahead('predict', make_predict_step(mesh, preprocess), state,
                            (config.eval_batch_size,) + input_shape(config), mesh)
  last_row: dict = progress['history'][-1] if progress['history'] else {}
  stopped = None
  step = start_step
  with _StopRequest() as stop:
    while step < total_steps:
      epoch = step // steps_per_epoch + 1
      epoch_end = min(epoch * steps_per_epoch, total_steps)
      bar = _progress(range(step, epoch_end), total=steps_per_epoch,
                      desc=f'epoch {epoch}/{config.num_epochs}',
                      enabled=config.progress_bar, initial=step - (epoch - 1) * steps_per_epoch)
      t0 = time.time()
      for _ in bar:
        batch = next(data_iter)
        state, m = p_train(state, parallel.global_batch(
            {'inputs': batch['inputs'], 'label': batch['label']}, mesh))
        step += 1
        if config.debug.step_delay_seconds > 0:  # test hook: widen the kill window
          time.sleep(config.debug.step_delay_seconds)
        if not bool(m['finite']):
          manager.wait_until_finished()
          raise NonFiniteError(
              f'Non-finite loss or gradient at step {step - 1} (epoch {epoch}); the '
              'update was not applied and nothing after the last checkpoint was '
              f'saved (latest good checkpoint: step {manager.latest_step()}). Lower '
              'the learning rate (config.schedule.*_lrs) or check the input data.')
        sums = progress['epoch_sums']
        sums['loss'] += float(m['loss'])
        sums['accuracy'] += float(m['accuracy'])
        sums['steps'] += 1
        if step % config.log_every_steps == 0 and is_chief:
          writer.write_scalars(step, {'train/loss_step': float(m['loss']),
                                      'train/learning_rate': float(schedule(step))})
        if stop.signal_name and step < epoch_end:
          break
      if step < epoch_end:  # stopped by a signal mid-epoch: save exactly here
        checkpointing.save(manager, step, state, data_iter, progress, None)
        stopped = stop.signal_name
        break

      # End of an epoch (or of a truncated debug run).
      sums = progress['epoch_sums']
      n = max(sums['steps'], 1)
      row = {'epoch': epoch, 'step': step,
             'learning_rate': float(schedule(step - 1)),
             'train_loss': sums['loss'] / n, 'train_accuracy': sums['accuracy'] / n,
             'epoch_seconds': time.time() - t0}
      progress['epoch_sums'] = {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}
      do_eval = epoch % config.eval_every_epochs == 0 or step >= total_steps
      if do_eval:
        val, _ = evaluate_split(p_predict, state, dataset.validation,
                                config.eval_batch_size, mesh)
        row.update(val_loss=val['loss'], val_segment_accuracy=val['segment_accuracy'],
                   val_song_accuracy=val['song_accuracy'],
                   val_song_vote_accuracy=val['song_vote_accuracy'])
      previous_best = max((r.get('val_song_accuracy', -1) for r in progress['history']),
                          default=-1)
      # Ties go to the later epoch, as in the checkpoint manager's best_step().
      row['best'] = bool(do_eval and row['val_song_accuracy'] >= previous_best)
      progress['history'].append(row)
      last_row = row
      logging.info(
          'epoch %d step %d: train loss %.4f acc %.3f | val loss %.4f segment acc '
          '%.3f song acc %.3f%s (%.1fs)', epoch, step, row['train_loss'],
          row['train_accuracy'], row.get('val_loss', float('nan')),
          row.get('val_segment_accuracy', float('nan')),
          row.get('val_song_accuracy', float('nan')),
          ' *best*' if row['best'] else '', row['epoch_seconds'])
      if is_chief:
        writer.write_scalars(step, {f'epoch/{k}': v for k, v in row.items()
                                    if isinstance(v, float)})
        writer.write_history(progress['history'])
        reporting.plot_training_curves(progress['history'],
                                       os.path.join(workdir, 'training_curves.png'))
      if (epoch % config.checkpoint.every_epochs == 0 or step >= total_steps
          or stop.signal_name):
        ckpt_metrics = ({checkpointing.BEST_METRIC: row['val_song_accuracy']}
                        if do_eval else None)
        checkpointing.save(manager, step, state, data_iter, progress, ckpt_metrics)
      if on_epoch_end is not None:
        manager.wait_until_finished()  # the epoch's checkpoint is on disk first
        try:
          on_epoch_end(row)
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
  history = progress['history']
  best = max(reversed(history), key=lambda r: r.get('val_song_accuracy', -1)) if history else {}
  return {**last_row, 'best_epoch': best.get('epoch'),
          'best_val_song_accuracy': best.get('val_song_accuracy'),
          'stopped': stopped, 'final_step': step}


def compile_ahead(name: str, step: Callable, state: TrainState, batch_shapes: Any,
                  mesh) -> Callable:
  """AOT-compiles ``step(state, batch)`` for batches of ``batch_shapes``."""
  sharding = parallel.batch_sharded(mesh)
  dtypes = {'label': jnp.int32}
  if isinstance(batch_shapes, dict):
    batch = {k: jax.ShapeDtypeStruct(v, dtypes.get(k, jnp.float32), sharding=sharding)
             for k, v in batch_shapes.items()}
  else:
    batch = jax.ShapeDtypeStruct(batch_shapes, jnp.float32, sharding=sharding)
  compiled = step.lower(state, batch).compile()
  parallel.barrier(f'compiled_{name}')
  return compiled


def ocp_abstract(x: Any) -> Any:
  """Shape/dtype/sharding of an array, the restore target for Orbax."""
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if hasattr(x, 'shape') else x


def _raw_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` with normalisation off (features before standardising)."""
  raw = ml_collections.ConfigDict(config.to_dict())
  raw.features.normalize = False
  return raw


# ----------------------------------------------------------------------------
# Restoring a trained model for evaluation, prediction and export.


@flax.struct.dataclass
class InferenceModel:
  """A restored model and what is needed to feed it, for eval/predict/export."""

  state: TrainState
  genres: list[str] = flax.struct.field(pytree_node=False)
  config: ml_collections.ConfigDict = flax.struct.field(pytree_node=False)
  step: int = flax.struct.field(pytree_node=False)
  mesh: Any = flax.struct.field(pytree_node=False)
  preprocess: Callable = flax.struct.field(pytree_node=False)
  p_predict: Callable = flax.struct.field(pytree_node=False)


def load_genres(workdir: str) -> list[str]:
  path = os.path.join(workdir, 'dataset.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {workdir!r} is not a training workdir '
                            '(or training never got past loading the data).')
  with open(path) as f:
    return list(json.load(f)['genres'])


def load_for_inference(config: ml_collections.ConfigDict, workdir: str,
                       step: int | None = None) -> InferenceModel:
  """Restores the best checkpoint (or ``step``) onto this machine's devices.

  Works whatever number of devices trained the model: parameters are saved
  replicated and restored onto a mesh of the devices here (CPU included).
  """
  if config.get('keep_host_memory', True):
    hostmem.keep_freed_memory()
  workdir = os.path.abspath(workdir)
  genres = load_genres(workdir)
  if not os.path.isdir(checkpointing.checkpoint_dir(workdir)):
    raise FileNotFoundError(f'No checkpoints in {workdir}: train first.')
  manager = checkpointing.create_manager(workdir, read_only=True)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f'No complete checkpoint in {checkpointing.checkpoint_dir(workdir)}.')
  if step is None:
    step = manager.best_step() or manager.latest_step()
  elif step not in steps:
    raise ValueError(f'--step={step}: no checkpoint at that step; available: {sorted(steps)}.')
  mesh = parallel.create_mesh()
  model = models.create_model(config.model, len(genres))
  tx = create_optimizer(config, schedules.create_learning_rate_schedule(config.schedule, 1))
  preprocess = make_preprocess(config)
  abstract = jax.eval_shape(functools.partial(create_train_state, config, model, tx,
                                              preprocess=preprocess),
                            jax.random.PRNGKey(0))
  sharding = parallel.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          abstract)
  state, _ = checkpointing.restore(manager, step, abstract)
  manager.close()
  state = state.replace(apply_fn=model.apply, tx=tx)
  return InferenceModel(state=state, genres=genres, config=config, step=int(step),
                        mesh=mesh, preprocess=preprocess,
                        p_predict=make_predict_step(mesh, preprocess))
