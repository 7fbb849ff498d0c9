"""Hyperparameter search: space parsing, trial bookkeeping, resume after a kill.

Most tests drive ``run_search`` with ``fake_train``, a seconds-free stand-in
with the same contract as ``train.train_and_evaluate`` (resumes from its
workdir, calls ``on_epoch_end`` per epoch, returns the best score), so the
Optuna logic (pruning, failures, retries, reports) is checked quickly. One
end-to-end test runs ``main.py --mode tune`` on tiny models, SIGKILLs it in
the middle of a trial and resumes it.
"""

import contextlib
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings

import ml_collections
import numpy as np
import optuna
import pytest

from configs import tune_tiny
from melgenre_jax import config_checks
from melgenre_jax import train
from melgenre_jax.modes.tune import search
from melgenre_jax.modes.tune import space
from melgenre_jax.modes.tune import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# The space.


@pytest.mark.parametrize('entry,kind,extremes', [
    ('model.dropout=uniform:0.0:0.5', 'uniform', [0.0, 0.5]),
    (' optim.l2 = loguniform:1e-6:1e-2', 'loguniform', [1e-6, 1e-2]),
    ('batch_size=int:8:32:8', 'int', [8, 32]),
    ('model.num_blocks=logint:1:4', 'logint', [1, 4]),
    ('model.lstm_sizes=choice:(64,16)|(128,32)', 'choice', [(64, 16), (128, 32)]),
    ('features.mel_norm=choice:slaney|none', 'choice', ['slaney', 'none']),
])
def test_parse_param_kinds(entry, kind, extremes):
  p = space.parse_param(entry)
  assert p.kind == kind
  assert p.extremes() == extremes


@pytest.mark.parametrize('entry,message', [
    ('model.dropout', 'missing "="'),
    ('model.dropout=gauss:0:1', "unknown kind 'gauss'"),
    ('model.dropout=uniform:0.5:0.1', 'LOW < HIGH'),
    ('optim.l2=loguniform:0:1', 'LOW > 0'),
    ('batch_size=int:8:a', 'must be integers'),
    ('batch_size=int:8:32:0', 'STEP must be > 0'),
    ('batch_size=choice:', 'non-empty'),
    ('batch_size=choice:8|8', 'repeat'),
])
def test_parse_param_errors_name_the_entry(entry, message):
  with pytest.raises(config_checks.ConfigError, match='config.tune.space') as e:
    space.parse_param(entry)
  assert message in str(e.value)


def test_parse_space_rejects_empty_and_repeated():
  with pytest.raises(config_checks.ConfigError, match='empty'):
    space.parse_space(())
  with pytest.raises(config_checks.ConfigError, match='more than once'):
    space.parse_space(('model.dropout=uniform:0:0.1', 'model.dropout=uniform:0:0.2'))


def test_apply_params_scales_every_stage_and_sets_fields():
  config = tune_tiny.get_config()
  out = space.apply_params(config, {'lr_scale': 2.0, 'model.dropout': 0.25,
                                    'model.lstm_sizes': (16, 8), 'batch_size': 4})
  np.testing.assert_allclose(out.schedule.stage_start_lrs,
                             2 * np.asarray(config.schedule.stage_start_lrs))
  np.testing.assert_allclose(out.schedule.stage_end_lrs,
                             2 * np.asarray(config.schedule.stage_end_lrs))
  assert (out.model.dropout, out.model.lstm_sizes, out.batch_size) == (0.25, (16, 8), 4)
  assert config.model.dropout != 0.25  # the input is not modified
  # An int for a float field is fine (choice:0|0.5 gives an int 0).
  assert isinstance(space.apply_params(config, {'model.dropout': 0}).model.dropout, float)


