"""The multi-stage learning-rate schedule: values at every boundary, and its checks."""

import ml_collections
import numpy as np
import pytest

from configs import default
from melgenre_jax import schedules


def _sched(spe=10):
  return schedules.create_learning_rate_schedule(default.get_config().schedule, spe)


@pytest.mark.parametrize('epoch_step, expected', [
    (0, 5e-5),                      # first step of epoch 1: warm-up starts
    (25, 5e-5 + 0.5 * (5.55e-4 - 5e-5)),  # half-way through the 5 warm-up epochs
    (50, 5.55e-4),                  # epoch 6 starts at the peak
    (409, 5.55e-4),                 # last step of epoch 41
    (410, 2e-4),                    # epoch 42
    (459, 2e-4),                    # last step of epoch 46
    (460, 2e-4),                    # epoch 47: anneal starts
    (480, 2e-4 + 0.5 * (5e-5 - 2e-4)),
    (500, 5e-5),                    # end of epoch 50
    (10_000, 5e-5),                 # past the end the final value holds
])
def test_reference_schedule_values(epoch_step, expected):
  np.testing.assert_allclose(float(_sched()(epoch_step)), expected, rtol=1e-5)


def test_schedule_scales_with_steps_per_epoch():
  a, b = _sched(10), _sched(37)
  for epoch in (0, 3, 5, 41, 46, 50):
    np.testing.assert_allclose(float(a(epoch * 10)), float(b(epoch * 37)), rtol=1e-5)


def test_schedule_is_monotone_in_warmup():
  s = _sched(4)
  values = [float(s(i)) for i in range(21)]
  assert all(x <= y for x, y in zip(values, values[1:]))


def _cfg(ends, starts, stops):
  c = ml_collections.ConfigDict()
  c.stage_ends, c.stage_start_lrs, c.stage_end_lrs = ends, starts, stops
  return c


@pytest.mark.parametrize('ends, starts, stops, match', [
    ((5, 3), (1e-3, 1e-3), (1e-3, 1e-3), 'strictly increasing'),
    ((5, 60), (1e-3, 1e-3), (1e-3, 1e-3), 'past config.num_epochs'),
    ((5,), (1e-3, 1e-3), (1e-3,), 'same length'),
    ((5,), (0.0,), (1e-3,), 'must all be > 0'),
    ((), (), (), 'empty'),
])
def test_bad_schedules_are_refused(ends, starts, stops, match):
  with pytest.raises(ValueError, match=match):
    schedules.check_schedule(_cfg(ends, starts, stops), num_epochs=50)
