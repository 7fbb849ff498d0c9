"""Hyperparameter search with Optuna (``--mode=tune``).

  python main.py --config configs/synthetic.py --workdir runs/search --mode tune

Each trial is an ordinary training run (``train.train_and_evaluate``) in
``WORKDIR/tune/trial_<n>/``, scored by its best validation *song* accuracy over
epochs. Every evaluated epoch's song accuracy is reported to Optuna, and the
pruner (median or successive halving) may stop a trial after its checkpoint is
saved. When ``config.tune.num_trials`` trials are COMPLETE or PRUNED the search
stops and writes, under ``WORKDIR/tune/``:

  trials.csv, trials.md   one row per trial: number, state, score, epochs, params
  trials.png              score against trial number (pruned trials marked x)
  best_config.py          a ready-to-run config: the search's full config (command
                          line overrides included) with the best params applied:
                          python main.py --config WORKDIR/tune/best_config.py --workdir X
  study.db                the Optuna study (SQLite), unless config.tune.storage is set
  cache/, jax_cache/      decoded audio and XLA compilations shared by the trials
                          (config.data.cache_dir / JAX_COMPILATION_CACHE_DIR win
                          when set; config.tune.compile_cache=False turns the
                          latter off)

The search space (``config.tune.space``) is a tuple of ``'FIELD=SPEC'`` strings,
because dotted names cannot be ConfigDict keys and a tuple can be replaced whole
from the command line:

  FIELD  a config path ('model.dropout', 'batch_size', 'schedule.stage_ends'), or
         'lr_scale': a factor applied to every value of schedule.stage_start_lrs
         and schedule.stage_end_lrs (the schedule's shape is kept, its height
         searched).
  SPEC   uniform:LOW:HIGH        float
         loguniform:LOW:HIGH     float, sampled on a log scale (LOW > 0)
         int:LOW:HIGH[:STEP]     integer, both ends included
         logint:LOW:HIGH         integer, log scale
         choice:A|B|C            Python literals: 16|32, (64,16)|(128,32), relu|gelu

  --config.tune.space="('lr_scale=loguniform:0.3:3','model.dropout=uniform:0:0.5')"

Every bound and choice is applied to the config and checked
(``config_checks.validate``) before any training, so a typo fails at once.

Interruptions. The study lives in an Optuna RDB storage and is loaded if it
exists, so running the same command again continues the search with its
finished trials intact. A trial interrupted by SIGTERM/SIGINT (training saves a
checkpoint and returns) or whose process died (SIGKILL, power loss) is marked
FAIL and *retried*: a new trial with the same params is enqueued and trains in
the dead trial's directory, so it resumes from its last checkpoint, and the
epochs already reported are copied over. A dead trial is recognised at start
when it ran on this machine (host/boot id) under a process id that no longer
exists, and otherwise by Optuna's heartbeat: a RUNNING trial silent for
``2 * config.tune.heartbeat_seconds`` is failed and retried by whichever process
notices. Each trial is retried at most ``config.tune.max_retries`` times. A
trial whose loss turns NaN (``train.NonFiniteError``) is a FAIL and the search
goes on; FAIL trials do not count towards ``num_trials``.

Several machines, one study. Point every machine at one database server and
run the same command on each; Optuna hands out trials, there is no scheduler:

  python main.py --config configs/gtzan.py --workdir runs/search --mode tune \\
      --config.tune.storage=postgresql://user:pass@dbhost/optuna \\
      --config.tune.seed=<a different number per machine>

(SQLite works for several processes on one machine with a local disk; over NFS
use PostgreSQL/MySQL.) The per-machine seed keeps the samplers from proposing
the same points. A machine stops starting trials once finished + running
trials reach ``num_trials``; each writes its report from the whole study, so
the last one to finish (or a re-run of the command) has the full table. Trial
directories stay on the machine that trained them.
"""

