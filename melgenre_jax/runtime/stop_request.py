"""SIGTERM/SIGINT as a request to stop cleanly, not a crash.

A preempted or Ctrl-C'd training run should lose nothing: the loop checks the
flag after each step, saves a checkpoint there and exits.
"""

from __future__ import annotations

import signal

from absl import logging


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag: the loop saves a checkpoint, then exits."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint at the end of this step, '
                    'then stopping.', self.signal_name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
