"""Two processes on localhost (jax.distributed, CPU collectives, one device each)
train exactly as one process with two devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from melgenre_jax import inference
from melgenre_jax.data import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ['--config.num_epochs=1', '--config.schedule.stage_ends=(1,)',
             '--config.schedule.stage_start_lrs=(0.001,)',
             '--config.schedule.stage_end_lrs=(0.001,)', '--config.debug.max_steps=3']

# Starts processes or trains whole runs: the slow lane (pytest -m slow).
pytestmark = pytest.mark.slow


def _cmd(workdir, cache_dir, *extra):
  return [sys.executable, os.path.join(ROOT, 'main.py'), '--config',
          os.path.join(ROOT, 'configs', 'tiny.py'), '--workdir', workdir,
          f'--config.data.cache_dir={cache_dir}', *OVERRIDES, *extra]


def _env(devices):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _params(workdir):
  config = tiny.get_config()
  model = inference.load_for_inference(config, workdir, step=3)
  return jax.tree.map(np.asarray, (model.variables.params, model.variables.batch_stats))


def test_two_processes_match_one_process_with_two_devices(tmp_path):
  cache = str(tmp_path / 'cache')
  config = tiny.get_config()
  config.data.cache_dir = cache
  input_pipeline.load_dataset(config, str(tmp_path / 'prep'))  # build the cache once

  single = subprocess.run(_cmd(str(tmp_path / 'single'), cache), env=_env(2), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-3000:]

  port = _free_port()
  multi_dir = str(tmp_path / 'multi')
  procs = [subprocess.Popen(
      _cmd(multi_dir, cache, f'--coordinator_address=127.0.0.1:{port}',
           '--num_processes=2', f'--process_id={i}'),
      env=_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert 'process 1 of 2' in outs[1] or 'process 1 of 2' in outs[0]

  a, b = _params(str(tmp_path / 'single')), _params(multi_dir)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
