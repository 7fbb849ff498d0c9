"""One trial: sample its params, train in the trial's directory, score it.

The score is the best validation song accuracy over epochs. Each evaluated
epoch is reported to Optuna so the pruner can stop the trial; since training
calls back after the epoch's checkpoint is saved, a pruned or killed trial
can always be resumed from where it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import ml_collections
import optuna
from absl import logging

from melgenre_jax import workdir as workdir_lib
from melgenre_jax.modes.tune.space import apply_params
from melgenre_jax.modes.tune.space import config_values
from melgenre_jax.modes.tune.study import Settings
from melgenre_jax.runtime.processes import machine_id

SCORE = 'best_val_song_accuracy'

# train.train_and_evaluate(config, workdir, on_epoch_end=...) -> its summary dict.
TrainFn = Callable[..., dict]


class SearchStopped(RuntimeError):
  """Training of a trial was stopped by a signal; the search stops with it."""

  def __init__(self, trial_number: int, signal_name: str):
    super().__init__(f'trial {trial_number} stopped by {signal_name}')
    self.trial_number = trial_number
    self.signal_name = signal_name


def make_objective(config: ml_collections.ConfigDict, s: Settings,
                   train_fn: TrainFn) -> Callable[[optuna.Trial], float]:
  """The Optuna objective: sample, train in the trial's directory, score."""

  def objective(trial: optuna.Trial) -> float:
    raw = {p.name: p.suggest(trial) for p in s.space}
    trial_config = apply_params(config, config_values(s.space, raw))
    if not trial_config.data.cache_dir:  # decode the audio once for all trials
      trial_config.data.cache_dir = os.path.join(s.tune_dir, workdir_lib.CACHE)
    rel = _claim(trial)
    reported = _reported_steps(trial)
    retry_of = trial.user_attrs.get('retry_of')
    logging.info('Trial %d%s in %s: %s', trial.number,
                 f' (retry of {retry_of})' if retry_of is not None else '', rel,
                 ', '.join(f'{k}={_fmt(v)}' for k, v in raw.items()))
    on_epoch_end = _epoch_reporter(trial, reported, s.pruner)
    try:
      result = train_fn(trial_config, os.path.join(s.tune_dir, rel),
                        on_epoch_end=on_epoch_end)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop's own handler
      raise SearchStopped(trial.number, 'SIGINT') from None
    return _score(trial, result)

  return objective


def _claim(trial: optuna.Trial) -> str:
  """Records the trial's directory (a retry's is the dead trial's) and process."""
  rel = trial.user_attrs.get('workdir') or f'trial_{trial.number}'
  trial.set_user_attr('workdir', rel)
  trial.set_user_attr('machine', machine_id())
  trial.set_user_attr('pid', os.getpid())
  return rel


def _reported_steps(trial: optuna.Trial) -> set[int]:
  """Epochs already reported: a retry inherits those of the trial it retries."""
  if trial.user_attrs.get('retry_of') is None:
    return set()
  return set(trial.study.get_trials(deepcopy=False)[trial.number].intermediate_values)


def _epoch_reporter(trial: optuna.Trial, reported: set[int],
                    pruner: str) -> Callable[[dict], None]:
  """``on_epoch_end`` for training: reports the song accuracy, asks the pruner."""

  def on_epoch_end(row: dict) -> None:
    trial.set_user_attr('epochs', int(row['epoch']))
    if 'val_song_accuracy' not in row:
      return
    # An epoch reported by the dead trial but retrained (its checkpoint was
    # not yet on disk) keeps its first value: Optuna takes one per step.
    if int(row['epoch']) not in reported:
      trial.report(float(row['val_song_accuracy']), int(row['epoch']))
      reported.add(int(row['epoch']))
    if trial.should_prune():
      raise optuna.TrialPruned(
          f'epoch {row["epoch"]}: val song accuracy {row["val_song_accuracy"]:.4f} '
          f'below the {pruner} pruner\'s cut')

  return on_epoch_end


def _score(trial: optuna.Trial, result: dict) -> float:
  if result.get('stopped'):
    raise SearchStopped(trial.number, result['stopped'])
  if result.get('epoch') is not None:
    trial.set_user_attr('epochs', int(result['epoch']))
  score = result.get(SCORE)
  if score is None:
    raise RuntimeError(f'Trial {trial.number}: training returned no {SCORE} (no '
                       'validation split or no evaluated epoch?).')
  return float(score)


def _fmt(v: Any) -> str:
  return f'{v:.4g}' if isinstance(v, float) else str(v)
