"""Devices, hosts and the data-parallel mesh.

The train step is written per device and mapped over a one-axis mesh with
``jax.shard_map`` (the mechanism ``jax.pmap`` itself is built on since JAX 0.8).
Every process feeds only its own slice of each global batch; the slices are
stitched into one global array without any copy between hosts.

A multi-process run also watches its peers (``PeerWatch``): when one dies the
others stop within ``peer_timeout_seconds`` with a ``PeerLostError`` naming it,
instead of hanging in a barrier or being aborted by JAX's coordination service.
"""

from __future__ import annotations

import atexit
import contextlib
import logging as std_logging
import os
import sys
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import PeerLostError
from melgenre_jax.errors import UserError

AXIS = 'data'
# How long a silent peer is given before the others stop (--peer_timeout_seconds).
DEFAULT_PEER_TIMEOUT_SECONDS = 120


def maybe_initialize_distributed(coordinator_address: str = '',
                                 num_processes: int = 0,
                                 process_id: int = -1,
                                 peer_timeout_seconds: int = DEFAULT_PEER_TIMEOUT_SECONDS
                                 ) -> bool:
  """Calls ``jax.distributed.initialize`` when the run spans several processes.

  Explicit flags win; otherwise JAX's own variables (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID) or a multi-task SLURM / Open MPI launch
  are detected. A single-process run is left alone, so nothing is needed for
  the common case. ``peer_timeout_seconds``: see ``PeerWatch``.
  """
  if peer_timeout_seconds < 1:
    raise ConfigError(f'--peer_timeout_seconds={peer_timeout_seconds}: must be at least 1.')
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
                               process_id=process_id,
                               **_jax_timeouts(peer_timeout_seconds))
  elif cluster:
    # SLURM / Open MPI: JAX reads the cluster env.
    jax.distributed.initialize(**_jax_timeouts(peer_timeout_seconds))
  else:
    return False
  logging.info('Distributed JAX: process %d of %d, %d local / %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  PeerWatch(peer_timeout_seconds).start()
  return True


def _jax_timeouts(peer_timeout_seconds: int) -> dict[str, int]:
  """JAX's own failure detection, set behind ``PeerWatch``.

  JAX fails barriers (and aborts processes) once a peer sent no heartbeat for
  its timeout, and it sends one every half timeout, so it reports a death
  between half and all of its timeout later (measured: 10-20 s at 20 s).
  PeerWatch reports within about 1.1 x ours, so JAX gets four times ours:
  its earliest report comes at twice ours, after PeerWatch has named the
  peer. A finishing process waits at most ``peer_timeout_seconds`` for the
  others to finish too.
  """
  return {'heartbeat_timeout_seconds': 4 * peer_timeout_seconds,
          'shutdown_timeout_seconds': peer_timeout_seconds}


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


# ----------------------------------------------------------------------------
# A dead peer: every survivor stops, within a bound, saying which one it lost.
#
# What a survivor sees without this (jax 0.10.2, CPU/gloo): a collective with
# the dead process fails at once ("Gloo all-reduce failed: Connection closed by
# peer"), after which the exit waits in JAX's shutdown barrier and is aborted;
# in a coordination barrier (compilation, checkpoints) it waits until JAX's
# heartbeat timeout aborts the process. When process 0, which hosts the
# coordination service, dies, JAX aborts every other process at once: that
# case cannot be reported more cleanly from Python.

_HEARTBEAT_PREFIX = 'melgenre/alive/'
_watch: PeerWatch | None = None


class PeerWatch:
  """Heartbeats through the coordination service's key-value store.

  Each process bumps its own counter every ``timeout / 10`` seconds (at most
  10 s) and checks the others': one whose counter stood still for
  ``timeout`` seconds, or a coordination service that did not answer for as
  long, ends this process with a ``PeerLostError`` naming it. A thread does
  it, so a process blocked in a barrier or a collective is covered too. It
  stops checking when the process exits (a finished peer stops beating).
  """

  def __init__(self, timeout_seconds: float):
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    self.timeout = float(timeout_seconds)
    self.interval = max(0.5, min(10.0, self.timeout / 10))
    self._client = distributed.global_state.client
    self._me = jax.process_index()
    self._count = jax.process_count()
    self._stop = threading.Event()

  def start(self) -> None:
    global _watch
    _watch = self
    atexit.register(self._stop.set)  # runs before JAX's own shutdown (LIFO)
    threading.Thread(target=self._run, name='melgenre-peer-watch', daemon=True).start()

  def _run(self) -> None:
    now = time.monotonic()
    last_change = {p: (-1, now) for p in range(self._count) if p != self._me}
    last_answer = now
    while not self._stop.is_set():
      now = time.monotonic()
      try:
        counts = self._beat()
        last_answer = now
      except Exception as e:  # pylint: disable=broad-except
        if now - last_answer > self.timeout and not self._stop.is_set():
          exit_lost_peer([0], f'the coordination service on process 0 has not answered '
                         f'for {self.timeout:.0f} s ({_first_line(e)})')
        self._stop.wait(self.interval)
        continue
      for p, (count, _) in last_change.items():
        if counts.get(p, count) != count:
          last_change[p] = (counts[p], now)
      silent = [p for p, (_, since) in last_change.items() if now - since > self.timeout]
      if silent and not self._stop.is_set():
        exit_lost_peer(silent, f'no heartbeat for {self.timeout:.0f} s')
      self._stop.wait(self.interval)

  def _beat(self) -> dict[int, int]:
    """Bumps this process's counter; returns every process's."""
    self._client.key_value_increment(f'{_HEARTBEAT_PREFIX}{self._me}', 1)
    return {int(k.rsplit('/', 1)[1]): int(v)
            for k, v in self._client.key_value_dir_get(_HEARTBEAT_PREFIX)}


def lost_peer_message(processes: list[int] | None, why: str) -> str:
  """The PeerLostError text: who, why, what survives and what to do."""
  count = jax.process_count()
  who = (', '.join(f'process {p}' for p in processes) + f' of {count}'
         if processes else f'one of the other {count - 1} processes')
  return (f'{who} stopped answering ({why}): it died, hangs or is unreachable. '
          f'Process {jax.process_index()} stops too; checkpoints already written are '
          f'intact. Start all {count} processes again with the same command: they '
          'resume from the latest checkpoint.')


def exit_lost_peer(processes: list[int] | None, why: str) -> None:
  """Reports a lost peer and ends this process now (from any thread)."""
  logging.error('%s: %s', PeerLostError.__name__, lost_peer_message(processes, why))
  exit_without_shutdown(1)


def exit_without_shutdown(code: int) -> None:
  """Ends the process, skipping ``jax.distributed``'s shutdown at exit.

  That shutdown is a barrier of all processes: with one of them dead it
  would wait out its timeout and then abort with a C++ stack trace.
  """
  for handler in std_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


# How a collective (gloo) or a coordination barrier words a peer's death.
_PEER_FAILURE_MARKERS = ('gloo', 'heartbeat', 'barrier failed', 'by peer')


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


@contextlib.contextmanager
def peer_failures_as_errors() -> Iterator[None]:
  """Turns a collective or barrier that failed because a peer died into PeerLostError.

  With two processes the lost one is the other; with more, PeerWatch names
  it within its timeout (and ends the process itself); the error then says
  only that one was lost. Single-process runs and other errors pass as they are.
  """
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    text = str(e).lower()
    if _watch is None or not any(m in text for m in _PEER_FAILURE_MARKERS):
      raise  # a single-process run, or not a peer's failure
    lost = None
    if jax.process_count() == 2:
      lost = [1 - jax.process_index()]
    else:
      time.sleep(_watch.timeout + 2 * _watch.interval)  # PeerWatch names it and exits
    raise PeerLostError(lost_peer_message(lost, _first_line(e))) from e
