"""Test setup: two forced CPU devices, so data-parallel code is exercised on CI."""

import os
import sys
import tempfile

# Must happen before JAX is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# XLA:CPU compiles of the model take tens of seconds on 2 cores, and many tests
# (and the training subprocesses they start, which inherit this environment)
# compile the very same tiny programs: a persistent cache compiles each once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'melgenre_jax_test_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


import shutil  # noqa: E402  (after the environment set-up above)

import pytest  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from melgenre_jax.runtime import hostmem  # noqa: E402

def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: starts processes or trains whole runs; the edit loop skips them '
      '(pytest -m "not slow"), CI runs everything.')


# As train_and_evaluate does (config.keep_host_memory): every test's steps run
# the way the product's do, and ~1.5x faster.
hostmem.keep_freed_memory()


@pytest.fixture(autouse=True)
def _absl_info_logs():
  """Every test starts with absl at INFO, whatever an earlier test or library left.

  Tests read absl's INFO lines through caplog; a test that ran a mode (or a
  library that set absl's verbosity) would otherwise decide, by test order,
  whether those lines exist.
  """
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  yield
  absl_logging.set_verbosity(verbosity)


@pytest.fixture(scope='session')
def tiny_run_dir(tmp_path_factory):
  """One training run of configs/tiny.py, shared read-only by the eval/predict/export tests."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from melgenre_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('tiny_run'))
  train.train_and_evaluate(tiny.get_config(), workdir)
  return workdir


@pytest.fixture(scope='module')
def tiny_run(tiny_run_dir, tmp_path_factory):
  """A private copy of the shared tiny run, for a test module to write reports into."""
  return shutil.copytree(tiny_run_dir, str(tmp_path_factory.mktemp('tiny_copy') / 'run'))
