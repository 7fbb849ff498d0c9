"""Is the process that left something behind still running? (cache builds, tune trials)."""

from __future__ import annotations

import os
import socket


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
