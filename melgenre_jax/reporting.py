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

from absl import logging

from melgenre_jax import workdir as workdir_lib
from melgenre_jax.runtime import atomic


def progress_bar(iterable, total: int, desc: str, enabled: bool = True, initial: int = 0):
  """A tqdm bar on process 0 (to stderr), or the plain iterable."""
  import jax  # pylint: disable=g-import-not-at-top
  if not enabled or jax.process_index() != 0:
    return iterable
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False,
              dynamic_ncols=True, mininterval=1.0)


def save_figure(fig, path: str, dpi: int = 110) -> None:
  """A PNG that replaces ``path`` only once complete."""
  with atomic.replaced_when_written(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=dpi)


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
    if self.enabled:
      write_history_files(self.workdir, history)

  def close(self) -> None:
    if self._tb:
      self._tb.close()


def write_history_files(workdir: str, history: Sequence[dict]) -> None:
  """``metrics.json`` and ``metrics.csv``, rewritten whole from the history rows."""
  with atomic.replaced_when_written(workdir_lib.path(workdir, workdir_lib.METRICS_JSON)) as f:
    json.dump(list(history), f, indent=1)
  keys: list[str] = []
  for row in history:
    keys += [k for k in row if k not in keys]
  with atomic.replaced_when_written(workdir_lib.path(workdir, workdir_lib.METRICS_CSV),
                                    newline='') as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)


# The files derived from the history alone: a deleted one can be written again.
HISTORY_FILES = (workdir_lib.METRICS_JSON, workdir_lib.METRICS_CSV,
                 workdir_lib.TRAINING_CURVES_PLOT)


def rebuild_missing_history_files(workdir: str, history: Sequence[dict], source: str) -> list[str]:
  """Writes again those of ``HISTORY_FILES`` that are missing; the names written.

  The history travels in every checkpoint, so a deleted ``metrics.json`` (or
  its CSV, or the curves) need not stay lost. ``source`` says where the
  history came from, for the log line. Nothing happens without history rows.
  """
  missing = [n for n in HISTORY_FILES if not os.path.exists(workdir_lib.path(workdir, n))]
  if not missing or not history:
    return []
  if workdir_lib.METRICS_JSON in missing or workdir_lib.METRICS_CSV in missing:
    write_history_files(workdir, history)
  if workdir_lib.TRAINING_CURVES_PLOT in missing:
    plot_training_curves(history, workdir_lib.path(workdir, workdir_lib.TRAINING_CURVES_PLOT))
  logging.info('%s missing from %s: rebuilt from the history in %s (%d epochs).',
               ', '.join(missing), workdir, source, len(history))
  return missing


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
  save_figure(fig, path)
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
  multilabel = any('val_song_roc_auc' in row for row in history)
  if multilabel:  # tags: mean per-tag accuracy in training, ranking scores in validation
    ax_acc.plot(epochs, series('val_song_roc_auc'), label='validation song ROC-AUC')
    ax_acc.plot(epochs, series('val_song_pr_auc'), label='validation song PR-AUC')
    ax_acc.plot(epochs, series('val_segment_roc_auc'), label='validation segment ROC-AUC')
    song_acc = np.asarray(series('val_song_roc_auc'), dtype=float)
  else:
    ax_acc.plot(epochs, series('val_segment_accuracy'), label='validation (segments)')
    ax_acc.plot(epochs, series('val_song_accuracy'), label='validation (songs)')
    song_acc = np.asarray(series('val_song_accuracy'), dtype=float)
  if np.isfinite(song_acc).any():
    best = int(np.nanargmax(song_acc))
    ax_acc.axvline(epochs[best], color='grey', ls='--', lw=1,
                   label=f'best epoch {epochs[best]}')
  ax_acc.set_xlabel('epoch')
  ax_acc.set_ylabel('accuracy / AUC' if multilabel else 'accuracy')
  ax_acc.set_ylim(0, 1.02)
  ax_acc.set_title('Tag accuracy and AUC' if multilabel else 'Accuracy')
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)


def plot_confusion_matrix(cm: np.ndarray, genres: Sequence[str], path: str,
                          title: str = '') -> None:
  """Counts and row-normalised (recall per true genre) side by side.

  Counts show how much evidence there is; the normalised panel shows where
  each genre goes, whatever its support. Rows with no support stay blank.
  """
  cm = np.asarray(cm, dtype=np.int64)
  rows = cm.sum(axis=1, keepdims=True)
  norm = np.divide(cm, rows, out=np.full(cm.shape, np.nan), where=rows > 0)
  n = len(genres)
  size = max(4.0, 0.45 * n + 2.5)
  fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size))
  panels = ((axes[0], cm, 'counts', '{:d}', cm.max() if cm.size else 1),
            (axes[1], norm, 'row-normalised (recall)', '{:.2f}', 1.0))
  for ax, data, name, fmt, vmax in panels:
    image = ax.imshow(np.nan_to_num(data.astype(float), nan=0.0), cmap='Blues',
                      vmin=0, vmax=max(float(vmax), 1e-9))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), genres, rotation=45, ha='right')
    ax.set_yticks(range(n), genres)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    ax.set_title(f'{title} - {name}' if title else name)
    if n <= 20:
      for i in range(n):
        for j in range(n):
          value = data[i, j]
          if isinstance(value, float) and np.isnan(value):
            continue
          text = fmt.format(int(value) if fmt == '{:d}' else float(value))
          dark = float(value) > 0.6 * float(vmax)
          ax.text(j, i, text, ha='center', va='center', fontsize=8,
                  color='white' if dark else 'black')
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)


def plot_genre_timeline(segment_probs: np.ndarray, starts: Sequence[float],
                        segment_seconds: float, genres: Sequence[str], path: str,
                        title: str = '') -> None:
  """Genre probability over a song's time as a heatmap (genres x segments).

  Each column spans its segment's time range (overlapping segments are drawn
  at their start); the most likely genre of each segment is marked.
  """
  probs = np.asarray(segment_probs, dtype=float)
  starts = np.asarray(starts, dtype=float)
  n = len(genres)
  width = float(starts[1] - starts[0]) if len(starts) > 1 else float(segment_seconds)
  end = float(starts[-1] + width) if len(starts) else float(segment_seconds)
  fig, ax = plt.subplots(figsize=(min(16.0, 5.0 + 0.25 * len(starts)),
                                  1.2 + 0.35 * n))
  image = ax.imshow(probs.T, aspect='auto', origin='lower', cmap='magma',
                    vmin=0.0, vmax=1.0, interpolation='nearest',
                    extent=(float(starts[0]) if len(starts) else 0.0, end, -0.5, n - 0.5))
  ax.plot(starts + width / 2, probs.argmax(axis=1), 'o', color='cyan', ms=3,
          label='most likely')
  ax.set_yticks(range(n), genres)
  ax.set_xlabel('time (s)')
  ax.set_title(title or 'genre probability over time')
  fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label='probability')
  ax.legend(loc='upper right', fontsize=7)
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)