from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import json
import math
import os
import pprint
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import optuna
from absl import logging
from optuna.trial import TrialState

from melgenre_jax import config_checks
from melgenre_jax.runtime.processes import machine_id, pid_alive

LR_SCALE = 'lr_scale'
KINDS = ('uniform', 'loguniform', 'int', 'logint', 'choice')
SAMPLERS = ('tpe', 'random')
PRUNERS = ('median', 'halving', 'none')
SCORE = 'best_val_song_accuracy'

TrainFn = Callable[..., dict]


class SearchStopped(RuntimeError):
  """Training of a trial was stopped by a signal; the search stops with it."""

  def __init__(self, trial_number: int, signal_name: str):
    super().__init__(f'trial {trial_number} stopped by {signal_name}')
    self.trial_number = trial_number
    self.signal_name = signal_name


# ----------------------------------------------------------------------------
# The search space.


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched field: its config path (or 'lr_scale') and distribution.

  Choices are kept as their source text in the study (Optuna's categorical
  values must be scalars, and ``'(64,16)'`` reads well in tables) and turned
  into Python values by ``value``.
  """

  name: str
  kind: str
  low: float = 0.0
  high: float = 0.0
  step: int = 1
  choices: tuple[str, ...] = ()

  def suggest(self, trial: optuna.Trial) -> Any:
    if self.kind == 'uniform':
      return trial.suggest_float(self.name, self.low, self.high)
    if self.kind == 'loguniform':
      return trial.suggest_float(self.name, self.low, self.high, log=True)
    if self.kind == 'int':
      return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step)
    if self.kind == 'logint':
      return trial.suggest_int(self.name, int(self.low), int(self.high), log=True)
    return trial.suggest_categorical(self.name, list(self.choices))

  def value(self, raw: Any) -> Any:
    """The config value for a value stored in the study."""
    return _literal(raw) if self.kind == 'choice' else raw

  def extremes(self) -> list[Any]:
    """Values worth checking before training: both bounds, or every choice."""
    if self.kind == 'choice':
      return [self.value(c) for c in self.choices]
    if self.kind in ('int', 'logint'):
      return [int(self.low), int(self.high)]
    return [self.low, self.high]


def _literal(text: str) -> Any:
  """A Python literal, or the bare text for words like ``none`` or ``slaney``."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _spec_error(index: int, entry: str, why: str) -> config_checks.ConfigError:
  return config_checks.ConfigError(
      f'config.tune.space[{index}]={entry!r}: {why}. Each entry is FIELD=SPEC with '
      f'SPEC one of uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH[:STEP], '
      f'logint:LOW:HIGH, choice:A|B|C; FIELD a config path or {LR_SCALE!r}.')


def parse_param(entry: str, index: int = 0) -> Param:
  """Parses one ``'FIELD=SPEC'`` entry of ``config.tune.space``."""
  if not isinstance(entry, str) or '=' not in entry:
    raise _spec_error(index, entry, 'missing "="')
  name, spec = (s.strip() for s in entry.split('=', 1))
  kind, _, rest = spec.partition(':')
  kind = kind.strip()
  if not name:
    raise _spec_error(index, entry, 'empty FIELD')
  if kind not in KINDS:
    raise _spec_error(index, entry, f'unknown kind {kind!r} (allowed: {", ".join(KINDS)})')
  if kind == 'choice':
    choices = tuple(c.strip() for c in rest.split('|'))
    if not rest.strip() or any(not c for c in choices):
      raise _spec_error(index, entry, 'choice needs one or more non-empty A|B|C options')
    if len(set(choices)) != len(choices):
      raise _spec_error(index, entry, 'choice options repeat')
    return Param(name, kind, choices=choices)
  parts = rest.split(':')
  allowed = 3 if kind == 'int' else 2
  if not 2 <= len(parts) <= allowed:
    raise _spec_error(index, entry, f'{kind} needs LOW:HIGH' + ('[:STEP]' if kind == 'int' else ''))
  try:
    numbers = [int(p) if kind in ('int', 'logint') else float(p) for p in parts]
  except ValueError:
    what = 'integers' if kind in ('int', 'logint') else 'numbers'
    raise _spec_error(index, entry, f'{kind} bounds must be {what}') from None
  low, high = numbers[:2]
  step = numbers[2] if len(numbers) == 3 else 1
  if not (math.isfinite(low) and math.isfinite(high) and low < high):
    raise _spec_error(index, entry, 'need finite LOW < HIGH')
  if kind.startswith('log') and low <= 0:
    raise _spec_error(index, entry, 'a log scale needs LOW > 0')
  if step <= 0:
    raise _spec_error(index, entry, 'STEP must be > 0')
  return Param(name, kind, low, high, step)


