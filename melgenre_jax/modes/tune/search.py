"""``run_search``: check the space, open the study, run trials until enough finished.

The loop runs one trial per ``study.optimize`` call so that, between trials,
it can recover dead trials, count what the other machines finished and stop
once ``num_trials`` are COMPLETE or PRUNED (see the package docstring).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optuna
from absl import logging

from melgenre_jax import checkpointing
from melgenre_jax import config_checks
from melgenre_jax import train
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import DiskFullError
from melgenre_jax.errors import NonFiniteError
from melgenre_jax.modes.tune import report
from melgenre_jax.modes.tune import study as study_lib
from melgenre_jax.modes.tune.objective import make_objective
from melgenre_jax.modes.tune.objective import SearchStopped
from melgenre_jax.modes.tune.objective import TrainFn
from melgenre_jax.modes.tune.space import apply_params
from melgenre_jax.modes.tune.space import Param
from melgenre_jax.modes.tune.study import Settings
from melgenre_jax.runtime import parallel
from melgenre_jax.runtime import workdir_lock
from melgenre_jax.runtime.processes import machine_id

ConfigCheck = Callable[[ml_collections.ConfigDict], None]


def run_search(config: ml_collections.ConfigDict, workdir: str, *,
               train_fn: TrainFn | None = None,
               config_path: str | None = None) -> dict[str, Any]:
  """Runs (or resumes) the search until ``num_trials`` are COMPLETE or PRUNED.

  ``train_fn(config, workdir, on_epoch_end=...)`` defaults to
  ``train.train_and_evaluate``; tests pass a cheap stand-in. Returns a summary
  (best trial, value, params, paths) and writes the reports described in the
  package docstring. The workdir is locked for the whole search (a second
  search or a training run on it is refused: runtime/workdir_lock.py); each
  trial's run locks its own folder under it.
  """
  config_checks.check_genre_task(
      config, '--mode=tune maximises validation song accuracy',
      'it is scored by ROC-AUC instead; train with --mode=train, or drop '
      '--config.task=multilabel')
  with checkpointing.stop_on_full_disk(workdir), workdir_lock.hold(workdir, 'tune'):
    return _search(config, workdir, train_fn, config_path)


def _search(config: ml_collections.ConfigDict, workdir: str, train_fn: TrainFn | None,
            config_path: str | None) -> dict[str, Any]:
  """``run_search`` with the workdir locked."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  s = study_lib.read_settings(config, workdir)
  extra_check = None
  if train_fn is None:
    train_fn, extra_check = _real_training(s)
  check_space(config, s.space, extra_check)
  os.makedirs(s.tune_dir, exist_ok=True)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    study = _open_study(config, s)
    stopped = _run_trials(study, make_objective(config, s, train_fn), config, s,
                          config_path)
  if stopped is not None:
    return stopped
  summary = report.write_reports(study, config, s, config_path)
  _log_end(study, summary)
  return summary


def check_space(config: ml_collections.ConfigDict, space: Sequence[Param],
                extra_check: ConfigCheck | None = None) -> None:
  """Applies every bound/choice alone and validates it, before any training."""
  config_checks.validate(config)
  for param in space:
    for value in param.extremes():
      candidate = apply_params(config, {param.name: value})
      try:
        config_checks.validate(candidate)
        if extra_check is not None:
          extra_check(candidate)
      except ValueError as e:
        raise ConfigError(
            f'config.tune.space entry {param.name!r} allows {value!r}, which the config '
            f'rejects: {e}') from None


def _real_training(s: Settings) -> tuple[TrainFn, ConfigCheck]:
  """``train.train_and_evaluate`` and the device checks a trial's config needs."""
  if jax.process_count() > 1:
    raise ValueError(
        '--mode=tune runs one training process per machine; drop --num_processes and '
        'share the study between machines instead (config.tune.storage, see '
        'melgenre_jax/modes/tune/__init__.py).')
  if s.compile_cache and not jax.config.jax_compilation_cache_dir:
    # Trials mostly differ in constants of the train step only: model init
    # and the eval step then compile once for the whole search.
    jax.config.update('jax_compilation_cache_dir', os.path.join(s.tune_dir, 'jax_cache'))

  def extra_check(c: ml_collections.ConfigDict) -> None:
    parallel.check_batch_divisible(c.batch_size)
    parallel.check_batch_divisible(c.eval_batch_size, 'config.eval_batch_size')

  return train.train_and_evaluate, extra_check


