"""Commands print what matters (#34 item 5): no library noise, no "uncalibrated" before calibrating.

Known-harmless lines are dropped at their source (JAX's TPU probe on a machine
without one, Orbax's "read_only=True, setting ..." on every read-only open);
the first XLA compilation says what it is doing instead of a silent pause.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import soundfile as sf

from configs import tiny
from melgenre_jax import checkpointing
from melgenre_jax import train
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import synthetic
from melgenre_jax.modes import dispatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NOISE = ("Unable to initialize backend 'tpu'", 'read_only=True', 'read only', 'uncalibrated')


def _main(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env.pop('JAX_PLATFORMS', None)  # as a user runs it: JAX probes for a TPU first
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_eval_and_predict_stderr_has_no_library_noise(tiny_run, tmp_path):
  song = str(tmp_path / 'song.wav')
  sf.write(song, synthetic.synthesize_song('synthetic/blues/0100', 8000, 2.0), 8000)
  for args in (('--mode', 'eval'), ('--mode', 'predict', song)):
    proc = _main('--workdir', tiny_run, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noisy = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy
    assert 'Compiling the prediction step for 2 device(s)' in proc.stderr, proc.stderr[-3000:]


def test_the_probe_filter_drops_only_the_tpu_line():
  def record(message: str) -> logging.LogRecord:
    return logging.LogRecord('jax._src.xla_bridge', logging.INFO, 'xla_bridge.py', 1, message,
                             None, None)
  drop = dispatch._DropTpuProbe()  # pylint: disable=protected-access
  assert not drop.filter(record("Unable to initialize backend 'tpu': INTERNAL: no libtpu.so"))
  assert drop.filter(record("Unable to initialize backend 'cuda': CUDA_ERROR_NO_DEVICE"))
  assert drop.filter(record('An NVIDIA GPU may be present on this machine, but ...'))


def test_a_read_only_manager_gets_no_option_warnings(tmp_path, caplog):
  (tmp_path / 'checkpoints').mkdir()
  with caplog.at_level(logging.INFO):
    checkpointing.create_manager(str(tmp_path), read_only=True).close()
  said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert not said, said


def _messages(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records]


def test_training_says_it_compiles_and_calibrates_without_calling_itself_uncalibrated(
    tiny_run_dir, tmp_path, caplog):
  workdir = shutil.copytree(tiny_run_dir, str(tmp_path / 'run'))
  os.remove(workdir_lib.path(workdir, workdir_lib.CALIBRATION))
  train.train_and_evaluate(tiny.get_config(), workdir)  # a rerun: compiles, then calibrates
  said = _messages(caplog)
  compiling = [i for i, m in enumerate(said) if m.startswith('Compiling the model for 2 device(s)')]
  ready = [i for i, m in enumerate(said) if 'compiled and set up in' in m]
  assert len(compiling) == 1 and len(ready) == 1 and compiling[0] < ready[0], said
  assert any(m.startswith('Calibrated step') for m in said), said
  assert not [m for m in said if 'uncalibrated' in m]


def test_calibrate_mode_does_not_call_the_model_uncalibrated_first(tiny_run_dir, tmp_path,
                                                                   caplog, capsys):
  workdir = shutil.copytree(tiny_run_dir, str(tmp_path / 'run'))
  os.remove(workdir_lib.path(workdir, workdir_lib.CALIBRATION))
  dispatch.run('calibrate', None, workdir, dispatch.RunOptions())
  assert 'temperature' in capsys.readouterr().out
  assert not [m for m in _messages(caplog) if 'uncalibrated' in m]
