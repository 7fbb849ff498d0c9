"""The train state and the compiled, data-parallel steps.

Reading order: what a model needs to predict (``ModelVariables``) and what
training adds to it (``TrainState``), the optimizer, ``build_state``, then the
per-device train and predict steps and their ``shard_map`` wrappers. The
training loop (train/) and inference (inference.py) both build on this
module; neither imports the other.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training.train_state import TrainState as FlaxTrainState
from jax.sharding import PartitionSpec as P

from melgenre_jax import models
from melgenre_jax.data import augment
from melgenre_jax.data import features
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.runtime import parallel

AXIS = parallel.AXIS


@flax.struct.dataclass
class ModelVariables:
  """What prediction needs: weights, BatchNorm and feature statistics.

  ``feature_mean``/``feature_std`` are the per-band normalisation statistics
  of the training split (zeros/ones when normalisation is off).
  """

  params: Any
  batch_stats: Any
  feature_mean: jax.Array
  feature_std: jax.Array


@flax.struct.dataclass
class StepTeacher:
  """A frozen model that the train step runs on the batch it trains on (train/distill.py).

  With ``config.distill.consistent`` the teacher hears exactly the audio the
  student hears (after time shift, noise and mixup), so its targets follow
  every augmented view instead of being one fixed answer per song.
  """

  variables: ModelVariables
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  spec: InputSpec = flax.struct.field(pytree_node=False)
  multilabel: bool = flax.struct.field(pytree_node=False, default=True)
  microbatch: int = flax.struct.field(pytree_node=False, default=0)


class TrainState(FlaxTrainState):
  """Everything that changes during training, as one pytree.

  ``rng`` is the run's base key: the step's key is derived from it and the
  step number, so restoring (rng, step) reproduces every later random draw.
  ``ema_params`` is the moving average of the weights (``config.ema_decay`` >
  0), or None: when present it is what evaluation, checkpoint selection and
  inference use, as the averaged weights are the ones worth keeping.
  """

  batch_stats: Any
  rng: jax.Array
  feature_mean: jax.Array
  feature_std: jax.Array
  ema_params: Any = None

  def variables(self) -> ModelVariables:
    params = self.params if self.ema_params is None else self.ema_params
    return ModelVariables(params=params, batch_stats=self.batch_stats,
                          feature_mean=self.feature_mean, feature_std=self.feature_std)


# ----------------------------------------------------------------------------
# Model and state (the optimizer is schedules.create_optimizer).


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The model of ``config.model``, averaging BatchNorm statistics over the mesh.

  The same module serves training and inference: the cross-device average
  only happens in training mode (inside the shard_mapped train step).
  """
  return models.create_model(config.model, num_classes, bn_axis_name=AXIS)


def init_variables(spec: InputSpec, model: nn.Module,
                   rng: jax.Array) -> ModelVariables:
  """Fresh parameters and statistics from ``rng`` (pure; jit or eval_shape it)."""
  dummy = jnp.zeros((1,) + spec.input_shape, jnp.float32)
  mean, std = jnp.zeros(spec.n_mels, jnp.float32), jnp.ones(spec.n_mels, jnp.float32)
  variables = model.init({'params': rng, 'dropout': rng},
                         spec.device_preprocess()(dummy, mean, std), train=False)
  return ModelVariables(params=variables['params'], batch_stats=variables['batch_stats'],
                        feature_mean=mean, feature_std=std)


def _initial_state(spec: InputSpec, model: nn.Module,
                   tx: optax.GradientTransformation, rng: jax.Array,
                   ema: bool = False) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  v = init_variables(spec, model, init_rng)
  return TrainState.create(apply_fn=model.apply, params=v.params, tx=tx,
                           batch_stats=v.batch_stats, rng=state_rng,
                           feature_mean=v.feature_mean, feature_std=v.feature_std,
                           ema_params=v.params if ema else None)


def build_state(config: ml_collections.ConfigDict, num_classes: int, mesh,
                tx: optax.GradientTransformation, rng: jax.Array, *,
                spec: InputSpec | None = None) -> TrainState:
  """The initial train state of a run, replicated over ``mesh``'s devices.

  ``spec``: the run's input format (default: derived from ``config``).
  """
  init = functools.partial(_initial_state, spec or InputSpec.from_config(config),
                           create_model(config, num_classes), tx,
                           ema=config.get('ema_decay', 0.0) > 0)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng)


