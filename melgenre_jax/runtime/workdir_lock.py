"""One owner per workdir: an OS file lock that train and tune hold for the whole run.

Two trainers on one workdir would interleave their checkpoints and overwrite
each other's reports without either noticing. ``hold(workdir, mode)`` takes an
exclusive ``fcntl.flock`` on ``WORKDIR/.lock`` and records the owner (pid,
host, start time) in it as JSON; a second process is refused at once with
``WorkdirBusyError`` naming that owner. The kernel drops a flock when its
process ends, however it ends, so a SIGKILLed owner never blocks the next run:
the JSON it leaves behind is simply overwritten. eval/predict/export only read
complete checkpoints (Orbax renames a checkpoint into place when it is whole)
and take no lock.

The lock is re-entrant within a process: code that already holds a workdir
may enter it again (only the outermost ``hold`` releases). In a multi-host
run, process 0 takes the lock once for the run and tells the other processes
the outcome through JAX's coordination service, so they stop too when it is
refused instead of waiting for it at the first barrier.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

from absl import logging

from melgenre_jax.errors import WorkdirBusyError

LOCK_NAME = '.lock'
# How long processes 1..N-1 of a multi-host run wait for process 0's verdict.
MULTIHOST_TIMEOUT_SECONDS = 600
# File systems that cannot lock: run unlocked (with a warning) rather than not at all.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)

_held: dict[str, list] = {}  # lock path -> [fd or None, depth], this process's locks
_held_guard = threading.Lock()
_multihost_rounds = [0]  # hold() calls so far: every process counts the same


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), LOCK_NAME)


@contextlib.contextmanager
def hold(workdir: str, mode: str) -> Iterator[None]:
  """Owns ``workdir`` (creating it) until the block ends, on any exit path.

  Raises ``WorkdirBusyError`` at once when another live process owns it.
  ``mode`` (train, tune) is recorded for the message another process gets.
  """
  os.makedirs(os.path.abspath(workdir), exist_ok=True)
  path = lock_path(workdir)
  count, index = _processes()
  if count > 1 and index != 0:
    _await_chief(path)
    yield
    return
  try:
    _enter(path, mode)
  except Exception as e:
    if count > 1:
      _tell_others(path, e)
    raise
  if count > 1:
    _tell_others(path, None)
  try:
    yield
  finally:
    _exit(path)


def read_owner(path: str, wait_seconds: float = 1.0) -> dict | None:
  """The owner recorded in lock file ``path`` (None when missing or unreadable).

  Waits briefly for an owner that has locked but not yet written its JSON.
  """
  deadline = time.time() + wait_seconds
  while True:
    try:
      with open(path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      if time.time() >= deadline:
        return None
      time.sleep(0.05)


# ----------------------------------------------------------------------------
# This process's locks.


def _enter(path: str, mode: str) -> None:
  with _held_guard:
    if path in _held:
      _held[path][1] += 1
      return
    _held[path] = [_acquire(path, mode), 1]


def _exit(path: str) -> None:
  with _held_guard:
    entry = _held[path]
    entry[1] -= 1
    if entry[1] == 0:
      del _held[path]
      if entry[0] is not None:
        _release(path, entry[0])


def _acquire(path: str, mode: str) -> int | None:
  """Locks ``path`` (None if the file system cannot lock); refuses a live owner."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited across exec
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirBusyError(_busy_message(path, read_owner(path))) from None
    except OSError as e:
      os.close(fd)
      if e.errno not in _NO_LOCKING:
        raise
      logging.warning('The file system of %s cannot lock files (%s): running without '
                      'the one-owner-per-workdir check.', path, e.strerror)
      return None
    # The previous owner may have removed the file between our open and lock:
    # then we hold a lock on a deleted file, which guards nothing. Retry.
    if _same_file(fd, path):
      break
    os.close(fd)
  try:
    _write_owner(fd, mode)
  except BaseException:
    os.close(fd)
    raise
  return fd


def _release(path: str, fd: int) -> None:
  """Removes the lock file while still holding it, then unlocks by closing."""
  try:
    if _same_file(fd, path):
      os.unlink(path)
  except OSError as e:
    logging.warning('Could not remove the workdir lock %s (%s).', path, e)
  finally:
    os.close(fd)


def _same_file(fd: int, path: str) -> bool:
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def _write_owner(fd: int, mode: str) -> None:
  owner = {'pid': os.getpid(), 'host': socket.gethostname(), 'mode': mode,
           'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'started_unix': time.time()}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(owner) + '\n').encode(), 0)


def _busy_message(path: str, owner: dict | None) -> str:
  workdir = os.path.dirname(path)
  if owner:
    who = (f'a {owner.get("mode", "training")} run, pid {owner.get("pid")} on host '
           f'{owner.get("host")}, started {owner.get("started")}')
  else:
    who = 'another process (it has not recorded its pid yet)'
  return (f'The workdir {workdir} is in use by {who} (lock file {path}). Only one '
          'training or search may write to a workdir at a time. Wait for that run to '
          'finish (or stop it: SIGTERM saves a checkpoint first), or use another '
          '--workdir. eval, predict and export may run beside it.')


# ----------------------------------------------------------------------------
# Multi-host: process 0 locks, the others learn the outcome.


def _processes() -> tuple[int, int]:
  import jax  # pylint: disable=g-import-not-at-top  (keeps this module light)
  return jax.process_count(), jax.process_index()


def _kv_client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def _next_key(path: str) -> str:
  _multihost_rounds[0] += 1
  return f'melgenre_workdir_lock/{_multihost_rounds[0]}/{path}'


def _tell_others(path: str, error: Exception | None) -> None:
  """Process 0: publishes whether it got the lock (and why not)."""
  verdict = {} if error is None else {
      'busy' if isinstance(error, WorkdirBusyError) else 'error': str(error)}
  _kv_client().key_value_set(_next_key(path), json.dumps(verdict))


def _await_chief(path: str) -> None:
  """Processes 1..N-1: waits for process 0's verdict, raising what it raised."""
  verdict = json.loads(_kv_client().blocking_key_value_get(
      _next_key(path), MULTIHOST_TIMEOUT_SECONDS * 1000))
  if 'busy' in verdict:
    raise WorkdirBusyError(verdict['busy'])
  if 'error' in verdict:
    raise RuntimeError(f'Process 0 could not lock {path}: {verdict["error"]}')
