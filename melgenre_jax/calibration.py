"""Calibrated confidence: temperature scaling of song-level probabilities.

The model's softmax is not a calibrated probability: a tiny or over-trained
network says "metal 0.73" about 30 s of silence. Temperature scaling
(Guo et al., 2017) fixes the scale with one number ``T`` fitted on held-out
songs:

  song probability q = mean of the song's raw segment probabilities
  calibrated         = softmax(log(q) / T)

It is fitted on, and applied to, the song-level ``q`` that eval and predict
already call a song's probabilities; the same ``T`` applied to one segment's
probabilities gives calibrated segment probabilities. Both maps are
monotonic in each row, so the argmax (and so every accuracy, F1 and
confusion matrix) is exactly what it was without calibration: only the
confidence moves.

``T`` always comes from the validation split (never test) and is stored
with the checkpoint in ``WORKDIR/calibration.json``, keyed by checkpoint
step::

  {"<step>": {"temperature": T, "fitted_on": "validation", "songs": n,
              "song_ece_before": .., "song_ece_after": ..,
              "nll_before": .., "nll_after": .., "applied": true,
              "fitted_temperature": T_fit, "cross_fitted_gain": .., "reason": ""}}

A fitted ``T`` is applied only when it can be trusted: with at least
``config.calibration.min_songs`` validation songs, a fit inside the search
range, and a song NLL that improves by ``config.calibration.min_nll_gain``
on songs the fit did not see (``cross_fitted_gain``: T fitted on the other
folds, scored on each held-out one). Otherwise the entry records T = 1 with
``applied: false`` and the ``reason``, said once in the log: on 2 or 4 songs a
fitted T is noise (it once pinned at 0.05 and raised the song ECE from 0.06
to 0.47).

It is fitted at the end of every training run (``train.calibrate_best``)
and by ``--mode=calibrate`` (modes/calibrate.py), both through
``calibrate_model``; ``inference.load_for_inference`` reads it for the step it
restores.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from scipy import optimize

from melgenre_jax import metrics as metrics_lib
from melgenre_jax import reporting
from melgenre_jax.runtime import atomic
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import input_pipeline

NUM_BINS = 15
# Search range of T. Outside it the validation set is too small or too easy to
# say anything (a value at the bound is logged as such).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_EPS = 1e-12
# When configs/default.py's config.calibration is missing (a workdir's
# config.json from before it existed): the same values.
DEFAULT_MIN_SONGS = 20
DEFAULT_MIN_NLL_GAIN = 0.01
# Folds of the cross-fitted check (leave-one-out below this many songs).
CROSS_FIT_FOLDS = 10


# ----------------------------------------------------------------------------
# The maths (numpy, pure).


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
  """``softmax(log(probs) / T)`` row-wise: same argmax, rescaled confidence.

  ``probs`` [..., C] rows of probabilities; zeros are clipped so log stays
  finite. T = 1 gives the rows back (renormalised), T > 1 flattens them.
  """
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0, got {temperature}')
  logits = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0)) / float(temperature)
  logits -= logits.max(axis=-1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(axis=-1, keepdims=True)


def song_probabilities(segment_probs: np.ndarray, temperature: float) -> np.ndarray:
  """Calibrated genre probabilities ``[C]`` of one song from its segments' raw ``[n, C]``."""
  return apply_temperature(np.asarray(segment_probs, np.float64).mean(axis=0), temperature)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean ``-log p(label)`` (clipped like the eval loss), 0 for no rows."""
  labels = np.asarray(labels)
  if not len(labels):
    return 0.0
  picked = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
  return float(-np.log(np.maximum(picked, _EPS)).mean())


def fit_temperature(song_probs: np.ndarray, labels: np.ndarray) -> float:
  """The T minimising the NLL of ``apply_temperature(song_probs, T)``.

  The NLL is convex in 1/T (log-sum-exp of a linear function minus a linear
  one), hence unimodal in log T: a bounded scalar search over log T finds its
  minimum, deterministically. A minimum at a bound of
  [MIN_TEMPERATURE, MAX_TEMPERATURE] means the set cannot pin T down.
  """
  labels = np.asarray(labels)
  if not len(labels):
    raise ValueError('fit_temperature needs at least one labelled row')
  log_probs = np.log(np.clip(np.asarray(song_probs, np.float64), _EPS, 1.0))
  rows = np.arange(len(labels))

  def nll(log_t: float) -> float:
    z = log_probs / math.exp(log_t)
    z_max = z.max(axis=1)
    lse = z_max + np.log(np.exp(z - z_max[:, None]).sum(axis=1))
    return float((lse - z[rows, labels]).mean())

  result = optimize.minimize_scalar(
      nll, bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)),
      method='bounded', options={'xatol': 1e-5})
  return float(math.exp(result.x))


def cross_fitted_gain(song_probs: np.ndarray, labels: np.ndarray,
                      folds: int = CROSS_FIT_FOLDS) -> float:
  """Mean song NLL at T = 1 minus that of T fitted without each song.

  Songs are dealt to ``min(n, folds)`` folds in order (leave-one-out for few
  songs); each fold is scored with the T fitted on the others, so the gain
  is the one a new song can expect, not the fit's own (which is never < 0).
  """
  labels = np.asarray(labels)
  song_probs = np.asarray(song_probs, np.float64)
  n = len(labels)
  if n < 2:
    return 0.0
  fold_of = np.arange(n) % min(n, folds)
  held_out = np.zeros((n, song_probs.shape[1]))
  for fold in np.unique(fold_of):
    test = fold_of == fold
    t = fit_temperature(song_probs[~test], labels[~test])
    held_out[test] = apply_temperature(song_probs[test], t)
  return negative_log_likelihood(song_probs, labels) - negative_log_likelihood(held_out,
                                                                               labels)


def why_not_applied(temperature: float, songs: int, gain: float, min_songs: int,
                    min_gain: float) -> str:
  """'' when a fitted T can be applied, else the reason T stays 1 (one line)."""
  if songs < min_songs:
    return (f'{songs} validation songs, fewer than config.calibration.min_songs = '
            f'{min_songs}: too few to fit a temperature that holds on new songs')
  if not MIN_TEMPERATURE * 1.001 < temperature < MAX_TEMPERATURE * 0.999:
    return (f'the fit ran to the search bound (T = {temperature:.3g}): these {songs} '
            'songs cannot pin it down')
  if not gain >= min_gain:
    return (f'T = {temperature:.3g} improves the song NLL of held-out validation songs by '
            f'{gain:.4f} (cross-fitted), less than config.calibration.min_nll_gain = '
            f'{min_gain:g}')
  return ''


def reliability_bins(probs: np.ndarray, labels: np.ndarray,
                     num_bins: int = NUM_BINS) -> dict[str, np.ndarray]:
  """Top-1 reliability-diagram data on equal-width confidence bins.

  Bin b holds the rows whose top probability is in (edges[b], edges[b+1]]
  (the first bin also takes 0). Returns ``edges`` [B+1], per bin the mean
  ``confidence``, ``accuracy`` (NaN where empty) and ``count``.
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
  correct = (probs.argmax(axis=1) == labels) if len(probs) else np.zeros(0, bool)
  which = np.searchsorted(edges[1:-1], confidence, side='left')
  count = np.bincount(which, minlength=num_bins)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_conf = np.bincount(which, weights=confidence, minlength=num_bins) / count
    accuracy = np.bincount(which, weights=correct.astype(np.float64),
                           minlength=num_bins) / count
  return {'edges': edges, 'confidence': mean_conf, 'accuracy': accuracy, 'count': count}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               num_bins: int = NUM_BINS) -> float:
  """Top-1 ECE: sum over bins of (bin share) x |bin accuracy - bin mean confidence|."""
  bins = reliability_bins(probs, labels, num_bins)
  total = bins['count'].sum()
  if not total:
    return 0.0
  full = bins['count'] > 0
  gaps = np.abs(bins['accuracy'][full] - bins['confidence'][full])
  return float((bins['count'][full] / total * gaps).sum())