def parse_space(entries: Sequence[str]) -> tuple[Param, ...]:
  """Parses ``config.tune.space``; a field may appear once."""
  if isinstance(entries, str):
    entries = (entries,)
  params = tuple(parse_param(e, i) for i, e in enumerate(entries))
  if not params:
    raise config_checks.ConfigError(
        'config.tune.space is empty: nothing to search. Give entries such as '
        "--config.tune.space=\"('model.dropout=uniform:0.0:0.5',)\".")
  names = [p.name for p in params]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise config_checks.ConfigError(f'config.tune.space: {", ".join(repeated)} '
                                    'appear more than once; keep one entry each.')
  return params


def _set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  node = config
  *parents, leaf = path.split('.')
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise config_checks.ConfigError(
          f'config.tune.space: config.{".".join(parents[:i + 1])} is not a section of '
          f'the config, so {path!r} cannot be searched. Use a field that exists in '
          f'configs/default.py, or {LR_SCALE!r}.')
    node = node[part]
  if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
    what = 'a section, not a field' if leaf in node else 'not a field of the config'
    raise config_checks.ConfigError(
        f'config.tune.space: config.{path} is {what}. Use a field that exists in '
        f'configs/default.py (e.g. model.dropout), or {LR_SCALE!r}.')
  old = node[leaf]
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(value, list):
    value = tuple(value)
  if (isinstance(old, tuple) != isinstance(value, tuple)
      or (isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float))
      or (isinstance(old, bool) != isinstance(value, bool))):
    raise config_checks.ConfigError(
        f'config.tune.space: config.{path} is {type(old).__name__} ({old!r}) but the '
        f'space gives {value!r} ({type(value).__name__}); use '
        f'{"int:LOW:HIGH" if isinstance(old, int) else "a matching choice"}.')
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise config_checks.ConfigError(f'config.tune.space: config.{path}={value!r}: {e}') from None


