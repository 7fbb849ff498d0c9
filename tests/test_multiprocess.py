"""Two processes on localhost (jax.distributed, CPU collectives, one device each)
train exactly as one process with two devices; when one dies, the other stops
within --peer_timeout_seconds, naming it, and both resume when started again."""

import glob
import os
import signal
import socket
import subprocess
import sys
import time

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


# ----------------------------------------------------------------------------
# A dead peer.

PEER_TIMEOUT = 10  # --peer_timeout_seconds for these runs
# Two epochs of 4 steps, slowed so that a kill lands mid-run.
DEAD_PEER_OVERRIDES = ['--config.debug.step_delay_seconds=1.0']


def _start_pair(workdir, cache, logs, *extra):
  """Both processes of a two-process run, their output going to ``logs/p{i}.log``."""
  port = _free_port()
  procs = []
  for i in range(2):
    cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '--config',
           os.path.join(ROOT, 'configs', 'tiny.py'), '--workdir', workdir,
           f'--config.data.cache_dir={cache}', *DEAD_PEER_OVERRIDES,
           f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
           f'--process_id={i}', f'--peer_timeout_seconds={PEER_TIMEOUT}', *extra]
    with open(os.path.join(logs, f'p{i}.log'), 'w') as out:
      procs.append(subprocess.Popen(cmd, env=_env(1), cwd=ROOT, stdout=out,
                                    stderr=subprocess.STDOUT))
  return procs


def _log(logs, i):
  with open(os.path.join(logs, f'p{i}.log')) as f:
    return f.read()


def _wait_until(condition, procs, what, timeout=300):
  t0 = time.time()
  while not condition():
    if time.time() - t0 > timeout or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
        p.wait()
      pytest.fail(f'{what} did not happen')
    time.sleep(0.05)


def _kill_and_time_survivor(procs, victim):
  """SIGKILLs ``procs[victim]``; returns the survivor's exit code and seconds to exit."""
  procs[victim].send_signal(signal.SIGKILL)
  procs[victim].wait()
  t0 = time.time()
  survivor = procs[1 - victim]
  try:
    code = survivor.wait(timeout=PEER_TIMEOUT + 60)
  except subprocess.TimeoutExpired:
    survivor.kill()
    survivor.wait()
    pytest.fail(f'the survivor still ran {PEER_TIMEOUT + 60} s after its peer died')
  return code, time.time() - t0


def _prepared_cache(tmp_path):
  cache = str(tmp_path / 'cache')
  config = tiny.get_config()
  config.data.cache_dir = cache
  input_pipeline.load_dataset(config, str(tmp_path / 'prep'))  # both processes reuse it
  return cache


def _steps(workdir):
  return sorted(int(os.path.basename(d)) for d in glob.glob(os.path.join(workdir, 'checkpoints', '*'))
                if os.path.basename(d).isdigit())


def test_dead_peer_mid_training_stops_the_survivor_then_both_resume(tmp_path):
  cache, workdir = _prepared_cache(tmp_path), str(tmp_path / 'run')
  logs = str(tmp_path / 'killed')
  os.makedirs(logs)
  procs = _start_pair(workdir, cache, logs)
  _wait_until(lambda: 4 in _steps(workdir), procs, 'the first checkpoint (step 4)')
  time.sleep(1.0)  # a step or two into epoch 2
  code, seconds = _kill_and_time_survivor(procs, victim=1)
  out = _log(logs, 0)
  # The collective with the dead process fails at once; PeerWatch is the bound.
  assert seconds < PEER_TIMEOUT + 15, (seconds, out[-3000:])
  assert code == 1, out[-3000:]
  assert 'PeerLostError: process 1 of 2 stopped answering' in out, out[-3000:]
  assert 'Traceback' not in out and 'Fatal Python error' not in out, out[-3000:]
  assert _steps(workdir) == [4]

  logs = str(tmp_path / 'resumed')
  os.makedirs(logs)
  procs = _start_pair(workdir, cache, logs)
  codes = [p.wait(timeout=600) for p in procs]
  outs = [_log(logs, i) for i in range(2)]
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert all('Resumed from checkpoint at step 4' in out for out in outs), outs[0][-3000:]
  assert _steps(workdir)[-1] == 8


def test_dead_peer_during_compilation_is_named_within_the_timeout(tmp_path):
  """Process 0 waits in a coordination barrier, where no collective fails: PeerWatch ends it."""
  cache, workdir = _prepared_cache(tmp_path), str(tmp_path / 'run')
  logs = str(tmp_path / 'logs')
  os.makedirs(logs)
  procs = _start_pair(workdir, cache, logs)
  _wait_until(lambda: ' train / ' in _log(logs, 1), procs, 'set-up of process 1')
  code, seconds = _kill_and_time_survivor(procs, victim=1)
  out = _log(logs, 0)
  assert seconds < PEER_TIMEOUT + 15, (seconds, out[-3000:])
  assert code == 1, out[-3000:]
  # PeerWatch names it; JAX's own heartbeat check cannot fire before 2 x PEER_TIMEOUT.
  assert (f'PeerLostError: process 1 of 2 stopped answering (no heartbeat for {PEER_TIMEOUT} s)'
          in out), out[-3000:]
