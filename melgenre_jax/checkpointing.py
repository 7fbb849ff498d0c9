"""Orbax checkpoints of everything a run needs to continue exactly.

One checkpoint = the TrainState (params, BatchNorm statistics, optimizer state,
step, RNG key, feature statistics), the grain iterator's position, and a small
JSON of progress (per-epoch history, partial sums of the current epoch). The
manager keeps the latest N checkpoints plus the best one by song-level
validation accuracy; Orbax writes each into a temporary folder and renames it
when complete, so a crash never leaves a half checkpoint that looks finished.

A write that fails on a full disk (a checkpoint or any other file of the run)
stops the run with ``DiskFullError`` (``stop_on_full_disk``); the checkpoint it
cut short is left as a temporary folder, which the next run's manager removes.
"""

from __future__ import annotations

import contextlib
import errno
import logging as std_logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import grain
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import DiskFullError
from melgenre_jax.errors import WorkdirError
from melgenre_jax.runtime import disk

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


def _best_metric(metrics: dict) -> float:
  return float(metrics.get(BEST_METRIC, -1.0))


class _DropReadOnlyNotes(std_logging.Filter):
  """Drops Orbax's notes that a manager opened read-only is read-only.

  eval, predict, embed, export and serve open the checkpoints read-only on
  purpose; "Given directory is read only" on every command reads like a
  permission problem, and says nothing the user can act on.
  """

  _NOTES = ('Given directory is read only=%s', '%s is read only, save will be skipped',
            '%s is read only, delete will be skipped')

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not (record.msg in self._NOTES and record.pathname.endswith('checkpoint_manager.py'))


_READ_ONLY_NOTES = _DropReadOnlyNotes()


