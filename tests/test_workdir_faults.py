"""Faults around the workdir: a second owner (the workdir lock) and a full disk.

The lock tests simulate "another process" inside this one where they can: a
flock belongs to an open file description, so a second open + flock of the
lock file conflicts even within one process. The full-disk tests mount a small
tmpfs as the workdir (this needs root); where mounting is not permitted they
inject the same error at the write call instead, so they assert something
either way.
"""

import contextlib
import errno
import fcntl
import gc
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optuna
import pytest

from configs import tiny
from configs import tune_tiny
from melgenre_jax import checkpointing
from melgenre_jax import errors
from melgenre_jax import inference
from melgenre_jax import train
from melgenre_jax.modes.tune import search
from melgenre_jax.runtime import disk
from melgenre_jax.runtime import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER = {'pid': 4242, 'host': 'otherhost', 'mode': 'train',
         'started': '2026-01-02 03:04:05 UTC'}
# Tensorstore's wording (seen under Orbax on a full tmpfs), for the injected errors.
TENSORSTORE_FULL = ('RESOURCE_EXHAUSTED: Error writing local file "{path}": Failed to write '
                    "509 bytes to file 13: No space left on device [os_error_code='28']")


@contextlib.contextmanager
def _other_owner(workdir, owner=None):
  """Holds WORKDIR/.lock through a separate open file, as another process would."""
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(workdir_lock.lock_path(workdir), os.O_RDWR | os.O_CREAT)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps(owner or OTHER).encode())
    yield
  finally:
    os.close(fd)


def _tiny(**overrides):
  config = tiny.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _assert_names_other_owner(message):
  for part in ('pid 4242', 'host otherhost', '2026-01-02 03:04:05', 'another --workdir'):
    assert part in message, message


# ----------------------------------------------------------------------------
# The lock itself.


def test_lock_records_the_owner_is_reentrant_and_is_removed(tmp_path):
  workdir = str(tmp_path / 'run')
  path = workdir_lock.lock_path(workdir)
  with workdir_lock.hold(workdir, 'train'):
    owner = workdir_lock.read_owner(path)
    assert owner['pid'] == os.getpid() and owner['host'] == socket.gethostname()
    assert owner['mode'] == 'train' and owner['started']
    with workdir_lock.hold(workdir, 'train'):  # the same process: no deadlock
      assert os.path.exists(path)
    assert os.path.exists(path)  # only the outermost hold releases
  assert not os.path.exists(path)
  with pytest.raises(KeyError):  # released on an exception too
    with workdir_lock.hold(workdir, 'train'):
      raise KeyError('boom')
  assert not os.path.exists(path)
  with workdir_lock.hold(workdir, 'train'):  # and can be taken again
    pass


def test_live_owner_is_refused_with_its_pid_host_and_start(tmp_path):
  workdir = str(tmp_path)
  with _other_owner(workdir):
    with pytest.raises(errors.WorkdirBusyError) as e:
      with workdir_lock.hold(workdir, 'train'):
        pytest.fail('entered a workdir another process owns')
  _assert_names_other_owner(str(e.value))
  assert isinstance(e.value, errors.UserError)  # main.py: one line, exit status 1


def test_stale_lock_file_without_a_live_owner_does_not_block(tmp_path):
  workdir = str(tmp_path)
  path = workdir_lock.lock_path(workdir)
  with open(path, 'w') as f:  # what a SIGKILLed owner leaves: JSON, no flock
    json.dump({**OTHER, 'pid': 2 ** 22 + 7}, f)
  with workdir_lock.hold(workdir, 'tune'):
    assert workdir_lock.read_owner(path)['pid'] == os.getpid()
  assert not os.path.exists(path)


def test_train_is_refused_before_any_data_or_compile_work(tmp_path):
  workdir = str(tmp_path / 'run')
  with _other_owner(workdir):
    t0 = time.time()
    with pytest.raises(errors.WorkdirBusyError) as e:
      train.train_and_evaluate(_tiny(), workdir)
  _assert_names_other_owner(str(e.value))
  # No cache, config.json or checkpoint was written: only the other owner's lock.
  assert os.listdir(workdir) == [workdir_lock.LOCK_NAME]
  assert time.time() - t0 < 30