def _open_study(config: ml_collections.ConfigDict, s: Settings) -> optuna.Study:
  """Creates or loads the study, with the sampler, pruner and retrying storage."""
  storage = study_lib.make_storage(
      s, lambda study, t: study_lib.retry_trial(study, t, s.max_retries))
  study = optuna.create_study(storage=storage, study_name=s.study_name,
                              direction='maximize', load_if_exists=True)
  if 'space' not in study.user_attrs:
    study.set_user_attr('space', list(config.tune.space))
  elif study.user_attrs['space'] != list(config.tune.space):
    logging.warning('config.tune.space differs from the one this study started with '
                    '(%s); earlier trials were sampled from the old space.',
                    study.user_attrs['space'])
  # Reseeding with the number of trials so far: a resumed search does not
  # replay the random start-up points it already tried.
  existing = len(study.get_trials(deepcopy=False))
  study = optuna.load_study(study_name=s.study_name, storage=storage,
                            sampler=study_lib.make_sampler(s, s.seed + existing),
                            pruner=study_lib.make_pruner(s))
  if existing:
    logging.info('Resuming study %r (%s) with %d trials; %s. Searching %s.',
                 s.study_name, s.storage, existing, study_lib.counts(study),
                 ', '.join(p.name for p in s.space))
  return study


def _run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float],
                config: ml_collections.ConfigDict, s: Settings,
                config_path: str | None) -> dict[str, Any] | None:
  """Trials one at a time until enough finished; the summary if a signal stopped one."""
  report_trial = lambda study, trial: report.write_reports(
      study, config, s, config_path, plot=False)
  while _next_trial_wanted(study, s):
    try:
      study.optimize(objective, n_trials=1, catch=(NonFiniteError,),
                     callbacks=[report_trial])
    except SearchStopped as e:
      study_lib.retry_trial(study, study.get_trials(deepcopy=False)[e.trial_number],
                            s.max_retries)
      summary = report.write_reports(study, config, s, config_path)
      logging.warning('Search stopped by %s during trial %d; run the same command to '
                      'resume it.', e.signal_name, e.trial_number)
      return {**summary, 'stopped': e.signal_name}
    except DiskFullError:
      _retry_own_failed_trial(study, s)
      raise
  return None


def _retry_own_failed_trial(study: optuna.Study, s: Settings) -> None:
  """Enqueues a retry of the trial a full disk just failed, so a rerun resumes it.

  Best effort: the study's database may sit on the full disk too; then the
  trial stays RUNNING and the rerun recovers it as a dead process's trial.
  """
  mine = [t for t in study.get_trials(deepcopy=False)
          if t.user_attrs.get('pid') == os.getpid()
          and t.user_attrs.get('machine') == machine_id()]
  if not mine or mine[-1].state != optuna.trial.TrialState.FAIL:
    return  # the trial finished (the reports failed) or its FAIL was not recorded
  try:
    study_lib.retry_trial(study, mine[-1], s.max_retries)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Could not enqueue a retry of trial %d (%s); the rerun recovers it.',
                    mine[-1].number, e)


def _next_trial_wanted(study: optuna.Study, s: Settings) -> bool:
  """Recovers dead trials, then says whether to start another trial here."""
  recovered = study_lib.recover_dead_trials(study, s.max_retries)
  if recovered:
    logging.warning('Trials %s were RUNNING in a process of this machine that no '
                    'longer exists: marked FAIL and retried.', recovered)
  study_lib.fail_stale_trials(study)
  counts = study_lib.counts(study)
  finished = counts['COMPLETE'] + counts['PRUNED']
  if finished + counts['RUNNING'] >= s.num_trials:
    return False
  if counts['FAIL'] > 2 * s.num_trials:
    logging.error('%d trials failed (NaN losses or crashed processes; see the log '
                  'and %s): stopping the search. Narrow config.tune.space (e.g. '
                  'lower learning rates) and run again.', counts['FAIL'],
                  os.path.join(s.tune_dir, 'trials.md'))
    return False
  logging.info('Starting trial %d of %d (%d finished, %d running elsewhere).',
               finished + counts['RUNNING'] + 1, s.num_trials, finished,
               counts['RUNNING'])
  return True


def _log_end(study: optuna.Study, summary: dict[str, Any]) -> None:
  """Prints the table and says where the best config is."""
  counts = study_lib.counts(study)
  print(summary['table'], end='', flush=True)
  if counts['RUNNING']:
    logging.info('%d trials still running on other machines; re-run this command after '
                 'they finish to refresh the report.', counts['RUNNING'])
  if summary['best_trial'] is None:
    logging.warning('No trial completed, so there is no best config.')
  else:
    logging.info('Best trial %d: validation song accuracy %.4f with %s. Train it: python '
                 'main.py --config %s --workdir runs/best', summary['best_trial'],
                 summary['best_value'], summary['best_params'], summary['best_config'])
  logging.info('Trials: %s', counts)