def create_manager(workdir: str, max_to_keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Latest ``max_to_keep`` checkpoints plus the best by song-level val accuracy."""
  absl_logger = logging.get_absl_logger()
  if _READ_ONLY_NOTES not in absl_logger.filters:
    absl_logger.addFilter(_READ_ONLY_NOTES)
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=max_to_keep),
      checkpoint_managers.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  # A writer removes the temporary folders of saves cut short (a kill, a full
  # disk): they would only take space. Readers never do, as training may be
  # writing one right now; a writer is alone (runtime/workdir_lock.py).
  # A reader also sets what Orbax would otherwise reset with a warning per manager
  # ("read_only=True, setting save_interval_steps=0"): the options agree from the start.
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_metric, best_mode='max', save_interval_steps=0 if read_only else 1,
      preservation_policy=policy, create=not read_only, read_only=read_only,
      enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only)
  handlers = {
      # The same files either way; a reader restores parts of the state
      # (inference needs no optimizer), which only the PyTree handler offers.
      'state': (ocp.PyTreeCheckpointHandler() if read_only
                else ocp.StandardCheckpointHandler()),
      'data': grain.checkpoint.CheckpointHandler(),
      'progress': ocp.JsonCheckpointHandler(),
  }
  return ocp.CheckpointManager(workdir_lib.checkpoint_dir(workdir), options=options,
                               item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Any, progress: dict, metrics: dict | None) -> None:
  """Starts an (asynchronous) save of one complete checkpoint.

  A failed write of this save surfaces later, from the next save or
  ``manager.wait_until_finished()``/``close()``; ``stop_on_full_disk`` around
  the run turns a full disk there into ``DiskFullError``.
  """
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


def read_progress(manager: ocp.CheckpointManager, step: int) -> dict:
  """The progress JSON (history rows, partial epoch sums) of ``step``, no arrays read."""
  restored = manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
  return dict(restored['progress'])


def restore_readable_parts(manager: ocp.CheckpointManager, step: int, abstract_parts: dict,
                           fallback: bool = True) -> tuple[int, dict]:
  """``restore_parts`` of ``step``, or of the newest older step that reads back.

  eval, predict, embed, export and serve read the best checkpoint; one
  damaged after it was written (a truncated data file) is moved aside to
  ``checkpoints_damaged/`` as training does (kept; left in place when the
  workdir is not writable), named in one warning, and the newest step that
  reads back is used instead. ``fallback=False`` (an explicit ``--step``) refuses
  rather than answering with another step. Returns ``(step, parts)``.

  Raises:
    WorkdirError: ``step`` is damaged and no fallback is allowed, or no
      checkpoint reads back (one line, naming the first error).
  """
  candidates = [step] + (sorted((s for s in manager.all_steps() if s != step), reverse=True)
                         if fallback else [])
  damaged: list[int] = []
  first_error = ''
  for candidate in candidates:
    try:
      parts = restore_parts(manager, candidate, abstract_parts)
    except Exception as e:  # pylint: disable=broad-except
      damaged.append(candidate)
      first_error = first_error or f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
      logging.info('Checkpoint at step %d cannot be read: %s: %s', candidate,
                   type(e).__name__, str(e)[:500])
      continue
    if damaged:
      where = _move_aside_if_possible(manager, damaged)
      logging.warning('The checkpoint at step %s in %s is damaged (%s); using step %d, the '
                      'newest that reads back. The damaged one(s) %s.',
                      ', '.join(map(str, damaged)), manager.directory, first_error,
                      candidate, where)
    return int(candidate), parts
  if not fallback:
    raise WorkdirError(
        f'The checkpoint at step {step} in {manager.directory} cannot be read '
        f'({first_error}): it is damaged; drop --step to use the newest readable one, or '
        f'pick another (available: {sorted(manager.all_steps())}).')
  raise WorkdirError(
      f'None of the checkpoints in {manager.directory} (steps {sorted(damaged)}) can be '
      f'read (step {damaged[0]}: {first_error}): they are damaged; retrain, or restore the '
      'checkpoints folder from a copy.')


def _move_aside_if_possible(manager: ocp.CheckpointManager, steps: list[int]) -> str:
  """Moves damaged steps aside for a reader; says where they are (in place when it cannot)."""
  try:
    _move_aside(manager, steps)
  except OSError as e:
    return f'are left in place ({e.strerror or e})'
  return f'are moved to {_damaged_dir(manager)}'


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


# ----------------------------------------------------------------------------
# A full disk.


@contextlib.contextmanager
def stop_on_full_disk(workdir: str) -> Iterator[None]:
  """Turns a write failing on a full disk, wherever it surfaces, into ``DiskFullError``.

  Orbax writes in the background, so its failure surfaces from a later call
  (the next save, wait_until_finished, close) as a wrapped ValueError; reports
  and config files fail with a plain OSError. One guard around the whole run
  catches both and says what is still intact.
  """
  try:
    yield
  except DiskFullError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not disk.is_disk_full(e):
      raise
    raise disk_full_error(workdir, e) from e


def disk_full_error(workdir: str, exc: BaseException) -> DiskFullError:
  """The error for a full disk: where, how much is free, what is intact, what to do."""
  path = _failed_path(exc)
  where = f'writing {path}' if path else f'a write under {os.path.abspath(workdir)}'
  error = DiskFullError(
      f'The disk is full: {where} failed (No space left on device; '
      f'{disk.free_space(path or workdir)} free there). The run stopped. {_intact(workdir)} '
      '(Or move the workdir to a bigger disk and point --workdir there.)')
  error.errno = errno.ENOSPC
  logging.error('Disk full: %s: %s', type(exc).__name__, str(exc)[:500])
  return error


def _intact(workdir: str) -> str:
  """What survives a full disk, and how the same command goes on from it."""
  steps = complete_steps(workdir)
  if not steps:
    return ('No checkpoint had been written yet. Free some space, then run the same '
            'command: it starts from the beginning.')
  listed = ', '.join(map(str, steps))
  label = 'steps' if len(steps) > 1 else 'step'
  return (f'The checkpoints already written are intact ({label} {listed} in '
          f'{workdir_lib.checkpoint_dir(workdir)}): a checkpoint cut short by the full disk '
          'never counts as complete, and the next run removes its remains. Free some space, '
          f'then run the same command: it resumes from step {steps[-1]}.')


def complete_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints in the workdir (temporary folders excluded)."""
  directory = workdir_lib.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def _failed_path(exc: BaseException | None) -> str | None:
  """The file the failed write names: an OSError's filename or tensorstore's text."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.filename:
      return os.fsdecode(exc.filename)
    match = re.search(r'local file "([^"]+)"', str(exc))
    if match:
      return match.group(1)
    exc = exc.__cause__ or exc.__context__
  return None