# ----------------------------------------------------------------------------
# Multi-host: process 0 locks, the others follow its verdict.


class _FakeCoordination:
  """The coordination service's key-value store, shared by fake processes."""

  def __init__(self):
    self.values = {}

  def key_value_set(self, key, value):
    assert key not in self.values
    self.values[key] = value

  def blocking_key_value_get(self, key, timeout_ms):
    del timeout_ms
    return self.values[key]


def _as_process(monkeypatch, kv, index, count=2):
  monkeypatch.setattr(workdir_lock, '_processes', lambda: (count, index))
  monkeypatch.setattr(workdir_lock, '_kv_client', lambda: kv)
  monkeypatch.setattr(workdir_lock, '_multihost_rounds', [0])


def test_multihost_only_process_0_locks_and_the_others_follow(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  path = workdir_lock.lock_path(workdir)
  kv = _FakeCoordination()
  _as_process(monkeypatch, kv, 0)
  with workdir_lock.hold(workdir, 'train'):
    assert workdir_lock.read_owner(path)['pid'] == os.getpid()
    _as_process(monkeypatch, kv, 1)  # process 1, same run: takes no lock, not refused
    with workdir_lock.hold(workdir, 'train'):
      pass
    assert os.path.exists(path)
    _as_process(monkeypatch, kv, 0)
  assert not os.path.exists(path)

  kv = _FakeCoordination()
  with _other_owner(workdir):
    for index in (0, 1):  # process 0 is refused, then so is process 1
      _as_process(monkeypatch, kv, index)
      with pytest.raises(errors.WorkdirBusyError) as e:
        with workdir_lock.hold(workdir, 'train'):
          pytest.fail('entered')
      _assert_names_other_owner(str(e.value))


_MULTIHOST_SCRIPT = r'''
import json, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from jax._src import distributed
from melgenre_jax.errors import WorkdirBusyError
from melgenre_jax.runtime import workdir_lock
try:
  with workdir_lock.hold(sys.argv[3], 'train'):
    print('HELD', json.dumps(workdir_lock.read_owner(workdir_lock.lock_path(sys.argv[3]))),
          flush=True)
    distributed.global_state.client.wait_at_barrier('held', 120000)
except WorkdirBusyError as e:
  print('BUSY', e, flush=True)
'''


def _run_two_processes(workdir):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT}
  procs = [subprocess.Popen([sys.executable, '-c', _MULTIHOST_SCRIPT, f'127.0.0.1:{port}',
                             str(i), workdir], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return procs, outs


@pytest.mark.slow
def test_multihost_run_locks_once_via_process_0(tmp_path):
  workdir = str(tmp_path)
  procs, outs = _run_two_processes(workdir)
  owners = [json.loads(out.split('HELD ', 1)[1].splitlines()[0]) for out in outs]
  assert owners[0]['pid'] == owners[1]['pid'] == procs[0].pid  # one lock, process 0's
  assert not os.path.exists(workdir_lock.lock_path(workdir))

  with _other_owner(workdir):  # refused: both processes stop, naming the owner
    _, outs = _run_two_processes(workdir)
  for out in outs:
    assert 'BUSY' in out and 'HELD' not in out, out[-3000:]
    _assert_names_other_owner(out)


# ----------------------------------------------------------------------------
# Real processes: a second trainer, a killed owner.


def _main(workdir, *flags):
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '--config',
         os.path.join(ROOT, 'configs', 'tiny.py'), '--workdir', workdir, *flags]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _steps(workdir):
  return checkpointing.complete_steps(workdir)


@pytest.mark.slow
def test_second_trainer_is_refused_and_the_first_finishes(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = ['--config.num_epochs=3', '--config.schedule.stage_ends=(1,3)']
  first = _main(workdir, *flags, '--config.debug.step_delay_seconds=2.0')
  try:
    deadline = time.time() + 300
    while not _steps(workdir):  # mid-run: epoch 1 is checkpointed, 8 steps to go
      assert first.poll() is None, first.stdout.read()[-3000:]
      assert time.time() < deadline, 'no checkpoint in time'
      time.sleep(0.2)
    second = _main(workdir, *flags)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 1, out[-3000:]
    assert 'WorkdirBusyError' in out and 'Traceback' not in out
    assert f'pid {first.pid} on host {socket.gethostname()}' in out, out[-2000:]
    assert first.poll() is None  # refused while the first was still training
    first_out, _ = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert first.returncode == 0, first_out[-3000:]
  assert _steps(workdir)[-1] == 12  # 3 epochs of 4 steps: unaffected
  history = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert [r['epoch'] for r in history] == [1, 2, 3] and history[-1]['step'] == 12
  assert not os.path.exists(workdir_lock.lock_path(workdir))


_HOLDER_SCRIPT = r'''
import sys, time
from melgenre_jax.runtime import workdir_lock
with workdir_lock.hold(sys.argv[1], 'train'):
  print('HELD', flush=True)
  time.sleep(600)
'''


@pytest.mark.slow
def test_lock_of_a_sigkilled_owner_does_not_block(tmp_path):
  workdir = str(tmp_path)
  path = workdir_lock.lock_path(workdir)
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER_SCRIPT, workdir], cwd=ROOT,
                            env={**os.environ, 'PYTHONPATH': ROOT},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    assert holder.stdout.readline().strip() == 'HELD'
    with pytest.raises(errors.WorkdirBusyError, match=f'pid {holder.pid} '):
      with workdir_lock.hold(workdir, 'train'):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
  assert workdir_lock.read_owner(path)['pid'] == holder.pid  # left behind, stale
  with workdir_lock.hold(workdir, 'train'):
    assert workdir_lock.read_owner(path)['pid'] == os.getpid()


# ----------------------------------------------------------------------------
# The search: holds its workdir; trials lock their own folders inside it.


def _score_train(config, workdir, on_epoch_end=None):
  """A stand-in for train.train_and_evaluate that takes the trial's lock as it does."""
  del config
  with workdir_lock.hold(workdir, 'train'):
    row = {'epoch': 1, 'step': 4, 'val_song_accuracy': 0.5}
    if on_epoch_end is not None:
      on_epoch_end(row)
    return {**row, 'best_epoch': 1, 'best_val_song_accuracy': 0.5, 'stopped': None,
            'final_step': 4}


def _search_config(num_trials=1):
  config = tune_tiny.get_config()
  config.tune.num_trials = num_trials
  config.tune.space = ('seed=int:0:1000',)
  return config


def test_search_holds_its_workdir_while_trials_lock_their_folders(tmp_path):
  workdir = str(tmp_path)
  seen = []

  def trial(config, trial_dir, on_epoch_end=None):
    owner = workdir_lock.read_owner(workdir_lock.lock_path(workdir))
    seen.append((owner['pid'], owner['mode']))
    result = _score_train(config, trial_dir, on_epoch_end)
    assert not os.path.exists(workdir_lock.lock_path(trial_dir))  # released by the trial
    return result

  summary = search.run_search(_search_config(2), workdir, train_fn=trial)
  assert summary['best_trial'] is not None
  assert seen == [(os.getpid(), 'tune')] * 2
  assert not os.path.exists(workdir_lock.lock_path(workdir))


def test_search_on_an_owned_workdir_is_refused_before_it_starts(tmp_path):
  workdir = str(tmp_path)
  with _other_owner(workdir):
    with pytest.raises(errors.WorkdirBusyError) as e:
      search.run_search(_search_config(), workdir, train_fn=_score_train)
  _assert_names_other_owner(str(e.value))
  assert not os.path.exists(os.path.join(workdir, 'tune'))


@pytest.mark.slow
def test_real_trial_trains_inside_the_locked_search(tmp_path):
  workdir = str(tmp_path)
  summary = search.run_search(_search_config(), workdir)
  assert summary['best_trial'] == 0
  trial_dir = os.path.join(workdir, 'tune', 'trial_0')
  assert _steps(trial_dir)[-1] == 8  # tune_tiny: 2 epochs of 4 steps
  assert not glob.glob(os.path.join(workdir, '**', workdir_lock.LOCK_NAME), recursive=True)


def test_full_disk_in_a_trial_stops_the_search_and_the_rerun_resumes_it(tmp_path):
  workdir = str(tmp_path)
  calls = []

  def disk_fills(config, trial_dir, on_epoch_end=None):
    calls.append(trial_dir)
    raise checkpointing.disk_full_error(trial_dir, OSError(errno.ENOSPC, 'No space left'))

  with pytest.raises(errors.DiskFullError, match='The disk is full'):
    search.run_search(_search_config(), workdir, train_fn=disk_fills)
  study = optuna.load_study(study_name='melgenre',
                            storage=f'sqlite:///{workdir}/tune/study.db')
  assert [t.state.name for t in study.trials] == ['FAIL', 'WAITING']
  assert study.trials[1].user_attrs['workdir'] == 'trial_0'  # the retry resumes there

  def resumes(config, trial_dir, on_epoch_end=None):
    calls.append(trial_dir)
    return _score_train(config, trial_dir, on_epoch_end)

  search.run_search(_search_config(), workdir, train_fn=resumes)
  assert calls == [os.path.join(workdir, 'tune', 'trial_0')] * 2
  study = optuna.load_study(study_name='melgenre',
                            storage=f'sqlite:///{workdir}/tune/study.db')
  assert [t.state.name for t in study.trials] == ['FAIL', 'COMPLETE']


# ----------------------------------------------------------------------------
# A full disk.


def test_disk_full_is_recognised_in_every_wording():
  assert disk.is_disk_full(OSError(errno.ENOSPC, 'No space left on device'))
  assert disk.is_disk_full(ValueError(TENSORSTORE_FULL.format(path='/x')))
  assert disk.is_disk_full(RuntimeError('(sqlite3.OperationalError) database or '
                                                 'disk is full'))
  try:  # wrapped, as a library re-raising it would
    try:
      raise OSError(errno.ENOSPC, 'No space left on device', '/w/metrics.json')
    except OSError as inner:
      raise RuntimeError('report failed') from inner
  except RuntimeError as outer:
    assert disk.is_disk_full(outer)
    failed = checkpointing._failed_path(outer)  # pylint: disable=protected-access
    assert failed == '/w/metrics.json'
  assert not disk.is_disk_full(OSError(errno.EACCES, 'Permission denied'))
  assert not disk.is_disk_full(ValueError('RESOURCE_EXHAUSTED: out of memory'))


def test_disk_full_message_says_where_what_is_intact_and_what_to_do(tmp_path):
  workdir = str(tmp_path)
  for name in ('4', '8', '12.orbax-checkpoint-tmp'):
    os.makedirs(os.path.join(workdir, 'checkpoints', name))
  failed = os.path.join(workdir, 'checkpoints', '12.orbax-checkpoint-tmp', 'manifest.ocdbt')
  with pytest.raises(errors.DiskFullError) as e:
    with checkpointing.stop_on_full_disk(workdir):
      raise ValueError(TENSORSTORE_FULL.format(path=failed))
  message = str(e.value)
  assert message.startswith('The disk is full: writing ' + failed)
  assert 'MiB free there' in message
  assert 'steps 4, 8 in ' + os.path.join(workdir, 'checkpoints') in message
  assert 'intact' in message and 'run the same command: it resumes from step 8' in message
  assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
  with pytest.raises(errors.DiskFullError, match='No checkpoint had been written yet'):
    with checkpointing.stop_on_full_disk(str(tmp_path / 'empty')):
      raise OSError(errno.ENOSPC, 'No space left on device')
  with pytest.raises(KeyError):  # anything else passes through untouched
    with checkpointing.stop_on_full_disk(workdir):
      raise KeyError('x')


@contextlib.contextmanager
def _small_disk(path, size):
  """``path`` as a tmpfs of ``size`` (True), or a plain folder (False) where not permitted."""
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                           capture_output=True, text=True, check=False).returncode == 0
  try:
    yield mounted
  finally:
    if mounted:
      gc.collect()  # files the failed run left open (event writer, Orbax) close
      if subprocess.run(['umount', path], capture_output=True, check=False).returncode:
        subprocess.run(['umount', '-l', path], capture_output=True, check=False)


