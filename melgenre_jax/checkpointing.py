"""Orbax checkpoints of everything a run needs to continue exactly.

One checkpoint = the TrainState (params, BatchNorm statistics, optimizer state,
step, RNG key, feature statistics), the grain iterator's position, and a small
JSON of progress (per-epoch history, partial sums of the current epoch). The
manager keeps the latest N checkpoints plus the best one by song-level
validation accuracy; Orbax writes each into a temporary folder and renames it
when complete, so a crash never leaves a half checkpoint that looks finished.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import grain
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = 'val_song_accuracy'


class FrozenIteratorState:
  """A snapshot of a grain iterator's state, taken at save time.

  Orbax may finish a save in the background while training goes on; handing
  it the live iterator could record a later position than the step saved.
  """

  def __init__(self, iterator: Any):
    self._state = iterator.get_state()

  def get_state(self) -> bytes:
    return self._state


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _best_metric(metrics: dict) -> float:
  return float(metrics.get(BEST_METRIC, -1.0))


def create_manager(workdir: str, max_to_keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Latest ``max_to_keep`` checkpoints plus the best by song-level val accuracy."""
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=max_to_keep),
      checkpoint_managers.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_metric, best_mode='max',
      preservation_policy=policy, create=not read_only, read_only=read_only,
      enable_async_checkpointing=not read_only)
  handlers = {
      # The same files either way; a reader restores parts of the state
      # (inference needs no optimizer), which only the PyTree handler offers.
      'state': (ocp.PyTreeCheckpointHandler() if read_only
                else ocp.StandardCheckpointHandler()),
      'data': grain.checkpoint.CheckpointHandler(),
      'progress': ocp.JsonCheckpointHandler(),
  }
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Any, progress: dict, metrics: dict | None) -> None:
  """Starts an (asynchronous) save of one complete checkpoint."""
  args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(FrozenIteratorState(data_iterator)),
      progress=ocp.args.JsonSave(progress))
  manager.save(step, args=args, metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: Any | None = None) -> tuple[Any, dict]:
  """Restores state (onto ``abstract_state``'s shardings) and progress.

  With ``data_iterator`` given, its position is restored in place too.
  """
  items = dict(state=ocp.args.StandardRestore(abstract_state),
               progress=ocp.args.JsonRestore())
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], restored['progress']


def restore_parts(manager: ocp.CheckpointManager, step: int, abstract_parts: dict
                  ) -> dict:
  """Restores only the named top-level fields of a saved state.

  ``abstract_parts`` maps field names of the saved TrainState (``params``,
  ``batch_stats``, ...) to abstract arrays with shardings; everything else (the
  optimizer state, the data position) is neither read nor allocated.
  Needs a manager created with ``read_only=True``.
  """
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_parts)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=abstract_parts, restore_args=restore_args, partial_restore=True)))
  return dict(restored['state'])


def restore_latest_good(manager: ocp.CheckpointManager, abstract_state: Any,
                        data_iterator: Any | None = None
                        ) -> tuple[int, Any, dict] | None:
  """Restores the newest checkpoint that reads back, falling back to older ones.

  A checkpoint damaged after it was written (a truncated file, a deleted
  folder) is reported, moved aside to ``checkpoints_damaged/`` (kept, not
  deleted, and out of the way of the step numbers training will save again)
  and skipped instead of ending the run. Returns None when there is no
  checkpoint at all.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  damaged = []
  for i, step in enumerate(steps):
    try:
      state, progress = restore(manager, step, abstract_state, data_iterator)
    except Exception as e:  # pylint: disable=broad-except
      older = f'falling back to step {steps[i + 1]}' if i + 1 < len(steps) else 'no older checkpoint left'
      logging.warning('Checkpoint at step %d in %s cannot be restored (%s: %s); %s.',
                      step, manager.directory, type(e).__name__, str(e)[:300], older)
      damaged.append(step)
      continue
    if damaged:
      _move_aside(manager, damaged)
      logging.warning('Resumed from step %d instead of the newest checkpoint (%d), '
                      'which is damaged; the damaged one(s) %s are kept in %s.',
                      step, steps[0], damaged, _damaged_dir(manager))
    return step, state, progress
  if steps:
    raise RuntimeError(
        f'None of the checkpoints in {manager.directory} (steps {steps}) can be '
        'restored. Move that folder away to start training from scratch.')
  return None


def _damaged_dir(manager: ocp.CheckpointManager) -> str:
  return str(manager.directory) + '_damaged'


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves unreadable step folders out of the manager's directory (never deletes)."""
  target = _damaged_dir(manager)
  os.makedirs(target, exist_ok=True)
  for step in steps:
    source = os.path.join(str(manager.directory), str(step))
    if os.path.isdir(source):
      shutil.move(source, os.path.join(target, f'{step}.{int(time.time())}'))
  manager.reload()
