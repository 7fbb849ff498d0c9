"""What a run leaves behind for people: metrics files, TensorBoard events, plots.

Only process 0 writes (callers check). Plots use matplotlib's Agg backend so
they work on headless machines.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


class MetricsWriter:
  """Per-epoch metrics to TensorBoard, ``metrics.json`` and ``metrics.csv``.

  The JSON/CSV files are rewritten whole from the history each time, so after
  a resume they hold exactly the epochs that the restored checkpoint knows.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if not self._tb:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def write_history(self, history: Sequence[dict]) -> None:
    if not self.enabled:
      return
    with open(os.path.join(self.workdir, 'metrics.json'), 'w') as f:
      json.dump(list(history), f, indent=1)
    keys: list[str] = []
    for row in history:
      keys += [k for k in row if k not in keys]
    with open(os.path.join(self.workdir, 'metrics.csv'), 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=keys)
      writer.writeheader()
      writer.writerows(history)

  def close(self) -> None:
    if self._tb:
      self._tb.close()


def plot_learning_rate(schedule: Callable[[int], float], total_steps: int,
                       steps_per_epoch: int, path: str) -> None:
  """The schedule over the whole run, x axis in epochs."""
  steps = np.arange(max(total_steps, 1) + 1)
  lrs = np.asarray([float(schedule(int(s))) for s in steps])
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.plot(steps / steps_per_epoch, lrs)
  ax.set_xlabel('epoch')
  ax.set_ylabel('learning rate')
  ax.set_title('Learning-rate schedule')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_training_curves(history: Sequence[dict], path: str) -> None:
  """Loss and accuracy per epoch, train vs validation, best epoch marked."""
  if not history:
    return
  epochs = [row['epoch'] for row in history]

  def series(key):
    return [row.get(key, np.nan) for row in history]

  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  ax_loss.plot(epochs, series('train_loss'), label='train')
  ax_loss.plot(epochs, series('val_loss'), label='validation')
  ax_loss.set_xlabel('epoch')
  ax_loss.set_ylabel('cross-entropy')
  ax_loss.set_title('Loss')
  ax_acc.plot(epochs, series('train_accuracy'), label='train (segments)')
  ax_acc.plot(epochs, series('val_segment_accuracy'), label='validation (segments)')
  ax_acc.plot(epochs, series('val_song_accuracy'), label='validation (songs)')
  song_acc = np.asarray(series('val_song_accuracy'), dtype=float)
  if np.isfinite(song_acc).any():
    best = int(np.nanargmax(song_acc))
    ax_acc.axvline(epochs[best], color='grey', ls='--', lw=1,
                   label=f'best epoch {epochs[best]}')
  ax_acc.set_xlabel('epoch')
  ax_acc.set_ylabel('accuracy')
  ax_acc.set_ylim(0, 1.02)
  ax_acc.set_title('Accuracy')
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