class _Item:
  def get_state(self):
    return b'{}'


def test_orbax_save_on_full_disk_surfaces_as_disk_full_error(tmp_path, monkeypatch):
  """Orbax fails in its background thread; the error surfaces from a later save or wait."""
  workdir = str(tmp_path / 'disk')
  with _small_disk(workdir, '600k') as mounted:
    manager = checkpointing.create_manager(workdir, max_to_keep=10)
    if not mounted:  # inject: the third save's write fails as tensorstore reports it
      real_save = manager.save
      def save(step, *args, **kwargs):
        if step == 3:
          raise ValueError(TENSORSTORE_FULL.format(path=f'{workdir}/checkpoints/3'))
        return real_save(step, *args, **kwargs)
      monkeypatch.setattr(manager, 'save', save)
    state = {'w': jax.numpy.asarray(np.arange(40000, dtype=np.float32))}  # 160 KB
    surfaced = []
    with pytest.raises(errors.DiskFullError) as e:
      with checkpointing.stop_on_full_disk(workdir):
        for step in range(1, 20):
          surfaced.append('save')
          checkpointing.save(manager, step, state, _Item(), {}, None)
          surfaced.append('wait')
          manager.wait_until_finished()
    assert surfaced[-1] in ('save', 'wait')
    cause = e.value.__cause__
    print(f'mounted={mounted}: surfaced from {surfaced[-1]} as {type(cause).__name__}: '
          f'{str(cause)[:300]}')
    assert 'No space left on device' in str(cause)
    steps = checkpointing.complete_steps(workdir)
    assert steps and f'resumes from step {steps[-1]}' in str(e.value)
    assert os.path.join(workdir, 'checkpoints') in str(e.value)
    abstract = jax.tree.map(train._abstract, state)  # pylint: disable=protected-access
    restored, _ = checkpointing.restore(manager, steps[-1], abstract)
    np.testing.assert_array_equal(np.asarray(restored['w']), np.asarray(state['w']))
    del manager