def update_ema(ema: Any, params: Any, decay: float, step: jax.Array) -> Any:
  """One step of the weights' moving average, its decay warmed up.

  The effective decay is ``min(decay, (1 + step) / (10 + step))``: early on
  the average follows the weights closely, so it is not stuck near the random
  initialisation when a short run ends (TensorFlow's ``num_updates`` rule).
  """
  step = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


# ----------------------------------------------------------------------------
# The train step, per device, mapped over the mesh.


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               config: ml_collections.ConfigDict, input_spec: InputSpec,
               num_classes: int, teacher: StepTeacher | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on this device's shard of the global batch.

  Runs inside ``shard_map``: gradients, metrics and BatchNorm statistics are
  averaged over the ``data`` axis explicitly (``lax.pmean``), so the update is
  that of the global batch whatever the device count.

  ``config.task='multilabel'``: labels are multi-hot ``[B, num_classes]``, the
  outputs independent sigmoids, the loss the mean binary cross-entropy over
  segments and tags, and 'accuracy' the mean per-tag accuracy at 0.5 (a
  rough training signal: with rare tags, always answering no scores high;
  validation reports ROC-AUC/PR-AUC).

  ``teacher``: distillation with a consistent teacher. Mixup then mixes the
  waveforms (not the spectrograms), and the teacher's outputs on the mixed
  audio are the distill targets, in place of the batch's per-song ones.
  """
  key = jax.random.fold_in(state.rng, state.step)
  key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))  # own dropout per device
  k_wave, k_spec, k_mix, k_drop = jax.random.split(key, 4)

  multilabel = config.task == 'multilabel'
  if multilabel:
    targets = batch['label'].astype(jnp.float32)
  else:
    targets = jax.nn.one_hot(batch['label'], num_classes)
    smoothing = config.optim.get('label_smoothing', 0.0)
    if smoothing > 0:
      targets = optax.smooth_labels(targets, smoothing)
  inputs = batch['inputs']
  if input_spec.takes_waves:
    inputs = augment.augment_waves(k_wave, inputs, config.augment, input_spec.sample_rate)
  soft = batch.get('teacher')  # per-song targets when config.distill.teacher is set
  if teacher is not None:
    inputs, targets = augment.mixup(k_mix, inputs, targets, config.augment.mixup_alpha)
    soft = jax.lax.stop_gradient(teacher_outputs(teacher, inputs, input_spec.sample_rate))
  spec = input_spec.device_preprocess()(inputs, state.feature_mean, state.feature_std)
  spec = augment.augment_specs(k_spec, spec, config.augment)
  if teacher is None and config.augment.mixup_alpha > 0:
    spec, targets = augment.mixup(k_mix, spec, targets, config.augment.mixup_alpha)

  def loss_fn(params):
    logits, new_vars = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, spec, train=True,
        rngs={'dropout': k_drop},
        mutable=['batch_stats'] + (['intermediates'] if soft is not None else []))
    if multilabel:
      loss = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean()
    else:
      loss = optax.softmax_cross_entropy(logits, targets).mean()
    if soft is not None:
      outputs = new_vars['intermediates']['distill'][0]
      loss = loss + config.distill.weight * distill_loss(outputs, soft, config.distill.target)
    return loss, (logits, new_vars['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  if multilabel:  # sigmoid(logit) >= 0.5 exactly when logit >= 0
    accuracy = jnp.mean((logits >= 0) == (batch['label'] >= 0.5))
  else:
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  loss, accuracy = jax.lax.pmean((loss, accuracy), AXIS)

  finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.ema_params is not None:
    new_state = new_state.replace(ema_params=update_ema(
        state.ema_params, new_state.params, config.ema_decay, state.step))
  # NaN guard: a non-finite step leaves the state as it was (host stops the run).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           new_state, state)
  return new_state, {'loss': loss, 'accuracy': accuracy, 'finite': finite}


def distill_loss(outputs: jax.Array, teacher: jax.Array, target: str) -> jax.Array:
  """The student's distill head against the teacher's targets (train/distill.py).

  'embedding': mean squared error to the teacher's standardised embedding;
  'tags': binary cross-entropy to the teacher's tag probabilities (soft labels).
  """
  if target == 'tags':
    return optax.sigmoid_binary_cross_entropy(outputs, teacher).mean()
  return jnp.mean((outputs - teacher) ** 2)


def teacher_outputs(teacher: StepTeacher, waves: jax.Array, sample_rate: int) -> jax.Array:
  """The teacher's probabilities for the student's waveforms ``[B, S]`` at ``sample_rate``.

  The clips are resampled to the teacher's rate and cut or zero-filled to its
  window (musicnn: 2.99 s against the reference's 3 s).
  """
  rate, window = teacher.spec.sample_rate, teacher.spec.segment_samples
  waves = features.resample_fft(waves, int(round(waves.shape[-1] * rate / sample_rate)))
  waves = jnp.pad(waves, ((0, 0), (0, max(0, window - waves.shape[-1]))))[:, :window]
  return predict_step(teacher.variables, waves, apply_fn=teacher.apply_fn,
                      preprocess=teacher.spec.device_preprocess(),
                      microbatch=teacher.microbatch, multilabel=teacher.multilabel)


def make_train_step(mesh, config: ml_collections.ConfigDict, num_classes: int, *,
                    spec: InputSpec | None = None,
                    teacher: StepTeacher | None = None) -> Callable:
  """The compiled data-parallel step: ``jit(shard_map(train_step))``.

  ``spec``: the run's input format (default: derived from ``config``).
  ``teacher``: a consistent distillation teacher, closed over as constants.

  ``check_vma=False``: we write the collectives ourselves (pmean of gradients
  as with pmap); with the checker on, JAX would already sum the gradients of
  replicated parameters and our pmean would double them.
  """
  step = functools.partial(train_step, config=config,
                           input_spec=spec or InputSpec.from_config(config),
                           num_classes=num_classes, teacher=teacher)
  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)),
                         out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,))


def predict_step(variables: ModelVariables, inputs: jax.Array, *,
                 apply_fn: Callable, preprocess: Callable, microbatch: int = 0,
                 multilabel: bool = False) -> jax.Array:
  """Softmax probabilities for this device's shard (inference mode).

  ``multilabel``: one independent sigmoid probability per tag instead.

  ``microbatch`` > 0 sends the shard through the model that many rows at a
  time (``lax.map``): on a CPU the activations of a few rows stay in cache
  while those of a whole batch do not, which is worth ~2x; accelerators want
  the whole shard at once (0). See ``resolve_microbatch``.
  """
  def probabilities(x: jax.Array) -> jax.Array:
    spec = preprocess(x, variables.feature_mean, variables.feature_std)
    logits = apply_fn({'params': variables.params,
                       'batch_stats': variables.batch_stats}, spec, train=False)
    if multilabel:
      return jax.nn.sigmoid(logits.astype(jnp.float32))
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  n = inputs.shape[0]
  size = math.gcd(n, microbatch) if microbatch > 0 else n
  if size <= 1 or size >= n:
    return probabilities(inputs)
  chunks = inputs.reshape((n // size, size) + inputs.shape[1:])
  return jax.lax.map(probabilities, chunks).reshape((n, -1))


def resolve_microbatch(requested: int, platform: str | None = None) -> int:
  """``config.eval_microbatch``: -1 = 8 rows on CPU, the whole shard elsewhere."""
  if requested >= 0:
    return int(requested)
  return 8 if (platform or jax.default_backend()) == 'cpu' else 0


def make_predict_step(mesh, apply_fn: Callable, preprocess: Callable,
                      microbatch: int = 0, *, multilabel: bool = False) -> Callable:
  """``jit(shard_map(predict_step))``: variables replicated, batch split."""
  step = functools.partial(predict_step, apply_fn=apply_fn, preprocess=preprocess,
                           microbatch=microbatch, multilabel=multilabel)
  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                         check_vma=False)
  return jax.jit(mapped)


# ----------------------------------------------------------------------------
# Embeddings: the head's input, for transfer, search and probes.


def embed_step(variables: ModelVariables, inputs: jax.Array, *,
               apply_fn: Callable, preprocess: Callable, microbatch: int = 0) -> jax.Array:
  """Embeddings ``[n, D]`` float32 for this device's shard (inference mode).

  The same preprocessing, inference mode and microbatching as
  ``predict_step``, so a segment's embedding is exactly what the head reads
  when it is classified.
  """
  def embeddings(x: jax.Array) -> jax.Array:
    spec = preprocess(x, variables.feature_mean, variables.feature_std)
    _, h = apply_fn({'params': variables.params, 'batch_stats': variables.batch_stats},
                    spec, train=False, return_embedding=True)
    return h.astype(jnp.float32)

  n = inputs.shape[0]
  size = math.gcd(n, microbatch) if microbatch > 0 else n
  if size <= 1 or size >= n:
    return embeddings(inputs)
  chunks = inputs.reshape((n // size, size) + inputs.shape[1:])
  return jax.lax.map(embeddings, chunks).reshape((n, -1))


def make_embed_step(mesh, apply_fn: Callable, preprocess: Callable,
                    microbatch: int = 0) -> Callable:
  """``jit(shard_map(embed_step))``: variables replicated, batch split."""
  step = functools.partial(embed_step, apply_fn=apply_fn, preprocess=preprocess,
                           microbatch=microbatch)
  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                         check_vma=False)
  return jax.jit(mapped)


# ----------------------------------------------------------------------------
# BatchNorm population statistics, recomputed before an evaluation.


def batch_stats_step(variables: ModelVariables, inputs: jax.Array, *,
                     apply_fn: Callable, preprocess: Callable) -> Any:
  """This global batch's BatchNorm statistics (per block: mean and var).

  ``apply_fn`` is a model with BatchNorm momentum 0 and no dropout, so the
  running averages a train-mode pass writes are exactly the batch's own
  statistics, of the activations an evaluation will see (no dropout).
  """
  spec = preprocess(inputs, variables.feature_mean, variables.feature_std)
  _, new = apply_fn({'params': variables.params, 'batch_stats': variables.batch_stats},
                    spec, train=True, mutable=['batch_stats'])
  return new['batch_stats']


def make_batch_stats_step(mesh, config: ml_collections.ConfigDict, num_classes: int,
                          preprocess: Callable) -> Callable:
  """``jit(shard_map(batch_stats_step))``: statistics of the global batch on every device."""
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  model_config.batchnorm_momentum = 0.0
  model_config.dropout = 0.0
  model = models.create_model(model_config, num_classes, bn_axis_name=AXIS)
  step = functools.partial(batch_stats_step, apply_fn=model.apply, preprocess=preprocess)
  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                         check_vma=False)
  return jax.jit(mapped)


def pool_batch_stats(per_batch: list[Any]) -> Any:
  """Population statistics from equal-sized batches' (mean, var) per block, on the host.

  Means average; variances add the spread of the batch means (law of total
  variance), so the result is the statistics of all the batches' rows together.
  The statistics are a few hundred numbers: numpy in float64, not a chain of
  small device operations.
  """
  per_batch = jax.device_get(per_batch)
  means = [_leaves_named(b, 'mean') for b in per_batch]
  variances = [_leaves_named(b, 'var') for b in per_batch]

  def average(values) -> np.ndarray:
    return sum(np.asarray(v, np.float64) for v in values) / len(per_batch)

  mean = {k: average(m[k] for m in means) for k in means[0]}
  second = {k: average(v[k] + np.square(np.asarray(m[k], np.float64))
                       for v, m in zip(variances, means)) for k in mean}
  var = {k: np.maximum(second[k] - np.square(mean[k]), 0.0) for k in mean}
  as32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
  return _with_leaves(per_batch[0], as32(mean), as32(var))


def _leaves_named(tree: Any, name: str) -> Any:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
  return {k[:-1]: v for k, v in flat.items() if k[-1] == name}


def _with_leaves(template: Any, mean: Any, var: Any) -> Any:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(template))
  out = {k: (mean[k[:-1]] if k[-1] == 'mean' else var[k[:-1]]) for k in flat}
  return flax.traverse_util.unflatten_dict(out)


def compile_ahead(name: str, step: Callable, first_arg: Any, batch_shapes: Any,
                  mesh) -> Callable:
  """AOT-compiles ``step(first_arg, batch)`` for batches of ``batch_shapes``.

  Processes of a multi-host run meet at a barrier afterwards, so none reaches
  its first collective while another is still compiling. A ``label`` of shape
  ``(B,)`` is int32 genre indices; ``(B, K)`` is multi-hot float32 tags.
  """
  sharding = parallel.batch_sharded(mesh)

  def dtype(name: str, shape: tuple[int, ...]) -> Any:
    return jnp.int32 if name == 'label' and len(shape) == 1 else jnp.float32

  if isinstance(batch_shapes, dict):
    batch = {k: jax.ShapeDtypeStruct(v, dtype(k, tuple(v)), sharding=sharding)
             for k, v in batch_shapes.items()}
  else:
    batch = jax.ShapeDtypeStruct(batch_shapes, jnp.float32, sharding=sharding)
  compiled = step.lower(first_arg, batch).compile()
  parallel.barrier(f'compiled_{name}')
  return compiled
