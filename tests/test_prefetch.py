"""Device prefetch: batches ahead on the devices, checkpoints at the consumer's position."""

import numpy as np
import pytest

from melgenre_jax.data import input_pipeline as ip
from melgenre_jax.data.songs import Song
from melgenre_jax.runtime import parallel
from melgenre_jax.runtime import prefetch


class _Counting:
  """An iterator whose state is the number of batches drawn from it."""

  def __init__(self):
    self.drawn = 0

  def __next__(self):
    self.drawn += 1
    return {'inputs': np.full((2, 3), self.drawn, np.float32),
            'label': np.zeros(2, np.int32)}

  def get_state(self):
    return self.drawn


@pytest.mark.parametrize('depth', [0, 1, 2, 4])
def test_draws_ahead_but_reports_the_consumed_position(depth):
  host = _Counting()
  batches = prefetch.DevicePrefetch(host, lambda b: b, depth=depth)
  assert batches.get_state() == 0
  for k in range(1, 6):
    batch = next(batches)
    assert int(batch['inputs'][0, 0]) == k  # in order, nothing skipped
    assert batches.get_state() == k  # what a checkpoint now must store
    assert host.drawn == k + depth  # ... while the host is `depth` ahead


def test_negative_depth_is_refused():
  with pytest.raises(ValueError, match='>= 0'):
    prefetch.DevicePrefetch(_Counting(), lambda b: b, depth=-1)


def _toy(n=40):
  inputs = np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1)
  return ip.SegmentSet(inputs=inputs, labels=(np.arange(n) % 4).astype(np.int32),
                       song_index=np.arange(n, dtype=np.int32),
                       songs=[Song(f's{i}', '', 'g') for i in range(n)])


def _loader(toy):
  return iter(ip.create_train_loader(toy, global_batch_size=8, seed=1, worker_count=0))


def test_resume_from_prefetched_state_continues_exactly():
  """A checkpoint taken mid-stream resumes with the batch after the last one used."""
  toy = _toy()
  mesh = parallel.create_mesh()
  batches = prefetch.DevicePrefetch(_loader(toy), prefetch.train_batch_on_device(mesh),
                                    depth=2)
  for _ in range(3):
    next(batches)
  state = batches.get_state()
  expected = [np.asarray(next(batches)['inputs'])[:, 0] for _ in range(6)]  # crosses an epoch

  fresh = _loader(toy)
  fresh.set_state(state)
  resumed = prefetch.DevicePrefetch(fresh, prefetch.train_batch_on_device(mesh), depth=2)
  got = [np.asarray(next(resumed)['inputs'])[:, 0] for _ in range(6)]
  np.testing.assert_array_equal(np.stack(got), np.stack(expected))


def test_batches_are_sharded_over_the_devices():
  mesh = parallel.create_mesh()
  batch = next(prefetch.DevicePrefetch(_loader(_toy()), prefetch.train_batch_on_device(mesh)))
  assert batch['inputs'].shape == (8, 3)
  assert len(batch['inputs'].sharding.device_set) == len(mesh.devices.flat)
