"""The multi-stage learning-rate schedule, joined from optax pieces at epoch ends,
and the optimizer it drives (Adam with the reference's L2, fine-tuning and
frozen layers applied).

Stages are given in epochs (config.schedule) so a recipe reads like the paper's
description; they become steps here, from the real steps-per-epoch, because the
optimizer counts steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from melgenre_jax import models
from melgenre_jax.errors import ConfigError


def stage_lists(schedule_config: ml_collections.ConfigDict
                ) -> tuple[list[int], list[float], list[float]]:
  """(stage_ends, start_lrs, end_lrs) as plain lists."""
  return (list(schedule_config.stage_ends),
          [float(v) for v in schedule_config.stage_start_lrs],
          [float(v) for v in schedule_config.stage_end_lrs])


def check_schedule(schedule_config: ml_collections.ConfigDict,
                   num_epochs: int) -> None:
  """Raises ValueError naming the field when the stages are malformed."""
  ends, starts, stops = stage_lists(schedule_config)
  if not ends:
    raise ConfigError('config.schedule.stage_ends is empty: give at least one '
                     'stage, e.g. (50,).')
  if not len(ends) == len(starts) == len(stops):
    raise ConfigError(
        'config.schedule.stage_ends, stage_start_lrs and stage_end_lrs must have '
        f'the same length; got {len(ends)}, {len(starts)} and {len(stops)}.')
  previous = 0
  for i, end in enumerate(ends):
    if int(end) != end or end <= previous:
      raise ConfigError(
          'config.schedule.stage_ends must be strictly increasing positive '
          f'whole epochs; got {tuple(ends)} (entry {i}).')
    previous = end
  if ends[-1] > num_epochs:
    raise ConfigError(
        f'config.schedule.stage_ends ends at epoch {ends[-1]}, past '
        f'config.num_epochs={num_epochs}; shorten the stages or train longer.')
  for name, values in (('stage_start_lrs', starts), ('stage_end_lrs', stops)):
    if any(not v > 0 for v in values):
      raise ConfigError(f'config.schedule.{name} must all be > 0; got '
                       f'{tuple(values)}.')


def create_learning_rate_schedule(schedule_config: ml_collections.ConfigDict,
                                  steps_per_epoch: int) -> optax.Schedule:
  """Linear/constant stages joined with ``optax.join_schedules``.

  A stage whose start and end rates are equal is a constant schedule;
  otherwise it is linear over the stage. After the last stage its end rate
  holds, so training past the schedule never sees a rate of zero.
  """
  ends, starts, stops = stage_lists(schedule_config)
  pieces: list[optax.Schedule] = []
  boundaries: list[int] = []
  previous = 0
  for end, start_lr, end_lr in zip(ends, starts, stops):
    length = (end - previous) * steps_per_epoch
    if start_lr == end_lr:
      pieces.append(optax.constant_schedule(start_lr))
    else:
      pieces.append(optax.linear_schedule(start_lr, end_lr, length))
    boundaries.append(end * steps_per_epoch)
    previous = end
  pieces.append(optax.constant_schedule(stops[-1]))
  return optax.join_schedules(pieces, boundaries)


# ----------------------------------------------------------------------------
# The optimizer.


def kernel_mask(params: Any) -> Any:
  """True on kernels (conv, dense, LSTM), False on biases and BatchNorm."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {path: path[-1] == 'kernel' for path in flat})


def create_optimizer(config: ml_collections.ConfigDict, learning_rate: optax.Schedule,
                     steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """Adam with a coupled L2 penalty on kernels, fine-tuning settings applied.

  ``add_decayed_weights(2 * l2)`` before Adam's scaling adds the gradient of
  ``l2 * sum(W**2)`` - the same as Keras' ``kernel_regularizer=l2(l2)`` in the
  reference - without computing the penalty inside the loss.
  ``steps_per_epoch`` is needed when ``config.finetune`` freezes the backbone
  for some epochs.
  """
  def adam(lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(2.0 * config.optim.l2, mask=kernel_mask),
        optax.scale_by_adam(b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps),
        optax.scale_by_learning_rate(lr),
    )

  optimizer = with_finetune(config.get('finetune'), adam, learning_rate, steps_per_epoch)
  return without_frozen(config.model, optimizer)


def without_frozen(model_config: ml_collections.ConfigDict,
                   optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """``optimizer`` on the trainable parameters; layers the model keeps fixed get no update.

  The model already stops their gradients; this also keeps the L2 decay off
  them and gives them no optimizer state.
  """
  def labels(params: Any) -> Any:
    return jax.tree.map(lambda f: 'frozen' if f else 'train',
                        models.frozen_mask(model_config, params))

  if not models.family_freezes(model_config):
    return optimizer
  return optax.multi_transform({'train': optimizer, 'frozen': optax.set_to_zero()}, labels)


def param_groups(params: Any) -> Any:
  """'head' for the classifier layer, 'backbone' for everything before it."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {path: 'head' if path[0] == 'head' else 'backbone' for path in flat})


def with_finetune(finetune: ml_collections.ConfigDict | None,
                  make: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation],
                  learning_rate: optax.Schedule,
                  steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """``make(learning_rate)``, with the backbone frozen or slowed as ``finetune`` says.

  Head and backbone get their own copy of the optimizer (``multi_transform``).
  A backbone frozen for N epochs runs at learning rate 0 for those steps, so
  its Adam moments follow its gradients and are warm when it starts to move;
  frozen for the whole run (-1), it has no optimizer state at all.
  """
  freeze = int(finetune.freeze_backbone_epochs) if finetune is not None else 0
  multiplier = float(finetune.backbone_lr_multiplier) if finetune is not None else 1.0
  if freeze == 0 and multiplier == 1.0:
    return make(learning_rate)
  if freeze < 0:
    backbone = optax.set_to_zero()
  else:
    if freeze > 0 and not steps_per_epoch:
      raise ValueError('freezing the backbone for some epochs needs steps_per_epoch')
    frozen_steps = freeze * (steps_per_epoch or 0)

    def backbone_lr(step: jax.Array) -> jax.Array:
      return jnp.where(step < frozen_steps, 0.0, multiplier * learning_rate(step))

    backbone = make(backbone_lr)
  return optax.multi_transform({'head': make(learning_rate), 'backbone': backbone},
                               param_groups)
