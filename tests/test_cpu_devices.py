"""One JAX device per core on a CPU: the plan, the user's choice winning, the real setup."""

import os
import subprocess
import sys

import pytest

from melgenre_jax.errors import ConfigError
from melgenre_jax.runtime import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('requested,cores,batch,expected', [
    (-1, 2, 32, (2, True)),     # the measured case: one single-threaded device per core
    (-1, 16, 32, (2, False)),   # more cores: two devices sharing XLA's threads
    (-1, 1, 32, (1, False)),    # one core: nothing to split
    (-1, 2, 33, (1, False)),    # an odd batch cannot be split evenly
    (1, 2, 32, (1, False)),     # one device on all cores, XLA's default
    (4, 2, 32, (4, True)),
])
def test_plan(requested, cores, batch, expected):
  assert cpu_devices.plan(requested, cores, batch) == expected


@pytest.mark.parametrize('bad', [0, -2, 1.5, True])
def test_bad_count_names_the_field(bad):
  with pytest.raises(ConfigError, match='config.cpu_devices'):
    cpu_devices.plan(bad, 2, 32)


def test_a_device_count_the_user_set_wins():
  # conftest set --xla_force_host_platform_device_count=2 before JAX started.
  assert cpu_devices.configure(-1, 32) == 0


def _devices_in_fresh_process(env_overrides):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', **env_overrides)
  code = ('import os, jax; from melgenre_jax.runtime import cpu_devices; '
          'n = cpu_devices.configure(-1, 32); '
          'print(n, jax.device_count(), os.environ.get("XLA_FLAGS", ""))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True).stdout.split(maxsplit=2)
  return int(out[0]), int(out[1]), out[2] if len(out) > 2 else ''


def test_auto_gives_one_device_per_core_before_jax_starts():
  expected, single_threaded = cpu_devices.plan(-1, cpu_devices.usable_cores(), 32)
  configured, devices, flags = _devices_in_fresh_process({})
  assert devices == expected
  assert configured == (expected if expected > 1 else 0)
  assert (cpu_devices.SINGLE_THREAD_FLAG in flags) == single_threaded


def test_the_users_xla_flags_are_kept():
  configured, devices, flags = _devices_in_fresh_process(
      {'XLA_FLAGS': '--xla_force_host_platform_device_count=3'})
  assert (configured, devices) == (0, 3)
  assert cpu_devices.SINGLE_THREAD_FLAG not in flags