def apply_params(config: ml_collections.ConfigDict, values: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``values`` (config values, not study values) set.

  Fields are set first; ``lr_scale`` then multiplies every stage value of the
  schedule, so it composes with a searched ``schedule.stage_*_lrs``.
  """
  config = copy.deepcopy(config)
  for name, value in values.items():
    if name != LR_SCALE:
      _set_field(config, name, value)
  if LR_SCALE in values:
    scale = float(values[LR_SCALE])
    if not (math.isfinite(scale) and scale > 0):
      raise config_checks.ConfigError(f'{LR_SCALE}={scale!r}: must be a positive number.')
    for field in ('stage_start_lrs', 'stage_end_lrs'):
      config.schedule[field] = tuple(float(v) * scale for v in config.schedule[field])
  return config


def config_values(space: Sequence[Param], study_params: dict[str, Any]) -> dict[str, Any]:
  """Study values (choice text) to config values, for the params in ``space``."""
  by_name = {p.name: p for p in space}
  return {k: by_name[k].value(v) if k in by_name else v for k, v in study_params.items()}


def check_space(config: ml_collections.ConfigDict, space: Sequence[Param],
                extra_check: Callable[[ml_collections.ConfigDict], None] | None = None
                ) -> None:
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
        raise config_checks.ConfigError(
            f'config.tune.space entry {param.name!r} allows {value!r}, which the config '
            f'rejects: {e}') from None


# ----------------------------------------------------------------------------
# Settings, storage, sampler and pruner.


@dataclasses.dataclass(frozen=True)
class Settings:
  """``config.tune`` checked; paths resolved against the workdir."""

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


def read_settings(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  if 'tune' not in config:
    raise config_checks.ConfigError(
        'The config has no config.tune block: build it from configs/default.py '
        '(which defines config.tune.*) or add the block to your config file.')
  t = config.tune

  def nonneg_int(field: str, minimum: int = 0) -> int:
    value = t[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      raise config_checks.ConfigError(
          f'config.tune.{field}={value!r} is invalid: must be an integer >= {minimum}.')
    return value

  for field, allowed in (('sampler', SAMPLERS), ('pruner', PRUNERS)):
    if t[field] not in allowed:
      raise config_checks.ConfigError(
          f'config.tune.{field}={t[field]!r} is invalid: allowed values are '
          f'{", ".join(allowed)}.')
  tune_dir = os.path.join(os.path.abspath(workdir), 'tune')
  storage = t.storage or 'sqlite:///' + os.path.join(tune_dir, 'study.db')
  return Settings(
      num_trials=nonneg_int('num_trials', 1), sampler=t.sampler,
      startup_trials=nonneg_int('startup_trials'), seed=nonneg_int('seed'),
      pruner=t.pruner, min_epochs=nonneg_int('min_epochs'),
      pruner_startup_trials=nonneg_int('pruner_startup_trials'),
      halving_reduction_factor=nonneg_int('halving_reduction_factor', 2),
      storage=storage, study_name=t.study_name or 'melgenre',
      heartbeat_seconds=nonneg_int('heartbeat_seconds'),
      max_retries=nonneg_int('max_retries'),
      compile_cache=bool(t.get('compile_cache', True)), space=parse_space(t.space),
      tune_dir=tune_dir)


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


def make_storage(s: Settings, on_stale: Callable) -> optuna.storages.RDBStorage:
  """RDB storage with heartbeats; SQLite waits for locks rather than failing."""
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


def requeue(study: optuna.Study, dead: optuna.trial.FrozenTrial, max_retries: int) -> bool:
  """Enqueues a retry of ``dead`` (same params, same directory); False if exhausted."""
  retries = int(dead.user_attrs.get('retries', 0)) + 1
  if retries > max_retries:
    logging.warning('Trial %d failed and was already retried %d times '
                    '(config.tune.max_retries); not retrying it again.',
                    dead.number, retries - 1)
    return False
  attrs = {'retry_of': dead.number, 'retries': retries}
  if 'workdir' in dead.user_attrs:
    attrs['workdir'] = dead.user_attrs['workdir']
  study.enqueue_trial(dict(dead.params), user_attrs=attrs)
  logging.warning('Trial %d did not finish; enqueued a retry with the same params that '
                  'resumes %s.', dead.number, attrs.get('workdir', 'from scratch'))
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
    requeue(study, t, max_retries)
  return recovered


def fail_stale_trials(study: optuna.Study) -> None:
  """Optuna's heartbeat check (its callback retries), run between trials too.

  A no-op when the storage has no heartbeat (config.tune.heartbeat_seconds=0).
  """
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    optuna.storages.fail_stale_trials(study)


# ----------------------------------------------------------------------------
# One trial.


def make_objective(config: ml_collections.ConfigDict, s: Settings,
                   train_fn: TrainFn) -> Callable[[optuna.Trial], float]:
  """The Optuna objective: sample, train in the trial's directory, score."""

  def objective(trial: optuna.Trial) -> float:
    raw = {p.name: p.suggest(trial) for p in s.space}
    trial_config = apply_params(config, config_values(s.space, raw))
    if not trial_config.data.cache_dir:  # decode the audio once for all trials
      trial_config.data.cache_dir = os.path.join(s.tune_dir, 'cache')
    rel = trial.user_attrs.get('workdir') or f'trial_{trial.number}'
    trial.set_user_attr('workdir', rel)
    trial.set_user_attr('machine', machine_id())
    trial.set_user_attr('pid', os.getpid())
    retry_of = trial.user_attrs.get('retry_of')
    reported: set[int] = set()
    if retry_of is not None:  # carry over what the dead trial reported
      dead = trial.study.get_trials(deepcopy=False)[retry_of]
      for step, value in sorted(dead.intermediate_values.items()):
        trial.report(value, step)
        reported.add(step)
      if 'epochs' in dead.user_attrs:
        trial.set_user_attr('epochs', dead.user_attrs['epochs'])
    logging.info('Trial %d%s in %s: %s', trial.number,
                 f' (retry of {retry_of})' if retry_of is not None else '', rel,
                 ', '.join(f'{k}={_fmt(v)}' for k, v in raw.items()))

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
            f'below the {s.pruner} pruner\'s cut')

    try:
      result = train_fn(trial_config, os.path.join(s.tune_dir, rel),
                        on_epoch_end=on_epoch_end)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop's own handler
      raise SearchStopped(trial.number, 'SIGINT') from None
    if result.get('stopped'):
      raise SearchStopped(trial.number, result['stopped'])
    if result.get('epoch') is not None:
      trial.set_user_attr('epochs', int(result['epoch']))
    score = result.get(SCORE)
    if score is None:
      raise RuntimeError(f'Trial {trial.number}: training returned no {SCORE} (no '
                         'validation split or no evaluated epoch?).')
    return float(score)

  return objective