def bins_to_json(bins: dict[str, np.ndarray]) -> dict[str, list]:
  """Reliability bins as JSON lists (empty bins as null)."""
  def clean(values):
    return [None if not np.isfinite(v) else float(v) for v in values]
  return {'edges': [float(e) for e in bins['edges']],
          'confidence': clean(bins['confidence']), 'accuracy': clean(bins['accuracy']),
          'count': [int(c) for c in bins['count']]}


def level_summary(probs: np.ndarray, labels: np.ndarray, temperature: float,
                  num_bins: int = NUM_BINS) -> dict[str, Any]:
  """ECE, NLL and reliability bins of one level, before and after temperature T."""
  after = apply_temperature(probs, temperature) if len(labels) else probs
  bins_before = reliability_bins(probs, labels, num_bins)
  bins_after = reliability_bins(after, labels, num_bins)
  return {
      'ece_before': expected_calibration_error(probs, labels, num_bins),
      'ece_after': expected_calibration_error(after, labels, num_bins),
      'nll_before': negative_log_likelihood(probs, labels),
      'nll_after': negative_log_likelihood(after, labels),
      'reliability_before': bins_to_json(bins_before),
      'reliability_after': bins_to_json(bins_after),
  }


def songs_of(segment_probs: np.ndarray, labels: np.ndarray, song_index: np.ndarray,
             num_songs: int) -> tuple[np.ndarray, np.ndarray]:
  """Song-level ``q`` (mean of raw segment probabilities) and labels, songs present only."""
  summary = metrics_lib.classification_summary(segment_probs, labels, song_index, num_songs)
  return summary['song_probs'], summary['song_labels']


