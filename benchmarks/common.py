"""Pieces the benchmark scripts share: configs, the compiled reference step, timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from melgenre_jax import schedules, steps
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.runtime import hostmem, parallel


def reference_config(**overrides) -> ml_collections.ConfigDict:
  """configs/default.py with ``a__b=value`` style overrides (``data__worker_count=1``)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update_from_flattened_dict({k.replace('__', '.'): v for k, v in overrides.items()})
  return config


def untrained_state(config: ml_collections.ConfigDict, num_classes: int, mesh,
                    seed: int = 0) -> steps.TrainState:
  """A freshly initialised TrainState: throughput does not depend on the weights.

  Also applies ``config.keep_host_memory`` as train_and_evaluate and
  load_for_inference do, so the timed steps are the product's.
  """
  if config.keep_host_memory:
    hostmem.keep_freed_memory()
  tx = schedules.create_optimizer(config, schedules.create_learning_rate_schedule(config.schedule, 100))
  return steps.build_state(config, num_classes, mesh, tx, jax.random.PRNGKey(seed))


def compiled_train_step(config: ml_collections.ConfigDict, num_classes: int, mesh):
  """(compiled step, state, a batch of zeros-like inputs, compile seconds)."""
  state = untrained_state(config, num_classes, mesh)
  spec = InputSpec.from_config(config)
  rng = np.random.default_rng(0)
  shape = (config.batch_size,) + spec.input_shape
  scale = 0.1 if spec.takes_waves else 15.0
  batch = parallel.global_batch(
      {'inputs': (scale * rng.standard_normal(shape)).astype(np.float32),
       'label': (np.arange(config.batch_size) % num_classes).astype(np.int32)}, mesh)
  start = time.perf_counter()
  step = steps.make_train_step(mesh, config, num_classes).lower(state, batch).compile()
  return step, state, batch, time.perf_counter() - start


def median_rate(fn: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
  """Median of ``units / seconds`` over ``repeats`` calls of ``fn`` (returns units done)."""
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    units = fn()
    rates.append(units / (time.perf_counter() - start))
  return statistics.median(rates), rates
