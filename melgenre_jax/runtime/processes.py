"""Is the process that left something behind still running? (cache builds, tune trials,
temporary files of interrupted writes)."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid


def machine_id() -> str:
  """Host name plus boot id: a process id means something only on this machine."""
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      boot = f.read().strip()
  except OSError:
    boot = ''
  return f'{socket.gethostname()}/{boot}'


def pid_alive(pid: int) -> bool:
  """True while process ``pid`` of this machine runs (a zombie counts as dead)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process: alive
    return True
  try:  # a zombie is dead, whatever kill(0) says
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except (OSError, IndexError):
    return True


def temp_path(path: str) -> str:
  """A temporary sibling of ``path`` to write before renaming it over ``path``.

  Its name carries the writer's host and pid, so that several processes may
  write the same file at once and ``remove_orphaned_temp_files`` can tell the
  leftovers of a killed writer from a live writer's file.
  """
  return f'{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}'


def remove_orphaned_temp_files(folder: str) -> None:
  """Removes ``temp_path`` files in ``folder`` whose writer, on this host, is gone.

  A process killed between writing a temporary file and renaming it leaves it
  behind; nothing else would ever remove it.
  """
  marker = f'.tmp-{socket.gethostname()}-'
  try:
    names = os.listdir(folder)
  except OSError:
    return
  for name in names:
    _, found, rest = name.partition(marker)
    pid = rest.split('-', 1)[0]
    if found and pid.isdigit() and not pid_alive(int(pid)):
      with contextlib.suppress(OSError):
        os.remove(os.path.join(folder, name))