def fit_entry(segment_probs: np.ndarray, labels: np.ndarray, song_index: np.ndarray,
              num_songs: int, fitted_on: str = 'validation',
              min_songs: int = DEFAULT_MIN_SONGS,
              min_gain: float = DEFAULT_MIN_NLL_GAIN) -> dict[str, Any]:
  """Fits T on a split's songs; the ``calibration.json`` entry that records it.

  T stays 1 (``applied`` false, ``reason`` said once in the log) unless
  ``why_not_applied`` finds nothing against the fitted one.
  """
  q, y = songs_of(segment_probs, labels, song_index, num_songs)
  fitted = fit_temperature(q, y)
  at_bound = not MIN_TEMPERATURE * 1.001 < fitted < MAX_TEMPERATURE * 0.999
  gain = cross_fitted_gain(q, y) if len(y) >= min_songs and not at_bound else float('nan')
  reason = why_not_applied(fitted, len(y), gain, min_songs, min_gain)
  temperature = 1.0 if reason else fitted
  if reason:
    logging.warning('Calibration not applied (temperature 1): %s.', reason)
  calibrated = q if reason else apply_temperature(q, temperature)
  return {
      'temperature': temperature,
      'fitted_on': fitted_on,
      'songs': int(len(y)),
      'segments': int(len(labels)),
      'song_ece_before': expected_calibration_error(q, y),
      'song_ece_after': expected_calibration_error(calibrated, y),
      'nll_before': negative_log_likelihood(q, y),
      'nll_after': negative_log_likelihood(calibrated, y),
      'at_search_bound': bool(at_bound),
      'applied': not reason,
      'fitted_temperature': fitted,
      'cross_fitted_gain': None if math.isnan(gain) else gain,
      'reason': reason,
  }


def thresholds(config: ml_collections.ConfigDict) -> tuple[int, float]:
  """``(min_songs, min_nll_gain)`` of ``config.calibration``; defaults for older configs."""
  section = config.get('calibration') or {}
  return (int(section.get('min_songs', DEFAULT_MIN_SONGS)),
          float(section.get('min_nll_gain', DEFAULT_MIN_NLL_GAIN)))


# ----------------------------------------------------------------------------
# Storage: WORKDIR/calibration.json, keyed by checkpoint step.


def calibration_path(workdir: str) -> str:
  return workdir_lib.path(workdir, workdir_lib.CALIBRATION)


def read_calibrations(workdir: str) -> dict[str, dict[str, Any]]:
  """Every recorded entry by step (as a string); {} when none or unreadable."""
  path = calibration_path(workdir)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    logging.warning('Ignoring unreadable %s (%s); it is rewritten at the next '
                    'calibration.', path, e)
    return {}
  return data if isinstance(data, dict) else {}


def entry_for(workdir: str, step: int) -> dict[str, Any] | None:
  """The recorded calibration of checkpoint ``step``, or None."""
  entry = read_calibrations(workdir).get(str(int(step)))
  if entry is None or not float(entry.get('temperature', 0)) > 0:
    return None
  return entry


def temperature_for(workdir: str, step: int) -> float:
  """The recorded T of ``step``, or 1 (uncalibrated, said in the log)."""
  entry = entry_for(workdir, step)
  if entry is None:
    logging.info('Checkpoint step %d has no entry in %s: probabilities are uncalibrated '
                 '(temperature 1). Run --mode=calibrate to fit one on validation.',
                 step, calibration_path(workdir))
    return 1.0
  return float(entry['temperature'])


