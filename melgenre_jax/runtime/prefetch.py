"""Global batches placed on the devices a few steps ahead of the train step.

Dispatch is asynchronous: once the loop no longer waits for each step's
result, the host reads, converts and transfers the next batches while the
devices still run the current step. This iterator keeps ``depth`` such
batches in flight (as flax's ``prefetch_to_device`` did for pmap).

Exact resume needs care: the grain iterator underneath has already produced
the prefetched batches, so its own position is ahead of the step. The
position recorded right after drawing each batch travels with it, and
``get_state()`` answers with the position after the last batch *handed out*
- what a checkpoint at this step must store.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from melgenre_jax.runtime import parallel


class DevicePrefetch:
  """Iterator of device-resident global batches, ``depth`` ahead of the consumer."""

  def __init__(self, host_iterator: Any, to_device: Callable[[dict[str, np.ndarray]], Any],
               depth: int = 2):
    if depth < 0:
      raise ValueError(f'prefetch depth must be >= 0, got {depth}')
    self._host = host_iterator
    self._to_device = to_device
    self._depth = depth
    self._queue: collections.deque[tuple[Any, Any]] = collections.deque()
    self._state = host_iterator.get_state()

  def __iter__(self) -> Iterator[Any]:
    return self

  def _draw(self) -> None:
    batch = next(self._host)
    self._queue.append((self._to_device(batch), self._host.get_state()))

  def __next__(self) -> Any:
    while len(self._queue) <= self._depth:
      self._draw()
    batch, self._state = self._queue.popleft()
    return batch

  def get_state(self) -> Any:
    """The host iterator's position after the last batch handed out."""
    return self._state


def train_batch_on_device(mesh, teacher: np.ndarray | None = None
                          ) -> Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]:
  """A host batch (this process's rows) to the sharded global batch the step takes.

  ``teacher``: per training song targets ``[songs, D]`` (distillation); each
  row's song's targets join the batch as ``'teacher'``.
  """
  def put(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    arrays = {'inputs': batch['inputs'], 'label': batch['label']}
    if teacher is not None:
      arrays['teacher'] = teacher[batch['song']]
    return parallel.global_batch(arrays, mesh)

  return put
