"""Crashes and bad input: exact resumption after SIGKILL/SIGTERM, damaged checkpoints,
the NaN guard, determinism, and refusing a workdir of another model."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
import orbax.checkpoint as ocp

from melgenre_jax import config_checks
from melgenre_jax import errors
from melgenre_jax import inference
from melgenre_jax import train
from melgenre_jax.data import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 3 epochs of 4 steps each on the tiny set; eval each epoch; keep every checkpoint.
OVERRIDES = {'num_epochs': 3, 'schedule.stage_ends': (1, 3), 'checkpoint.max_to_keep': 5}

# Starts processes or trains whole runs: the slow lane (pytest -m slow).
pytestmark = pytest.mark.slow


def _config(**extra):
  config = tiny.get_config()
  for key, value in {**OVERRIDES, **extra}.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _flags(**extra):
  out = []
  for key, value in {**OVERRIDES, **extra}.items():
    if isinstance(value, tuple):
      value = '(' + ','.join(map(str, value)) + ',)'
    out.append(f'--config.{key}={value}')
  return out


def _launch(workdir, *extra_flags, **overrides):
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'),
         '--config', os.path.join(ROOT, 'configs', 'tiny.py'), '--workdir', workdir,
         *_flags(**overrides), *extra_flags]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _steps(workdir):
  return sorted(int(os.path.basename(d)) for d in glob.glob(os.path.join(workdir, 'checkpoints', '*'))
                if os.path.basename(d).isdigit())


def _final_params(workdir):
  """The newest checkpoint's parameters, BatchNorm statistics and optimizer state."""
  steps = _steps(workdir)
  path = os.path.join(workdir, 'checkpoints', str(steps[-1]), 'state')
  saved = ocp.PyTreeCheckpointer().restore(path)
  return steps[-1], jax.tree.map(np.asarray, (saved['params'], saved['batch_stats'],
                                              saved['opt_state']))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  result = train.train_and_evaluate(_config(), workdir)
  return workdir, result


def _assert_identical(a, b):
  (step_a, tree_a), (step_b, tree_b) = a, b
  assert step_a == step_b
  for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    np.testing.assert_array_equal(x, y)


def test_same_seed_same_run(uninterrupted, tmp_path):
  workdir, result = uninterrupted
  again = train.train_and_evaluate(_config(), str(tmp_path))
  assert again['val_loss'] == result['val_loss']
  _assert_identical(_final_params(workdir), _final_params(str(tmp_path)))


def _wait_for_step(proc, workdir, min_step, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      pytest.fail('training ended before it could be interrupted:\n' + proc.stdout.read()[-3000:])
    if any(s >= min_step for s in _steps(workdir)):
      return
    time.sleep(0.2)
  proc.kill()
  pytest.fail('no checkpoint appeared in time')


def test_sigkill_mid_epoch_then_resume_is_bit_identical(uninterrupted, tmp_path):
  reference, _ = uninterrupted
  workdir = str(tmp_path / 'killed')
  # Slow steps so the kill lands inside epoch 2 (after epoch 1's checkpoint at step 4).
  proc = _launch(workdir, **{'debug.step_delay_seconds': 0.5})
  _wait_for_step(proc, workdir, 4)
  time.sleep(0.7)  # one or two steps into epoch 2
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert _steps(workdir)[-1] < 12
  resumed = _launch(workdir)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out[-3000:]
  assert 'Resumed from checkpoint at step' in out
  _assert_identical(_final_params(reference), _final_params(workdir))


def test_sigterm_saves_then_exits_cleanly(uninterrupted, tmp_path):
  reference, _ = uninterrupted
  workdir = str(tmp_path / 'terminated')
  proc = _launch(workdir, **{'debug.step_delay_seconds': 0.5})
  _wait_for_step(proc, workdir, 4)
  time.sleep(0.7)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert 'SIGTERM received' in out and 'run the same command to resume' in out
  # It saved where it stopped (mid-epoch, or at the epoch end it was finishing).
  assert 4 < _steps(workdir)[-1] < 12, _steps(workdir)
  resumed = _launch(workdir)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out[-3000:]
  _assert_identical(_final_params(reference), _final_params(workdir))


def test_damaged_latest_checkpoint_falls_back(uninterrupted, tmp_path, caplog):
  reference, _ = uninterrupted
  workdir = str(tmp_path / 'damaged')
  shutil.copytree(reference, workdir)
  latest = _steps(workdir)[-1]
  for path in glob.glob(os.path.join(workdir, 'checkpoints', str(latest), 'state', '**', '*'),
                        recursive=True):
    if os.path.isfile(path):
      with open(path, 'r+b') as f:
        f.truncate(max(0, os.path.getsize(path) // 3))
  result = train.train_and_evaluate(_config(), workdir)
  # Fell back to the previous epoch's checkpoint, retrained the last epoch
  # (deterministically, so it ends where the reference did) and kept the damaged one.
  assert result['final_step'] == latest
  assert glob.glob(os.path.join(workdir, 'checkpoints_damaged', f'{latest}.*'))
  _assert_identical(_final_params(reference), _final_params(workdir))


class _PoisonedIterator:
  """The loader's iterator, with NaN inputs in batch number ``at`` (0-based)."""

  def __init__(self, iterator, at):
    self._iterator, self._at, self._count = iterator, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._iterator)
    if self._count == self._at:
      batch = {**batch, 'inputs': np.full_like(batch['inputs'], np.nan)}
    self._count += 1
    return batch

  def get_state(self):
    return self._iterator.get_state()


def test_nan_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  real = input_pipeline.create_train_loader

  class _Loader:
    def __init__(self, loader):
      self._loader = loader

    def __iter__(self):
      return _PoisonedIterator(iter(self._loader), at=5)

  monkeypatch.setattr(input_pipeline, 'create_train_loader',
                      lambda *a, **k: _Loader(real(*a, **k)))
  # Metrics are fetched only at epoch end (4 steps an epoch): the guard must
  # still name the step and save nothing after epoch 1.
  with pytest.raises(errors.NonFiniteError, match='step 5'):
    train.train_and_evaluate(_config(log_every_steps=1000), workdir)
  assert _steps(workdir) == [4]  # epoch 1's checkpoint, nothing poisoned saved
  model = inference.load_for_inference(_config(), workdir, step=4)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(model.variables.params))


def test_workdir_of_another_model_is_refused(uninterrupted):
  workdir, _ = uninterrupted
  with pytest.raises(config_checks.ConfigError, match=r'model.conv_features: workdir has 4, config has 8'):
    train.train_and_evaluate(_config(**{'model.conv_features': 8}), workdir)