def record(workdir: str, step: int, entry: dict[str, Any]) -> None:
  """Adds/replaces ``step``'s entry; the file is replaced whole once written."""
  data = read_calibrations(workdir)
  data[str(int(step))] = entry
  data = dict(sorted(data.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))
  with atomic.replaced_when_written(calibration_path(workdir)) as f:
    json.dump(data, f, indent=1)


# ----------------------------------------------------------------------------
# Reliability diagram.


def plot_reliability(levels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                     temperature: float, path: str, title: str = '',
                     num_bins: int = NUM_BINS) -> None:
  """Reliability diagrams before and after T, one row per level.

  ``levels``: ``(name, labels, probs_before, probs_after)``. Bars are each
  bin's accuracy, the diagonal is perfect calibration, so a bar below it
  marks over-confidence; ECE and the bin counts say how much to trust it.
  """
  plt = reporting.plt
  fig, axes = plt.subplots(len(levels), 2, figsize=(9, 4 * len(levels)), squeeze=False)
  width = 1.0 / num_bins
  for row, (name, labels, before, after) in zip(axes, levels):
    for ax, probs, when in ((row[0], before, 'raw'), (row[1], after, f'T = {temperature:.3g}')):
      bins = reliability_bins(probs, labels, num_bins)
      centres = bins['edges'][:-1] + width / 2
      full = bins['count'] > 0
      ax.bar(centres[full], bins['accuracy'][full], width=width * 0.95,
             color='tab:blue', edgecolor='black', lw=0.5, label='accuracy')
      ax.bar(centres[full], bins['confidence'][full] - bins['accuracy'][full],
             bottom=bins['accuracy'][full], width=width * 0.95, color='tab:red',
             alpha=0.3, label='gap to confidence')
      for x, y, n in zip(centres[full], bins['accuracy'][full], bins['count'][full]):
        ax.text(x, min(float(y), 0.93) + 0.02, str(int(n)), ha='center', fontsize=7)
      ax.plot([0, 1], [0, 1], 'k--', lw=1, label='perfectly calibrated')
      ece = expected_calibration_error(probs, labels, num_bins)
      ax.set_title(f'{name}, {when}: ECE {ece:.3f}')
      ax.set_xlim(0, 1)
      ax.set_ylim(0, 1.02)
      ax.set_xlabel('confidence (top probability)')
      ax.set_ylabel('accuracy')
      ax.grid(alpha=0.3)
      ax.legend(loc='upper left', fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  reporting.save_figure(fig, path)
  plt.close(fig)


# ----------------------------------------------------------------------------
# Fitting a workdir's checkpoint.


def calibrate_model(model, segments: input_pipeline.SegmentSet, workdir: str,
                    fitted_on: str = 'validation') -> dict[str, Any]:
  """Predicts ``segments`` with ``model``, fits T, records it (process 0) and plots it.

  Every process must call it (prediction is collective). Returns the entry.
  """
  probs = model.predict(segments.inputs)
  labels = np.asarray(segments.labels)
  song_index = np.asarray(segments.song_index)
  min_songs, min_gain = thresholds(model.config)
  entry = fit_entry(probs, labels, song_index, len(segments.songs), fitted_on, min_songs,
                    min_gain)
  if jax.process_index() == 0:
    q, y = songs_of(probs, labels, song_index, len(segments.songs))
    plot_reliability(
        [(f'{fitted_on} songs', y, q, apply_temperature(q, entry['temperature'])),
         (f'{fitted_on} segments', labels, probs,
          apply_temperature(probs, entry['temperature']))],
        entry['temperature'], workdir_lib.path(workdir, workdir_lib.CALIBRATION_PLOT),
        title=f'step {model.step}, fitted on {entry["songs"]} {fitted_on} songs')
    # Last: a recorded step is complete (a rerun that finds it redoes nothing).
    record(workdir, model.step, entry)
  logging.info('Calibrated step %d on %d %s songs: temperature %.4f, song ECE %.4f -> '
               '%.4f, song NLL %.4f -> %.4f (written to %s).', model.step, entry['songs'],
               fitted_on, entry['temperature'], entry['song_ece_before'],
               entry['song_ece_after'], entry['nll_before'], entry['nll_after'],
               calibration_path(workdir))
  return entry


def has_songs(segments: input_pipeline.SegmentSet | None) -> bool:
  return segments is not None and len(segments) > 0