def _fmt(v: Any) -> str:
  return f'{v:.4g}' if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------
# Reports.


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
  """One dict per trial, for the tables and the plot.

  ``score`` is the objective for COMPLETE trials and the best epoch reported
  before pruning for PRUNED ones (for plotting; they never win).
  """
  rows = []
  names: list[str] = []
  trials = study.get_trials(deepcopy=False)
  for t in trials:
    names += [n for n in t.params if n not in names]
  for t in trials:
    if t.state == TrialState.COMPLETE:
      score = t.value
    elif t.intermediate_values:
      score = max(t.intermediate_values.values())
    else:
      score = None
    duration = (t.datetime_complete - t.datetime_start).total_seconds() if (
        t.datetime_complete and t.datetime_start) else None
    row = {'number': t.number, 'state': t.state.name, 'score': score,
           'epochs': t.user_attrs.get('epochs')}
    row.update({n: t.params.get(n) for n in names})
    row.update({'retry_of': t.user_attrs.get('retry_of'),
                'workdir': t.user_attrs.get('workdir'), 'seconds': duration})
    rows.append(row)
  return rows


def _cell(v: Any) -> str:
  if v is None:
    return ''
  if isinstance(v, float):
    return f'{v:.4f}' if abs(v) >= 1e-3 or v == 0 else f'{v:.3g}'
  return str(v)


def markdown_table(rows: Sequence[dict]) -> str:
  if not rows:
    return '(no trials yet)\n'
  keys = list(rows[0])
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
  lines += ['| ' + ' | '.join(_cell(r[k]) for k in keys) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'


def write_csv(rows: Sequence[dict], path: str) -> None:
  with open(path, 'w', newline='') as f:
    if rows:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)


