"""The Optuna side of the search: settings, sampler, pruner, storage, dead trials.

Interruptions. The study lives in an Optuna RDB storage and is loaded if it
exists, so running the same command again continues the search with its
finished trials intact. A trial interrupted by SIGTERM/SIGINT (training saves a
checkpoint and returns) or whose process died (SIGKILL, power loss) is marked
FAIL and *retried* by Optuna's ``RetryHeartbeatStaleTrialCallback``: a new
WAITING trial with the same params, the epochs already reported and the dead
trial's user attributes, among them its directory, so the retry trains in that
directory and resumes from its last checkpoint. A dead trial is recognised
by Optuna's heartbeat: a RUNNING trial silent for
``2 * config.tune.heartbeat_seconds`` is failed and retried by whichever process
notices. Optuna has nothing quicker for a process that died on this machine, so
at start a RUNNING trial that ran here (host/boot id) under a process id that no
longer exists is failed at once and fed to the same callback. Each trial is
retried at most ``config.tune.max_retries`` times. A trial whose loss turns NaN
(``train.NonFiniteError``) is a FAIL that is not retried, and the search goes
on; FAIL trials do not count towards ``num_trials``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import ml_collections
import optuna
from absl import logging
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from melgenre_jax import config_checks
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import ConfigError
from melgenre_jax.modes.tune.space import Param
from melgenre_jax.modes.tune.space import PRUNERS
from melgenre_jax.modes.tune.space import parse_space
from melgenre_jax.modes.tune.space import SAMPLERS
from melgenre_jax.runtime.processes import machine_id
from melgenre_jax.runtime.processes import pid_alive

# User attributes of a trial that belong to its process, not to its work: a
# retry must not inherit them (see ``retry_trial``).
PROCESS_ATTRS = ('pid', 'machine')


@dataclasses.dataclass(frozen=True)
class Settings:
  """``config.tune`` (checked by config_checks); paths resolved against the workdir."""

  num_trials: int
  sampler: str
  startup_trials: int
  seed: int
  pruner: str
  min_epochs: int
  pruner_startup_trials: int
  halving_reduction_factor: int
  storage: str
  study_name: str
  heartbeat_seconds: int
  max_retries: int
  compile_cache: bool
  space: tuple[Param, ...]
  tune_dir: str


def check_tune(config: ml_collections.ConfigDict) -> None:
  """config.tune: the search settings' ranges, and that config.tune.space parses.

  The tune mode checks its own block (a training run ignores it).
  """
  config_checks.choice(config, 'tune.sampler', SAMPLERS)
  config_checks.choice(config, 'tune.pruner', PRUNERS)
  for field, minimum in (('num_trials', 1), ('startup_trials', 0), ('seed', 0),
                         ('min_epochs', 0), ('pruner_startup_trials', 0),
                         ('halving_reduction_factor', 2), ('heartbeat_seconds', 0),
                         ('max_retries', 0)):
    value = config.tune[field]
    config_checks.require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f'tune.{field}', value, f'must be an integer >= {minimum}')
  parse_space(config.tune.space)
  config_checks.require(
      config.data.validation_fraction > 0, 'data.validation_fraction',
      config.data.validation_fraction,
      'must be > 0 for --mode=tune: each trial is scored on validation songs')


def read_settings(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """Settings of ``config.tune``; a ConfigError names a field out of range."""
  if 'tune' not in config:
    raise ConfigError(
        'The config has no config.tune block: build it from configs/default.py '
        '(which defines config.tune.*) or add the block to your config file.')
  check_tune(config)
  t = config.tune
  tune_dir = workdir_lib.path(os.path.abspath(workdir), workdir_lib.TUNE)
  return Settings(
      num_trials=t.num_trials, sampler=t.sampler, startup_trials=t.startup_trials,
      seed=t.seed, pruner=t.pruner, min_epochs=t.min_epochs,
      pruner_startup_trials=t.pruner_startup_trials,
      halving_reduction_factor=t.halving_reduction_factor,
      storage=t.storage or 'sqlite:///' + os.path.join(tune_dir, 'study.db'),
      study_name=t.study_name or 'melgenre', heartbeat_seconds=t.heartbeat_seconds,
      max_retries=t.max_retries, compile_cache=bool(t.get('compile_cache', True)),
      space=parse_space(t.space), tune_dir=tune_dir)


def make_sampler(s: Settings, seed: int) -> optuna.samplers.BaseSampler:
  if s.sampler == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  # constant_liar: trials running elsewhere count as bad guesses, so parallel
  # workers do not all propose the same point.
  return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials,
                                    constant_liar=True)


def make_pruner(s: Settings) -> optuna.pruners.BasePruner:
  if s.pruner == 'median':
    return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials,
                                       n_warmup_steps=s.min_epochs)
  if s.pruner == 'halving':
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(1, s.min_epochs), reduction_factor=s.halving_reduction_factor)
  return optuna.pruners.NopPruner()


def make_storage(s: Settings, on_stale: Callable | None) -> optuna.storages.RDBStorage:
  """RDB storage with heartbeats; SQLite waits for locks rather than failing.

  ``on_stale(study, trial)`` is called for each trial the heartbeat fails
  (``retry_trial`` in the search).
  """
  kwargs: dict[str, Any] = {}
  if s.storage.startswith('sqlite'):
    os.makedirs(s.tune_dir, exist_ok=True)
    kwargs['engine_kwargs'] = {'connect_args': {'timeout': 60}}
  if s.heartbeat_seconds > 0:
    kwargs.update(heartbeat_interval=s.heartbeat_seconds,
                  grace_period=2 * s.heartbeat_seconds,
                  heartbeat_stale_trial_callback=on_stale)
  for attempt in range(5):
    try:
      with warnings.catch_warnings():  # heartbeat_interval is "experimental"
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(s.storage, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      # Processes starting together race to create the tables ("table studies
      # already exists"): the loser finds them on its next try.
      if attempt == 4 or 'OperationalError' not in type(e).__name__:
        raise
      logging.info('Opening %s failed (%s); retrying.', s.storage, str(e).splitlines()[0])
      time.sleep(1.0 + attempt)
  raise AssertionError('unreachable')


# ----------------------------------------------------------------------------
# Dead trials: recognise, fail and retry.


def retry_trial(study: optuna.Study, dead: FrozenTrial, max_retries: int) -> bool:
  """Retries the FAIL trial ``dead`` with Optuna's callback; False if exhausted.

  The retry (a WAITING trial) gets the dead trial's params, intermediate values
  and user attributes (so ``workdir``: it resumes from the dead trial's
  checkpoint) plus ``retry_of``, the dead trial's number. It does not get the
  dead process's ``pid``/``machine``: until the retry's objective records its
  own, ``recover_dead_trials`` in another process of this machine would take
  the just-started retry for dead.
  """
  with warnings.catch_warnings():  # the callback is "experimental"
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
        max_retry=max_retries, inherit_intermediate_values=True)
    retries = len(callback.retry_history(dead))  # before this one
  if retries >= max_retries:  # the callback's own bound, for the message
    logging.warning('Trial %d failed and was already retried %d times '
                    '(config.tune.max_retries); not retrying it again.',
                    dead.number, retries)
    return False
  source = copy.deepcopy(dead)  # the callback appends to its retry history in place
  source.user_attrs = {**{k: v for k, v in dead.user_attrs.items()
                          if k not in PROCESS_ATTRS}, 'retry_of': dead.number}
  callback(study, source)
  logging.warning('Trial %d did not finish; enqueued a retry with the same params that '
                  'resumes %s.', dead.number, dead.user_attrs.get('workdir', 'from scratch'))
  return True


def recover_dead_trials(study: optuna.Study, max_retries: int) -> list[int]:
  """Fails and retries RUNNING trials whose process on this machine is gone.

  Trials of other machines are left to the heartbeat (they may be alive).
  """
  me, recovered = machine_id(), []
  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    pid = t.user_attrs.get('pid')
    if (t.user_attrs.get('machine') != me or pid is None or pid == os.getpid()
        or pid_alive(int(pid))):
      continue
    try:  # atomic in the storage: if another process got there first, it retries
      study.tell(t.number, state=TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
      continue
    recovered.append(t.number)
    retry_trial(study, t, max_retries)
  return recovered


def fail_stale_trials(study: optuna.Study) -> None:
  """Optuna's heartbeat check (its callback retries), run between trials too.

  A no-op when the storage has no heartbeat (config.tune.heartbeat_seconds=0).
  """
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    optuna.storages.fail_stale_trials(study)


def counts(study: optuna.Study) -> dict[str, int]:
  """Number of trials per state name."""
  by_state = {state.name: 0 for state in TrialState}
  for t in study.get_trials(deepcopy=False):
    by_state[t.state.name] += 1
  return by_state