@pytest.mark.slow
def test_full_disk_stops_training_with_intact_checkpoints_then_resumes(tmp_path, monkeypatch):
  """The disk fills up after epoch 1's checkpoint: DiskFullError, then free space and resume.

  The disk is filled by a filler file once epoch 1's checkpoint is on disk
  (``on_epoch_end`` runs after it is written), so what fails does not depend
  on how many bytes the run's files happen to take.
  """
  workdir = str(tmp_path / 'disk')
  config = _tiny(**{'num_epochs': 4, 'schedule.stage_ends': (1, 4),
                    'checkpoint.max_to_keep': 10,
                    'data.cache_dir': str(tmp_path / 'cache')})
  filler = os.path.join(workdir, 'filler.bin')

  def fill_the_disk(row):
    if row['epoch'] == 1:
      with open(filler, 'wb') as f:
        f.write(b'\0' * max(0, shutil.disk_usage(workdir).free - (16 << 10)))

  with _small_disk(workdir, '64m') as mounted:
    if not mounted:  # inject: the second checkpoint's write fails
      real_save = checkpointing.save
      def save(manager, step, *args):
        if step > 4:
          raise OSError(errno.ENOSPC, 'No space left on device',
                        os.path.join(workdir, 'checkpoints', str(step)))
        return real_save(manager, step, *args)
      monkeypatch.setattr(checkpointing, 'save', save)
    with pytest.raises(errors.DiskFullError) as e:
      train.train_and_evaluate(config, workdir,
                               on_epoch_end=fill_the_disk if mounted else None)
    message, cause = str(e.value), e.value.__cause__
    print(f'mounted={mounted}: {type(cause).__name__}: {str(cause)[:300]}\n{message}')
    del e
    steps = _steps(workdir)
    assert steps and steps[-1] < 16, steps
    assert message.startswith(('The disk is full: writing ' + workdir,
                               'The disk is full: a write under ' + workdir))
    assert f'resumes from step {steps[-1]}' in message
    assert not os.path.exists(workdir_lock.lock_path(workdir))  # released on the error
    model = inference.load_for_inference(config, workdir, step=steps[-1])
    assert all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree.leaves(model.variables.params))

    if mounted:
      os.remove(filler)  # space freed
    else:
      monkeypatch.setattr(checkpointing, 'save', real_save)
    result = train.train_and_evaluate(config, workdir)  # the same command
    assert result['final_step'] == 16 and not result['stopped']
    assert _steps(workdir)[-1] == 16
    assert not glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*'))  # remains removed
    history = json.load(open(os.path.join(workdir, 'metrics.json')))
    assert [r['epoch'] for r in history] == [1, 2, 3, 4]