def plot_trials(rows: Sequence[dict], path: str) -> None:
  """Score per trial: complete dots, pruned crosses, failed ticks, best so far."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  for state, marker, color, label in (('COMPLETE', 'o', 'tab:blue', 'complete'),
                                      ('PRUNED', 'x', 'tab:orange', 'pruned (best epoch)')):
    pts = [(r['number'], r['score']) for r in rows
           if r['state'] == state and r['score'] is not None]
    if pts:
      ax.scatter(*zip(*pts), marker=marker, color=color, label=label, zorder=3)
  failed = [r['number'] for r in rows if r['state'] == 'FAIL']
  if failed:
    ax.scatter(failed, [0.0] * len(failed), marker='v', color='tab:red',
               label='failed / retried', zorder=3)
  best, xs, ys = -math.inf, [], []
  for r in rows:
    if r['state'] == 'COMPLETE' and r['score'] is not None:
      best = max(best, r['score'])
    if best > -math.inf:
      xs.append(r['number'])
      ys.append(best)
  if xs:
    ax.step(xs, ys, where='post', color='tab:green', label='best so far')
  ax.set_xlabel('trial')
  ax.set_ylabel('validation song accuracy')
  ax.set_ylim(-0.03, 1.03)
  ax.grid(alpha=0.3)
  if rows:
    ax.legend(loc='best', fontsize=8, framealpha=0.8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def best_config_source(config: ml_collections.ConfigDict, best_params: dict[str, Any],
                       trial: optuna.trial.FrozenTrial, tune_dir: str,
                       config_path: str | None) -> str:
  """A self-contained config file: the whole search config with the best params.

  The config is embedded as a literal (not re-loaded from the original file),
  so command-line overrides of the search are kept and the file still works
  if the original config changes.
  """
  best = apply_params(config, best_params)
  literal = pprint.pformat(best.to_dict(), indent=1, width=100, sort_dicts=True)
  params = pprint.pformat(best_params, indent=1, width=100, sort_dicts=True)
  origin = f'{config_path} (+ command-line overrides)' if config_path else (
      'the search config (command-line overrides included)')
  return f'''"""Best trial of the search in {tune_dir}: trial {trial.number}, \
validation song accuracy {trial.value:.4f}.

Written by melgenre_jax.modes.tune from {origin}, with
BEST_PARAMS applied ('{LR_SCALE}' already multiplies schedule.stage_*_lrs).
Train it with:

  python main.py --config {os.path.join(tune_dir, 'best_config.py')} --workdir runs/best
