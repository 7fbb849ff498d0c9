"""Imported weights written as an ordinary workdir, the way training leaves one.

The train state is built by the project's own ``steps.build_state`` (so its
structure, optimizer state and shardings are a run's) and only ``params`` and
``batch_stats`` are replaced; config.json and dataset.json are written by the
same writers/format as training's. Predict, embed, export and
``--config.init_from`` then read the workdir unchanged. The checkpoint is step
0 without metrics (nothing was validated here) and a placeholder data position:
a starting point to fine-tune from (``--config.init_from``), not a run to resume.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from melgenre_jax import checkpointing
from melgenre_jax import schedules
from melgenre_jax import steps
from melgenre_jax import train
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import WorkdirError
from melgenre_jax.runtime import atomic
from melgenre_jax.runtime import parallel
from melgenre_jax.train.history import RunHistory


def _placeholder_iterator() -> Any:
  """A grain DataLoader iterator (as training's) whose state stands where the loader's would."""
  sampler = grain.samplers.IndexSampler(1, shard_options=grain.sharding.NoSharding(),
                                        shuffle=False, num_epochs=1)
  return iter(grain.DataLoader(data_source=[0], sampler=sampler, worker_count=0))


def build_state(config: ml_collections.ConfigDict, num_classes: int,
                variables: dict[str, Any]) -> steps.TrainState:
  """A fresh run's TrainState (``steps.build_state``) carrying ``variables``' weights."""
  mesh = parallel.create_mesh()
  schedule = schedules.create_learning_rate_schedule(config.schedule, 1)
  tx = schedules.create_optimizer(config, schedule, 1)
  state = steps.build_state(config, num_classes, mesh, tx, jax.random.PRNGKey(config.seed))
  sharding = parallel.replicated(mesh)

  def place(fresh: Any, new: Any) -> Any:
    if fresh.shape != np.shape(new):
      raise ValueError(f'imported array of shape {np.shape(new)} for a {fresh.shape} variable')
    return jax.device_put(np.asarray(new, fresh.dtype), sharding)

  params = jax.tree.map(place, state.params, variables['params'])
  batch_stats = jax.tree.map(place, state.batch_stats, variables['batch_stats'])
  return state.replace(params=params, batch_stats=batch_stats,
                       ema_params=params if state.ema_params is not None else None)


def write(config: ml_collections.ConfigDict, workdir: str, labels: list[str],
          variables: dict[str, Any], source: dict[str, Any]) -> str:
  """Writes config.json, dataset.json, one checkpoint and ``imported_from.json``; the workdir."""
  workdir = os.path.abspath(workdir)
  if checkpointing.complete_steps(workdir):
    raise WorkdirError(f'{workdir} already has checkpoints: import into a new --workdir '
                       '(or delete that one).')
  os.makedirs(workdir, exist_ok=True)
  state = build_state(config, len(labels), variables)
  train.save_config(config, workdir)
  info = {'genres': list(labels), 'task': str(config.task), 'splits': {}}
  with atomic.replaced_when_written(workdir_lib.path(workdir, workdir_lib.DATASET)) as f:
    json.dump(info, f, indent=1)
  with atomic.replaced_when_written(workdir_lib.path(workdir, workdir_lib.IMPORTED_FROM)) as f:
    json.dump(source, f, indent=1)
  manager = checkpointing.create_manager(workdir, max_to_keep=1)
  try:
    with checkpointing.stop_on_full_disk(workdir):
      checkpointing.save(manager, 0, state, _placeholder_iterator(), RunHistory().progress, None)
      manager.wait_until_finished()
  finally:
    manager.close()
  return workdir