@pytest.mark.parametrize('entry,message', [
    ('model.dropout=uniform:0.0:1.5', 'config.model.dropout=1.5 is invalid'),
    ('model.nope=uniform:0:1', 'config.model.nope is not a field'),
    ('model=choice:1|2', 'config.model is a section'),
    ('nope.x=uniform:0:1', 'config.nope is not a section'),
    ('batch_size=uniform:8:64', 'use int:LOW:HIGH'),
    ('model.lstm_sizes=choice:16|32', 'config.model.lstm_sizes is tuple'),
])
def test_check_space_rejects_bad_fields_and_values_before_training(entry, message):
  config = tune_tiny.get_config()
  with pytest.raises(config_checks.ConfigError) as e:
    search.check_space(config, space.parse_space((entry,)))
  assert message in str(e.value)


def test_default_space_is_valid():
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  search.check_space(config, study_lib.read_settings(config, '/tmp/unused').space)


def test_settings_reject_unknown_pruner_and_default_to_sqlite(tmp_path):
  config = tune_tiny.get_config()
  s = study_lib.read_settings(config, str(tmp_path))
  assert s.storage == 'sqlite:///' + str(tmp_path / 'tune' / 'study.db')
  config.tune.pruner = 'hyperband'
  with pytest.raises(config_checks.ConfigError, match='median, halving, none'):
    study_lib.read_settings(config, str(tmp_path))
  config = tune_tiny.get_config()
  config.data.validation_fraction = 0.0
  with pytest.raises(config_checks.ConfigError, match='trial is scored on validation songs'):
    study_lib.read_settings(config, str(tmp_path))


# ----------------------------------------------------------------------------
# The search, with a fast stand-in for training.


