"""One JAX device per CPU core, so a CPU run is data-parallel like a multi-GPU one.

XLA:CPU gives one device for the whole machine and splits each operation over
its threads; the reference model's operations are too small for that to pay.
Splitting the batch over one single-threaded device per core instead runs each
core on its own half of the batch, the same compiled step as on several GPUs
(benchmarks/README.md has the ratio, for the train step and for inference).

It has to happen before JAX starts its backend, so ``modes.dispatch.run`` calls
``configure`` first; a count the user already chose (``XLA_FLAGS``'
``--xla_force_host_platform_device_count`` or ``jax_num_cpu_devices``) wins,
and a machine with a GPU/TPU plugin installed is left alone.
"""

from __future__ import annotations

import importlib.util
import os

import jax
from absl import logging

from melgenre_jax.errors import ConfigError

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
SINGLE_THREAD_FLAG = '--xla_cpu_multi_thread_eigen=false'
# Packages whose presence means JAX's default backend is not the CPU.
ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm7_plugin',
                       'jax_rocm60_plugin', 'libtpu')


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def plan(requested: int, cores: int, batch_size: int) -> tuple[int, bool]:
  """``(devices, single_threaded)`` for ``config.cpu_devices``.

  -1 (auto): two devices when there are at least two cores and the batch
  splits evenly (what was measured, on 2 cores), else one. N >= 1: N devices.
  Each device runs single-threaded when there are no more cores than devices;
  otherwise they share XLA's thread pool.
  """
  if not isinstance(requested, int) or isinstance(requested, bool) or requested < -1 \
      or requested == 0:
    raise ConfigError(f'config.cpu_devices={requested!r}: must be -1 (auto) or a device '
                      'count >= 1 (1: one device using every core, as XLA does by default).')
  if requested == -1:
    devices = 2 if cores >= 2 and batch_size % 2 == 0 else 1
  else:
    devices = requested
  return devices, devices > 1 and cores <= devices


def _user_chose(env: dict[str, str]) -> bool:
  return DEVICE_COUNT_FLAG in env.get('XLA_FLAGS', '') or jax.config.jax_num_cpu_devices != -1


def _accelerator_likely(env: dict[str, str]) -> bool:
  platforms = env.get('JAX_PLATFORMS', '') or env.get('JAX_PLATFORM_NAME', '')
  if platforms:
    return not platforms.lower().startswith('cpu')
  return any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def configure(requested: int, batch_size: int) -> int:
  """Sets the CPU device count before JAX's backend starts; returns the count set (0: none)."""
  env = os.environ
  if requested == -1 and (_user_chose(env) or _accelerator_likely(env)):
    return 0
  devices, single_threaded = plan(requested, usable_cores(), batch_size)
  if devices == 1 and requested == -1:
    return 0
  try:
    jax.config.update('jax_num_cpu_devices', devices)
  except RuntimeError:  # the backend already runs (library use): keep what it has
    logging.warning('config.cpu_devices=%d not applied: JAX had already started with %d '
                    'CPU device(s).', requested, jax.local_device_count('cpu'))
    return 0
  if single_threaded and SINGLE_THREAD_FLAG not in env.get('XLA_FLAGS', ''):
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + SINGLE_THREAD_FLAG).strip()
  logging.info('CPU: %d JAX devices (%s), the batch split over them (config.cpu_devices).',
               devices, 'one core each' if single_threaded else 'sharing the cores')
  return devices