"""

import ml_collections

BEST_PARAMS = {params}

CONFIG = {literal}


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(CONFIG)
'''


def write_reports(study: optuna.Study, config: ml_collections.ConfigDict, s: Settings,
                  config_path: str | None = None, plot: bool = True) -> dict[str, Any]:
  """Tables, best config and (``plot``) the plot, from the whole study.

  Called after every trial without the plot (matplotlib costs seconds on a
  busy machine), and with it when the search ends or stops.
  """
  os.makedirs(s.tune_dir, exist_ok=True)
  rows = trial_rows(study)
  write_csv(rows, os.path.join(s.tune_dir, 'trials.csv'))
  summary: dict[str, Any] = {'trials': len(rows), 'tune_dir': s.tune_dir,
                             'best_trial': None}
  complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
  header = f'# Trials of study {s.study_name!r}\n\n'
  if complete:
    best = max(complete, key=lambda t: t.value)  # first of equals: the earliest
    best_params = config_values(s.space, best.params)
    path = os.path.join(s.tune_dir, 'best_config.py')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.write(best_config_source(config, best_params, best, s.tune_dir, config_path))
    os.replace(tmp, path)
    header += (f'Best: trial {best.number}, validation song accuracy {best.value:.4f}, '
               f'params {json.dumps(best.params)}\n\nConfig: `{path}`\n\n')
    summary.update(best_trial=best.number, best_value=best.value,
                   best_params=best_params, best_config=path)
  with open(os.path.join(s.tune_dir, 'trials.md'), 'w') as f:
    f.write(header + markdown_table(rows))
  if plot:
    plot_trials(rows, os.path.join(s.tune_dir, 'trials.png'))
  summary['table'] = markdown_table(rows)
  return summary


# ----------------------------------------------------------------------------
# The search.


def _counts(study: optuna.Study) -> dict[str, int]:
  counts = {state.name: 0 for state in TrialState}
  for t in study.get_trials(deepcopy=False):
    counts[t.state.name] += 1
  return counts


def run_search(config: ml_collections.ConfigDict, workdir: str, *,
               train_fn: TrainFn | None = None,
               config_path: str | None = None) -> dict[str, Any]:
  """Runs (or resumes) the search until ``num_trials`` are COMPLETE or PRUNED.

  ``train_fn(config, workdir, on_epoch_end=...)`` defaults to
  ``train.train_and_evaluate``; tests pass a cheap stand-in. Returns a summary
  (best trial, value, params, paths) and writes the reports described in the
  module docstring.
  """
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  s = read_settings(config, workdir)
  extra_check = None
  if train_fn is None:
    import jax  # pylint: disable=g-import-not-at-top
    from melgenre_jax.runtime import parallel  # pylint: disable=g-import-not-at-top
    from melgenre_jax import train  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1:
      raise ValueError(
          '--mode=tune runs one training process per machine; drop --num_processes and '
          'share the study between machines instead (config.tune.storage, see '
          'melgenre_jax/modes/tune.py).')
    train_fn = train.train_and_evaluate
    if s.compile_cache and not jax.config.jax_compilation_cache_dir:
      # Trials mostly differ in constants of the train step only: model init
      # and the eval step then compile once for the whole search.
      jax.config.update('jax_compilation_cache_dir', os.path.join(s.tune_dir, 'jax_cache'))

    def extra_check(c):
      parallel.check_batch_divisible(c.batch_size)
      parallel.check_batch_divisible(c.eval_batch_size, 'config.eval_batch_size')
  check_space(config, s.space, extra_check)
  os.makedirs(s.tune_dir, exist_ok=True)

  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    storage = make_storage(s, lambda study, t: requeue(study, t, s.max_retries))
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
                              sampler=make_sampler(s, s.seed + existing),
                              pruner=make_pruner(s))
    if existing:
      logging.info('Resuming study %r (%s) with %d trials; %s. Searching %s.',
                   s.study_name, s.storage, existing, _counts(study),
                   ', '.join(p.name for p in s.space))

    objective = make_objective(config, s, train_fn)
    from melgenre_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    report = lambda study, trial: write_reports(study, config, s, config_path, plot=False)
    while True:
      recovered = recover_dead_trials(study, s.max_retries)
      if recovered:
        logging.warning('Trials %s were RUNNING in a process of this machine that no '
                        'longer exists: marked FAIL and retried.', recovered)
      fail_stale_trials(study)
      counts = _counts(study)
      finished = counts['COMPLETE'] + counts['PRUNED']
      if finished + counts['RUNNING'] >= s.num_trials:
        break
      if counts['FAIL'] > 2 * s.num_trials:
        logging.error('%d trials failed (NaN losses or crashed processes; see the log '
                      'and %s): stopping the search. Narrow config.tune.space (e.g. '
                      'lower learning rates) and run again.', counts['FAIL'],
                      os.path.join(s.tune_dir, 'trials.md'))
        break
      logging.info('Starting trial %d of %d (%d finished, %d running elsewhere).',
                   finished + counts['RUNNING'] + 1, s.num_trials, finished,
                   counts['RUNNING'])
      try:
        study.optimize(objective, n_trials=1, catch=(train_lib.NonFiniteError,),
                       callbacks=[report])
      except SearchStopped as e:
        requeue(study, study.get_trials(deepcopy=False)[e.trial_number], s.max_retries)
        summary = write_reports(study, config, s, config_path)
        logging.warning('Search stopped by %s during trial %d; run the same command to '
                        'resume it.', e.signal_name, e.trial_number)
        return {**summary, 'stopped': e.signal_name}

  summary = write_reports(study, config, s, config_path)
  counts = _counts(study)
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
  return summary