def fake_train(config, workdir, on_epoch_end=None):
  """Same contract as train.train_and_evaluate, no model.

  Accuracy grows with the epoch and falls with dropout; l2 > 5e-3 "diverges";
  a file STOP in the workdir's parent makes it stop as on SIGTERM. Progress is
  kept in the workdir, so a re-run resumes instead of restarting.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'progress.json')
  history = json.load(open(path)) if os.path.exists(path) else []
  calls = os.path.join(workdir, 'calls')
  with open(calls, 'a') as f:
    f.write(f'{len(history)}\n')
  if config.optim.l2 > 5e-3:
    raise train.NonFiniteError('loss is NaN')
  for epoch in range(len(history) + 1, config.num_epochs + 1):
    if os.path.exists(os.path.join(os.path.dirname(workdir), 'STOP')):
      os.remove(os.path.join(os.path.dirname(workdir), 'STOP'))
      return {**(history[-1] if history else {}), 'stopped': 'SIGTERM'}
    acc = (1.0 - config.model.dropout) * epoch / config.num_epochs
    row = {'epoch': epoch, 'step': 4 * epoch, 'train_loss': 1.0 - acc,
           'val_song_accuracy': acc, 'val_segment_accuracy': acc}
    history.append(row)
    with open(path, 'w') as f:
      json.dump(history, f)
    if on_epoch_end is not None:
      on_epoch_end(row)
  best = max(history, key=lambda r: r['val_song_accuracy'])
  return {**history[-1], 'best_epoch': best['epoch'],
          'best_val_song_accuracy': best['val_song_accuracy'], 'stopped': None,
          'final_step': history[-1]['step']}


def _fake_config(num_trials=4):
  config = tune_tiny.get_config()
  config.num_epochs = 4
  config.schedule.stage_ends = (2, 4)
  config.tune.num_trials = num_trials
  config.tune.min_epochs = 1
  config.tune.pruner_startup_trials = 2
  return config


def _study(workdir):
  return optuna.load_study(study_name='melgenre',
                           storage=f'sqlite:///{workdir}/tune/study.db')


def _enqueue(workdir, *params):
  os.makedirs(os.path.join(workdir, 'tune'), exist_ok=True)
  study = optuna.create_study(study_name='melgenre', direction='maximize',
                              storage=f'sqlite:///{workdir}/tune/study.db')
  for p in params:
    study.enqueue_trial({'model.dropout': p[0], 'optim.l2': p[1], 'lr_scale': 1.0})
  return study


def _states(study):
  return [t.state.name for t in study.get_trials()]


def test_search_prunes_fails_and_reports(tmp_path):
  workdir = str(tmp_path)
  # good, good, diverging, bad (pruned at epoch 1 below the median), then sampled.
  _enqueue(workdir, (0.0, 1e-5), (0.1, 1e-5), (0.1, 0.009), (0.45, 1e-5))
  config = _fake_config(num_trials=4)
  summary = search.run_search(config, workdir, train_fn=fake_train)

  study = _study(workdir)
  assert _states(study)[:4] == ['COMPLETE', 'COMPLETE', 'FAIL', 'PRUNED']
  assert sum(s in ('COMPLETE', 'PRUNED') for s in _states(study)) == 4
  pruned = study.trials[3]
  assert pruned.user_attrs['epochs'] == 1 and list(pruned.intermediate_values) == [1]
  assert study.trials[0].value == 1.0  # best over epochs, not the last
  assert study.trials[0].intermediate_values == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}

  tune_dir = os.path.join(workdir, 'tune')
  assert summary['best_trial'] == 0 and summary['best_value'] == 1.0
  for name in ('trials.csv', 'trials.md', 'trials.png', 'best_config.py', 'study.db'):
    assert os.path.exists(os.path.join(tune_dir, name)), name
  import csv  # pylint: disable=import-outside-toplevel
  rows = list(csv.DictReader(open(os.path.join(tune_dir, 'trials.csv'))))
  assert [r['state'] for r in rows] == _states(study)
  assert rows[3]['epochs'] == '1' and rows[0]['epochs'] == '4'
  assert set(rows[0]) >= {'number', 'state', 'score', 'epochs', 'model.dropout',
                          'optim.l2', 'lr_scale'}
  assert '| 3 | PRUNED |' in open(os.path.join(tune_dir, 'trials.md')).read()
  assert os.path.isdir(os.path.join(tune_dir, 'trial_0'))

  # Re-running a finished search trains nothing; asking for more runs only those.
  def must_not_train(*args, **kwargs):
    raise AssertionError('a finished search trained again')

  n = len(study.trials)
  assert search.run_search(config, workdir, train_fn=must_not_train)['best_trial'] == 0
  assert len(_study(workdir).trials) == n
  search.run_search(_fake_config(num_trials=5), workdir, train_fn=fake_train)
  states = _states(_study(workdir))
  assert len(states) == n + 1 and states[-1] in ('COMPLETE', 'PRUNED')


def test_search_gives_up_when_every_trial_diverges(tmp_path):
  config = _fake_config(num_trials=1)
  config.tune.space = ('optim.l2=loguniform:6e-3:9e-3',)  # fake_train: NaN above 5e-3
  summary = search.run_search(config, str(tmp_path), train_fn=fake_train)
  assert _states(_study(str(tmp_path))) == ['FAIL'] * 3
  assert summary['best_trial'] is None
  assert not os.path.exists(os.path.join(str(tmp_path), 'tune', 'best_config.py'))


def _load_best_config(path):
  spec = importlib.util.spec_from_file_location('best_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_best_config_is_the_search_config_with_the_best_params(tmp_path):
  workdir = str(tmp_path)
  _enqueue(workdir, (0.3, 1e-5), (0.05, 2e-4))
  config = _fake_config(num_trials=2)
  config.seed = 7  # stands for a command-line override: it must survive
  summary = search.run_search(config, workdir, train_fn=fake_train)
  assert summary['best_trial'] == 1
  best = _load_best_config(summary['best_config'])
  assert isinstance(best, ml_collections.ConfigDict)
  expected = space.apply_params(config, {'model.dropout': 0.05, 'optim.l2': 2e-4,
                                         'lr_scale': 1.0})
  assert best.to_dict() == expected.to_dict()
  assert best.seed == 7 and isinstance(best.model.lstm_sizes, tuple)
  config_checks.validate(best)


@pytest.mark.slow
def test_trial_of_a_dead_process_is_failed_and_resumed_in_its_directory(tmp_path):
  workdir = str(tmp_path)
  study = _enqueue(workdir, (0.2, 1e-4))
  # A trial RUNNING on this machine under a process that has exited, with two
  # epochs trained and reported (as a SIGKILL mid-trial leaves it).
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  trial = study.ask()
  config = _fake_config(num_trials=2)
  for param in study_lib.read_settings(config, workdir).space:
    param.suggest(trial)  # takes the enqueued values
  trial.set_user_attr('workdir', 'trial_0')
  trial.set_user_attr('machine', study_lib.machine_id())
  trial.set_user_attr('pid', dead.pid)
  trial_dir = os.path.join(workdir, 'tune', 'trial_0')
  applied = space.apply_params(config, {'model.dropout': 0.2, 'optim.l2': 1e-4,
                                        'lr_scale': 1.0})
  fake_train(applied, trial_dir, on_epoch_end=lambda r: trial.report(
      r['val_song_accuracy'], r['epoch']) if r['epoch'] <= 2 else None)
  with open(os.path.join(trial_dir, 'progress.json')) as f:  # "killed" after epoch 2
    history = json.load(f)[:2]
  with open(os.path.join(trial_dir, 'progress.json'), 'w') as f:
    json.dump(history, f)
  os.remove(os.path.join(trial_dir, 'calls'))

  search.run_search(config, workdir, train_fn=fake_train)
  study = _study(workdir)
  t0, t1 = study.trials[:2]
  assert t0.state.name == 'FAIL'
  assert t1.state.name == 'COMPLETE' and t1.user_attrs['retry_of'] == 0
  assert t1.params == t0.params and t1.user_attrs['workdir'] == 'trial_0'
  assert t1.intermediate_values == pytest.approx({1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8})
  assert t1.value == pytest.approx(0.8)
  # It resumed after epoch 2 rather than starting over.
  assert open(os.path.join(trial_dir, 'calls')).read().split() == ['2']
  assert _states(study).count('COMPLETE') + _states(study).count('PRUNED') == 2


def test_trial_of_a_live_process_is_left_alone(tmp_path):
  study = _enqueue(str(tmp_path), (0.2, 1e-4))
  trial = study.ask()
  trial.set_user_attr('machine', study_lib.machine_id())
  trial.set_user_attr('pid', os.getppid())  # alive
  assert study_lib.recover_dead_trials(study, max_retries=2) == []
  trial.set_user_attr('machine', 'elsewhere/boot')  # another machine: heartbeat's job
  trial.set_user_attr('pid', 2 ** 22 + 12345)
  assert study_lib.recover_dead_trials(study, max_retries=2) == []
  assert study.trials[0].state.name == 'RUNNING'


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:Heartbeat of storage')  # study.ask() outside optimize
def test_silent_trial_of_another_machine_is_retried_via_heartbeat(tmp_path):
  workdir = str(tmp_path)
  _enqueue(workdir, (0.2, 1e-4))
  config = _fake_config(num_trials=1)
  config.tune.heartbeat_seconds = 1  # stale after 2 s without a heartbeat
  s = study_lib.read_settings(config, workdir)
  storage = study_lib.make_storage(s, on_stale=None)
  study = optuna.load_study(study_name='melgenre', storage=storage)
  trial = study.ask()
  for param in s.space:
    param.suggest(trial)
  trial.set_user_attr('machine', 'elsewhere/boot')  # not ours: no pid check
  trial.set_user_attr('pid', 1)
  trial.set_user_attr('workdir', 'trial_0')
  storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access
  # SQLite's now() has whole seconds and Optuna wants "> 2 s": after 2.5 s the
  # truncated gap can still read 2 (it failed CI that way); 3.5 s reads >= 3.
  time.sleep(3.5)
  search.run_search(config, workdir, train_fn=fake_train)
  study = _study(workdir)
  assert _states(study) == ['FAIL', 'COMPLETE']
  assert study.trials[1].user_attrs['retry_of'] == 0
  assert study.trials[1].params == study.trials[0].params


def _fail_running(study):
  """Runs the next trial (a retry, if one waits) and fails it as a dead process would."""
  trial = study.ask()
  trial.set_user_attr('machine', study_lib.machine_id())
  trial.set_user_attr('pid', 2 ** 22 + 12345)
  study.tell(trial, state=optuna.trial.TrialState.FAIL)
  return study.trials[trial.number]


def test_retry_has_the_dead_trials_params_values_and_directory(tmp_path):
  study = _enqueue(str(tmp_path), (0.2, 1e-4))
  trial = study.ask()
  for param in study_lib.read_settings(_fake_config(), str(tmp_path)).space:
    param.suggest(trial)
  trial.set_user_attr('workdir', 'trial_0')
  trial.set_user_attr('epochs', 2)
  trial.set_user_attr('machine', study_lib.machine_id())
  trial.set_user_attr('pid', 2 ** 22 + 12345)
  trial.report(0.25, 1)
  trial.report(0.5, 2)
  study.tell(trial, state=optuna.trial.TrialState.FAIL)
  assert study_lib.retry_trial(study, study.trials[0], max_retries=2)
  dead, retry = study.trials
  assert retry.state.name == 'WAITING' and retry.params == dead.params
  assert retry.intermediate_values == {1: 0.25, 2: 0.5}
  assert retry.user_attrs == {'workdir': 'trial_0', 'epochs': 2, 'retry_of': 0}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0


def test_max_retries_bounds_the_retries_of_a_trial(tmp_path):
  study = _enqueue(str(tmp_path), (0.2, 1e-4))
  dead = _fail_running(study)
  for retry_number in (1, 2):  # the trial, then its retry, die: both retried
    assert study_lib.retry_trial(study, dead, max_retries=2)
    dead = _fail_running(study)
    assert dead.number == retry_number and dead.user_attrs['retry_of'] == retry_number - 1
  assert not study_lib.retry_trial(study, dead, max_retries=2)  # a third retry: no
  assert _states(study) == ['FAIL'] * 3
  assert not study_lib.retry_trial(study, study.trials[0], max_retries=0)
  assert len(study.trials) == 3


def test_sigterm_stops_the_search_and_the_rerun_resumes_the_trial(tmp_path):
  workdir = str(tmp_path)
  _enqueue(workdir, (0.0, 1e-5), (0.1, 1e-5))
  os.makedirs(os.path.join(workdir, 'tune'), exist_ok=True)
  config = _fake_config(num_trials=2)
  config.tune.pruner = 'none'
  calls = []

  def stop_in_second_trial(cfg, trial_dir, on_epoch_end=None):
    calls.append(trial_dir)
    if len(calls) == 2:
      open(os.path.join(os.path.dirname(trial_dir), 'STOP'), 'w').close()
    return fake_train(cfg, trial_dir, on_epoch_end)

  summary = search.run_search(config, workdir, train_fn=stop_in_second_trial)
  assert summary['stopped'] == 'SIGTERM'
  assert _states(_study(workdir)) == ['COMPLETE', 'FAIL', 'WAITING']
  search.run_search(config, workdir, train_fn=fake_train)
  study = _study(workdir)
  assert _states(study) == ['COMPLETE', 'FAIL', 'COMPLETE']
  assert study.trials[2].user_attrs['workdir'] == 'trial_1'
  assert study.trials[2].params == study.trials[1].params


# ----------------------------------------------------------------------------
# End to end: main.py, real tiny training, SIGKILL in the middle, resume.


def _study_created(path: str) -> bool:
  """True once main.py has made the study (read-only: never races its set-up)."""
  if not os.path.exists(path):
    return False
  try:
    with contextlib.closing(sqlite3.connect(f'file:{path}?mode=ro', uri=True)) as db:
      return db.execute("SELECT count(*) FROM studies WHERE study_name = 'melgenre'"
                        ).fetchone()[0] > 0
  except sqlite3.Error:
    return False


def _poll(study_db: str, proc: subprocess.Popen, done, timeout: float):
  """Waits until ``done(study)``; fails with the log if the process exits first."""
  deadline = time.time() + timeout
  study = None
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f'main.py exited ({proc.returncode}) early:\n'
                  + proc.stdout.read()[-4000:])
    if study is None and _study_created(study_db):
      study = optuna.load_study(study_name='melgenre', storage=f'sqlite:///{study_db}')
    if study is not None and done(study):
      return study
    time.sleep(0.3)
  pytest.fail('timed out waiting for the search')


def _killable(workdir):
  """A RUNNING trial (not the first) with an epoch reported and checkpointed."""
  def check(study):
    for t in study.get_trials(deepcopy=False):
      ckpts = os.path.join(workdir, 'tune', t.user_attrs.get('workdir', '-'), 'checkpoints')
      if (t.number >= 1 and t.state.name == 'RUNNING' and t.intermediate_values
          and os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts))):
        return t.number
    return None
  return check


@pytest.mark.slow
def test_main_tune_survives_sigkill_and_resumes(tmp_path):
  """main.py --mode tune, SIGKILLed mid-trial, then the same command again.

  The space is overridden on the command line (which this also tests) with the
  run's seed: it changes no compiled program, so every trial reuses the XLA
  compilations (of this test suite's cache); searching dropout/l2/lr_scale
  costs a ~1 min CPU compile per trial. A step delay keeps the trial running
  long enough to be killed mid-way; pruning waits for the last epoch for the
  same reason.
  """
  workdir = str(tmp_path / 'search')
  db = os.path.join(workdir, 'tune', 'study.db')
  cmd = [sys.executable, 'main.py', '--config', 'configs/tune_tiny.py',
         '--workdir', workdir, '--mode', 'tune',
         "--config.tune.space=('seed=int:0:1000',)",
         '--config.tune.min_epochs=2', '--config.debug.step_delay_seconds=1.0']
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    _poll(db, proc, lambda s: _killable(workdir)(s) is not None, timeout=900)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
  study = optuna.load_study(study_name='melgenre', storage=f'sqlite:///{db}')
  killed = _killable(workdir)(study)
  assert killed is not None, [t.state.name for t in study.trials]
  assert study.trials[0].state.name in ('COMPLETE', 'PRUNED')
  killed_trial = study.trials[killed]
  killed_dir = os.path.join(workdir, 'tune', killed_trial.user_attrs['workdir'])
  epoch1 = json.load(open(os.path.join(killed_dir, 'metrics.json')))[0]

  out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-4000:]
  study = optuna.load_study(study_name='melgenre', storage=f'sqlite:///{db}')
  states = [t.state.name for t in study.trials]
  assert states[killed] == 'FAIL'
  assert sum(s in ('COMPLETE', 'PRUNED') for s in states) == 3, states
  assert 'RUNNING' not in states and 'WAITING' not in states
  retry, = [t for t in study.trials if t.user_attrs.get('retry_of') == killed]
  assert retry.state.name in ('COMPLETE', 'PRUNED')
  assert retry.params == killed_trial.params
  assert retry.user_attrs['workdir'] == killed_trial.user_attrs['workdir']
  assert retry.intermediate_values[1] == killed_trial.intermediate_values[1]
  history = json.load(open(os.path.join(killed_dir, 'metrics.json')))
  assert [r['epoch'] for r in history] == [1, 2]
  assert history[0] == epoch1  # epoch 1 restored from its checkpoint, not retrained
  for t in study.trials:  # each trial trained with its sampled value
    trained = json.load(open(os.path.join(workdir, 'tune', t.user_attrs['workdir'],
                                          'config.json')))
    assert trained['seed'] == t.params['seed']

  tune_dir = os.path.join(workdir, 'tune')
  table = open(os.path.join(tune_dir, 'trials.md')).read()
  assert f'| {killed} | FAIL |' in table
  assert '| number | state | score | epochs | seed |' in out.stdout  # printed table
  assert os.path.getsize(os.path.join(tune_dir, 'trials.png')) > 0
  # best_config.py is the config its trial trained with (the trial only moved
  # the audio cache into the search's folder), so it trains the same way.
  best = study.best_trial
  config = _load_best_config(os.path.join(tune_dir, 'best_config.py'))
  trained = json.load(open(os.path.join(tune_dir, best.user_attrs['workdir'],
                                        'config.json')))
  assert trained['data']['cache_dir'] == os.path.join(tune_dir, 'cache')
  trained['data']['cache_dir'] = ''
  assert json.loads(config.to_json()) == trained
