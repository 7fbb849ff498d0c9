"""The multi-stage learning-rate schedule, joined from optax pieces at epoch ends.

Stages are given in epochs (config.schedule) so a recipe reads like the paper's
description; they become steps here, from the real steps-per-epoch, because the
optimizer counts steps.
"""

from __future__ import annotations

import ml_collections
import optax

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
