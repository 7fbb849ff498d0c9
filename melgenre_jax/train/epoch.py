"""Passes over a split with the current weights, and the epoch's log line and reports.

Validation (``evaluate_split``), BatchNorm statistics recomputed before it
(``population_batch_stats``), the feature statistics a fresh run standardises
with (``compute_feature_stats``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from melgenre_jax import inference
from melgenre_jax import metrics as metrics_lib
from melgenre_jax import reporting
from melgenre_jax import steps
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import features
from melgenre_jax.data import input_pipeline
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.runtime import parallel
from melgenre_jax.train.history import RunHistory


def evaluate_split(p_predict: Callable, variables: steps.ModelVariables,
                   segments: input_pipeline.SegmentSet, batch_size: int,
                   mesh, multilabel: bool = False) -> tuple[dict, np.ndarray]:
  """Segment/song accuracies and loss of one split, plus the raw probabilities.

  ``multilabel``: segment- and song-level (mean of segment probabilities)
  per-tag ROC-AUC/PR-AUC and the mean binary cross-entropy instead
  (``metrics.multilabel_summary``).
  """
  probs = inference.predict_arrays(p_predict, variables, segments.inputs, batch_size, mesh)
  labels = np.asarray(segments.labels)
  if multilabel:
    return metrics_lib.multilabel_summary(probs, labels, np.asarray(segments.song_index),
                                          len(segments.songs)), probs
  summary = metrics_lib.classification_summary(
      probs, labels, np.asarray(segments.song_index), len(segments.songs))
  picked = probs[np.arange(len(labels)), labels]
  summary['loss'] = float(-np.log(np.maximum(picked, 1e-12)).mean())
  return summary, probs


def population_batch_stats(p_stats: Callable, variables: steps.ModelVariables,
                           segments: input_pipeline.SegmentSet, batch_size: int,
                           max_batches: int, seed: int, mesh) -> Any:
  """BatchNorm statistics of up to ``max_batches`` training batches under the current weights.

  Replaces the running averages before an evaluation: with few steps an epoch
  (small sets), averages at momentum 0.99 still hold the early weights'
  statistics for 10+ epochs and an evaluation would read a broken model.
  """
  order = np.random.default_rng(seed).permutation(len(segments))
  count = max(1, min(max_batches, len(order) // batch_size))
  order = np.resize(order, count * batch_size)  # a set smaller than one batch repeats rows
  rows = parallel.process_slice(batch_size)
  per_batch = []
  for b in range(count):
    idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
    local = np.asarray(segments.inputs[idx], np.float32)[rows]
    # One call at a time: the calls share no data, and two in flight at once
    # could meet in each other's cross-device mean (CPU collectives abort on it).
    per_batch.append(jax.block_until_ready(
        p_stats(variables, parallel.global_batch({'inputs': local}, mesh)['inputs'])))
  return jax.device_put(steps.pool_batch_stats(per_batch), parallel.replicated(mesh))


def validation_row(val: dict, multilabel: bool) -> dict:
  """The epoch row's validation columns from ``evaluate_split``'s summary."""
  if multilabel:
    return {'val_loss': val['loss'],
            'val_segment_roc_auc': val['segment']['roc_auc_macro'],
            'val_segment_pr_auc': val['segment']['pr_auc_macro'],
            'val_song_roc_auc': val['song']['roc_auc_macro'],
            'val_song_pr_auc': val['song']['pr_auc_macro']}
  return {'val_loss': val['loss'], 'val_segment_accuracy': val['segment_accuracy'],
          'val_song_accuracy': val['song_accuracy'],
          'val_song_vote_accuracy': val['song_vote_accuracy']}


def log_epoch(row: dict) -> None:
  if 'val_song_roc_auc' in row:
    logging.info(
        'epoch %d step %d: train loss %.4f tag acc %.3f | val loss %.4f song ROC-AUC %.3f '
        'PR-AUC %.3f, segment ROC-AUC %.3f PR-AUC %.3f%s (%.1fs)', row['epoch'], row['step'],
        row['train_loss'], row['train_accuracy'], row['val_loss'], row['val_song_roc_auc'],
        row['val_song_pr_auc'], row['val_segment_roc_auc'], row['val_segment_pr_auc'],
        ' *best*' if row['best'] else '', row['epoch_seconds'])
    return
  if 'val_loss' not in row:  # no validation this epoch (or none at all)
    logging.info('epoch %d step %d: train loss %.4f acc %.3f (%.1fs)', row['epoch'],
                 row['step'], row['train_loss'], row['train_accuracy'], row['epoch_seconds'])
    return
  logging.info(
      'epoch %d step %d: train loss %.4f acc %.3f | val loss %.4f segment acc '
      '%.3f song acc %.3f%s (%.1fs)', row['epoch'], row['step'], row['train_loss'],
      row['train_accuracy'], row['val_loss'], row['val_segment_accuracy'],
      row['val_song_accuracy'],
      ' *best*' if row['best'] else '', row['epoch_seconds'])


def write_epoch_reports(writer: reporting.MetricsWriter, history: RunHistory, step: int,
                        row: dict, workdir: str) -> None:
  """TensorBoard scalars, metrics.json/csv and the training-curve plot."""
  writer.write_scalars(step, {f'epoch/{k}': v for k, v in row.items()
                              if isinstance(v, float)})
  writer.write_history(history.rows)
  reporting.plot_training_curves(history.rows, workdir_lib.path(workdir, workdir_lib.TRAINING_CURVES_PLOT))


def compute_feature_stats(spec: InputSpec, segments: input_pipeline.SegmentSet,
                          max_segments: int = 2048) -> tuple[np.ndarray, np.ndarray]:
  """Per-band mean/std of training features before standardising (a deterministic subset)."""
  n = len(segments)
  idx = np.linspace(0, n - 1, num=min(n, max_segments)).astype(int)
  raw = spec.device_preprocess(normalize=False)
  fn = jax.jit(lambda x: raw(x, jnp.zeros(spec.n_mels), jnp.ones(spec.n_mels)))
  batches = [np.asarray(fn(jnp.asarray(segments.inputs[idx[i:i + 64]])))
             for i in range(0, len(idx), 64)]
  mean, std = features.band_stats(batches)
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)
