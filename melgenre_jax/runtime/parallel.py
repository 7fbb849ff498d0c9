"""Devices, hosts and the data-parallel mesh.

The train step is written per device and mapped over a one-axis mesh with
``jax.shard_map`` (the mechanism ``jax.pmap`` itself is built on since JAX 0.8).
Every process feeds only its own slice of each global batch; the slices are
stitched into one global array without any copy between hosts.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from melgenre_jax.errors import ConfigError

AXIS = 'data'


def maybe_initialize_distributed(coordinator_address: str = '',
                                 num_processes: int = 0,
                                 process_id: int = -1) -> bool:
  """Calls ``jax.distributed.initialize`` when the run spans several processes.

  Explicit flags win; otherwise JAX's own variables (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID) or a multi-task SLURM / Open MPI launch
  are detected. A single-process run is left alone, so nothing is needed for
  the common case.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS', '')
  num_processes = num_processes or int(env.get('JAX_NUM_PROCESSES', '0') or 0)
  if process_id < 0:
    process_id = int(env.get('JAX_PROCESS_ID', '-1') or -1)
  cluster = (int(env.get('SLURM_NTASKS', '1') or 1) > 1
             or int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1)
  if coordinator_address and num_processes > 1:
    if process_id < 0:
      raise ConfigError('A multi-process run needs --process_id (or JAX_PROCESS_ID) '
                       f'in 0..{num_processes - 1}.')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif cluster:
    jax.distributed.initialize()  # SLURM / Open MPI: JAX reads the cluster env.
  else:
    return False
  logging.info('Distributed JAX: process %d of %d, %d local / %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def create_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process).

  Auto axis types (not make_mesh's default, Explicit) so that shard_map
  accepts the batch arrays we build with ``make_array_from_process_local_data``.
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,),
              axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def check_batch_divisible(global_batch: int, what: str = 'config.batch_size') -> None:
  """Refuses a global batch that cannot be split evenly over devices and hosts."""
  devices = jax.device_count()
  if global_batch % devices:
    raise ConfigError(
        f'{what}={global_batch} is not divisible by the number of devices '
        f'({devices}). Choose a multiple of {devices}, e.g. '
        f'{max(devices, global_batch // devices * devices)}.')


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Stitches each process's slice of a batch into global sharded arrays."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def process_slice(global_size: int) -> slice:
  """This process's contiguous part of a global batch of ``global_size``."""
  per_process = global_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def to_host(x: jax.Array) -> np.ndarray:
  """Gathers a (possibly multi-host) sharded array to a numpy array on every host."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def barrier(name: str, timeout_seconds: int = 1800) -> None:
  """Waits until every process gets here (no-op with one process).

  Uses the coordination service, not a collective: CPU collectives (gloo) give
  up after 30 s, less than one process may spend compiling while another has
  already reached its first collective.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier(f'melgenre_{name}',
                                                  timeout_seconds * 1000)
