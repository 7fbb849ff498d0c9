"""The run's history: per-epoch rows, the best epoch, and the train steps' metrics.

The history is saved in every checkpoint (``RunHistory.progress``), so a
resumed run continues it, partial epoch included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from melgenre_jax import reporting


def selection_score(row: dict) -> float:
  """What picks the best epoch: validation song accuracy, or song macro ROC-AUC (multilabel).

  -1 for a row without validation (or whose AUC could not be scored: no tag
  had both classes among the validation songs), so any evaluated epoch beats it.
  """
  value = row.get('val_song_roc_auc', row.get('val_song_accuracy', -1.0))
  value = -1.0 if value is None else float(value)
  return value if np.isfinite(value) else -1.0


class RunHistory:
  """Per-epoch metric rows plus the running sums of the current epoch.

  ``progress`` is the JSON saved with each checkpoint: a run killed mid-epoch
  resumes with the partial sums of that epoch intact. The best epoch is the
  one with the highest ``selection_score``.
  """

  def __init__(self, progress: dict | None = None):
    self.progress = progress or {'history': [], 'epoch_sums': self._zero()}

  @staticmethod
  def _zero() -> dict:
    return {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}

  @property
  def rows(self) -> list[dict]:
    return self.progress['history']

  def add_step(self, loss: float, accuracy: float) -> None:
    sums = self.progress['epoch_sums']
    sums['loss'] += loss
    sums['accuracy'] += accuracy
    sums['steps'] += 1

  def close_epoch(self, epoch: int, step: int, learning_rate: float,
                  seconds: float) -> dict:
    """The epoch's training row (means over its steps); starts the next epoch's sums."""
    sums = self.progress['epoch_sums']
    n = max(sums['steps'], 1)
    self.progress['epoch_sums'] = self._zero()
    return {'epoch': epoch, 'step': step, 'learning_rate': learning_rate,
            'train_loss': sums['loss'] / n, 'train_accuracy': sums['accuracy'] / n,
            'epoch_seconds': seconds}

  def append(self, row: dict, evaluated: bool) -> None:
    """Adds ``row``, marking it best when its ``selection_score`` is.

    Ties go to the later epoch, as in the checkpoint manager's best_step().
    """
    previous_best = max((selection_score(r) for r in self.rows), default=-1)
    row['best'] = bool(evaluated and selection_score(row) >= previous_best)
    self.rows.append(row)

  def best(self) -> dict:
    if not self.rows:
      return {}
    return max(reversed(self.rows), key=selection_score)


class StepMetrics:
  """Train-step metrics left on the device until fetched, a batch of steps at a time.

  Reading a step's loss right after it runs would make the host wait for the
  device on every step; fetched every ``log_every_steps`` and at epoch end,
  the host stays ahead and the devices never wait for input.
  """

  def __init__(self, history: RunHistory, writer: reporting.MetricsWriter | None,
               schedule: Callable[[int], Any]):
    self._history = history
    self._writer = writer
    self._schedule = schedule
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Records step ``step``'s (not yet computed) metrics."""
    self._pending.append((step, metrics))

  def fetch(self, log_every_steps: int) -> int | None:
    """Adds the pending steps to the history; the first non-finite step, if any."""
    fetched = jax.device_get([m for _, m in self._pending])
    steps_done = [s for s, _ in self._pending]
    self._pending.clear()
    for step, m in zip(steps_done, fetched):
      if not bool(m['finite']):
        return step
      self._history.add_step(float(m['loss']), float(m['accuracy']))
      if self._writer is not None and (step + 1) % log_every_steps == 0:
        self._writer.write_scalars(step + 1, {
            'train/loss_step': float(m['loss']),
            'train/learning_rate': float(self._schedule(step + 1))})
    return None
