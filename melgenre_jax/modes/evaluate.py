"""Held-out evaluation of a trained workdir: the numbers a result is quoted with.

``evaluate_workdir`` restores the best checkpoint (or ``--step``), predicts
every segment of the test split (validation when the run has none), and writes
``WORKDIR/eval/``:

  * ``report.json`` - segment and song accuracy (song = mean of segment
    probabilities, majority vote beside it), per-genre precision/recall/F1,
    macro-F1 and confusion matrices at both levels;
  * ``report.md`` - the same for people;
  * ``confusion_matrix.png`` (songs) and ``confusion_matrix_segments.png``,
    counts and row-normalised side by side;
  * ``predictions.npz`` - the raw segment probabilities, labels, song index and
    song keys, so every number above can be recomputed independently;
  * ``reliability.png`` - reliability diagrams of songs and segments, before
    and after the checkpoint's temperature (calibration.py).

Calibration: the temperature is the one fitted on validation for the
evaluated step (``WORKDIR/calibration.json``). A step without one is
calibrated on validation now and recorded there (the test split is never
used to fit it); a run without validation songs is reported uncalibrated
(T = 1). Temperature scaling keeps every argmax, so it changes no accuracy;
``report.json``'s ``calibration`` block gives the song- and segment-level
ECE and NLL before and after it on the evaluated split.

Multi-label runs (``config.task='multilabel'``): the report holds per-tag and
macro ROC-AUC and PR-AUC (average precision) at song and segment level (a tag
present in every evaluated song or in none cannot be ranked: null, and left
out of the means), the mean binary cross-entropy, and each song's true and
predicted tags (probability >= ``config.multilabel.threshold``);
``predictions.npz`` holds the multi-hot labels ``[N, tags]``. No confusion
matrices, reliability diagrams or calibration (sigmoid outputs are not
temperature-scaled).

Honesty checks: the split evaluated must be the one recorded at training time
(``WORKDIR/dataset.json``), and disjoint from the training songs; evaluating
on validation (which also picked the checkpoint) or on a leaky segment-level
split is flagged in the report.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from scipy import stats

from melgenre_jax import calibration
from melgenre_jax import checkpointing
from melgenre_jax import config_checks
from melgenre_jax import inference
from melgenre_jax import metrics as metrics_lib
from melgenre_jax import reporting
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import input_pipeline
from melgenre_jax.errors import DataError
from melgenre_jax.modes import eval_format
from melgenre_jax.runtime import atomic

EVAL_DIR = workdir_lib.EVAL


def accuracy_interval(correct: int, total: int) -> tuple[float, float]:
  """95% Wilson score interval of an accuracy (sane for small test sets); (0, 0) when empty."""
  if total <= 0:
    return (0.0, 0.0)
  ci = stats.binomtest(correct, total).proportion_ci(confidence_level=0.95, method='wilson')
  return (float(ci.low), float(ci.high))


def level_report(labels: np.ndarray, predictions: np.ndarray,
                 genres: list[str]) -> dict[str, Any]:
  """Accuracy, per-genre scores, macro-F1 and confusion matrix of one level."""
  scores = metrics_lib.per_class_report(labels, predictions, len(genres))
  cm = scores['confusion_matrix']
  correct = int(np.trace(cm))
  total = int(cm.sum())
  return {
      'accuracy': correct / total if total else 0.0,
      'accuracy_95ci': list(accuracy_interval(correct, total)),
      'correct': correct,
      'total': total,
      'macro_f1': scores['macro_f1'],
      'per_genre': {g: {'precision': float(scores['precision'][i]),
                        'recall': float(scores['recall'][i]),
                        'f1': float(scores['f1'][i]),
                        'support': int(scores['support'][i])}
                    for i, g in enumerate(genres)},
      'confusion_matrix': cm.tolist(),
  }


def build_report(probs: np.ndarray, labels: np.ndarray, song_index: np.ndarray,
                 song_keys: list[str], genres: list[str]) -> dict[str, Any]:
  """Every metric of the report from the raw predictions (pure; no I/O).

  ``probs`` [N, C] segment probabilities, ``labels`` [N], ``song_index`` [N]
  into ``song_keys``. Song prediction = argmax of the mean segment
  probability; ``vote`` = majority of segment argmaxes.
  """
  summary = metrics_lib.classification_summary(probs, labels, song_index,
                                               len(song_keys))
  segment = level_report(labels, probs.argmax(axis=1), genres)
  song = level_report(summary['song_labels'], summary['song_predictions'], genres)
  song['vote_accuracy'] = summary['song_vote_accuracy']
  picked = probs[np.arange(len(labels)), labels] if len(labels) else np.ones(0)
  songs = []
  for k, sid in enumerate(summary['song_ids']):
    p = summary['song_probs'][k]
    songs.append({'key': song_keys[sid],
                  'genre': genres[summary['song_labels'][k]],
                  'predicted': genres[summary['song_predictions'][k]],
                  'vote': genres[summary['song_vote_predictions'][k]],
                  'probability': float(p[summary['song_predictions'][k]]),
                  'segments': int(np.sum(song_index == sid))})
  label_counts = np.bincount(summary['song_labels'], minlength=len(genres))
  return {
      'genres': list(genres),
      'num_songs': int(summary['num_songs']),
      'num_segments': int(summary['num_segments']),
      'loss': float(-np.log(np.maximum(picked, 1e-12)).mean()) if len(picked) else 0.0,
      'chance_accuracy': 1.0 / len(genres),
      'majority_class_song_accuracy': (float(label_counts.max() / label_counts.sum())
                                       if label_counts.sum() else 0.0),
      'segment': segment,
      'song': song,
      'songs': songs,
  }


def _level_tags(scores: dict[str, Any], tags: list[str]) -> dict[str, Any]:
  """One level's tag scores as report JSON (NaN: the tag could not be scored)."""
  return {
      'roc_auc_macro': _finite_or_none(scores['roc_auc_macro']),
      'pr_auc_macro': _finite_or_none(scores['pr_auc_macro']),
      'num_scored_tags': int(scores['num_scored']),
      'per_tag': {t: {'roc_auc': _finite_or_none(scores['roc_auc'][i]),
                      'pr_auc': _finite_or_none(scores['pr_auc'][i]),
                      'positives': int(scores['positives'][i])}
                  for i, t in enumerate(tags)},
  }


def _finite_or_none(x: float) -> float | None:
  return float(x) if np.isfinite(x) else None


def build_multilabel_report(probs: np.ndarray, labels: np.ndarray, song_index: np.ndarray,
                            song_keys: list[str], tags: list[str],
                            threshold: float) -> dict[str, Any]:
  """The multi-label report from raw predictions (pure; no I/O).

  ``probs`` [N, K] segment sigmoid probabilities, ``labels`` [N, K] multi-hot;
  a song's scores are the mean of its segments'. Tags present in all or none
  of the evaluated songs (segments) are null and left out of the macro means.
  """
  summary = metrics_lib.multilabel_summary(probs, labels, song_index, len(song_keys))
  songs = []
  for k, sid in enumerate(summary['song_ids']):
    p, y = summary['song_probs'][k], summary['song_labels'][k]
    order = np.argsort(-p, kind='stable')
    songs.append({'key': song_keys[sid],
                  'tags': [tags[i] for i in np.flatnonzero(y > 0.5)],
                  'predicted': [tags[i] for i in order if p[i] >= threshold],
                  'top': [{'tag': tags[i], 'probability': float(p[i])} for i in order[:5]],
                  'segments': int(np.sum(song_index == sid))})
  return {
      'task': 'multilabel',
      'genres': list(tags),
      'num_songs': summary['num_songs'],
      'num_segments': summary['num_segments'],
      'loss': summary['loss'],
      'threshold': float(threshold),
      'segment': _level_tags(summary['segment'], tags),
      'song': _level_tags(summary['song'], tags),
      'songs': songs,
  }


def calibration_report(probs: np.ndarray, labels: np.ndarray, song_index: np.ndarray,
                       num_songs: int, temperature: float,
                       entry: dict[str, Any] | None) -> dict[str, Any]:
  """The ``calibration`` block: song/segment ECE and NLL before and after T (pure).

  ``entry`` is the step's calibration.json record (None: uncalibrated, T = 1).
  """
  q, y = calibration.songs_of(probs, labels, song_index, num_songs)
  return {
      'temperature': float(temperature),
      'calibrated': entry is not None,
      'fitted_on': entry.get('fitted_on') if entry else None,
      'fitted_songs': entry.get('songs') if entry else None,
      # A fit that could not be trusted (calibration.why_not_applied) leaves T = 1.
      'not_applied_reason': (entry.get('reason') or '') if entry else '',
      'num_bins': calibration.NUM_BINS,
      'song': calibration.level_summary(q, y, temperature),
      'segment': calibration.level_summary(probs, labels, temperature),
  }


def checked_split(dataset: input_pipeline.Dataset, workdir: str,
                  split_name: str) -> input_pipeline.SegmentSet:
  """``dataset``'s ``split_name`` split, refused unless it is the one recorded at training."""
  segments = dataset.test if split_name == 'test' else dataset.validation
  _check_split(workdir, split_name, segments, _is_leaky(dataset))
  return segments


def _is_leaky(dataset: input_pipeline.Dataset) -> bool:
  return bool(dataset.summary.get('split', {}).get('leaky', False))


def _step_calibration(model, dataset: input_pipeline.Dataset,
                      workdir: str) -> tuple[float, dict[str, Any] | None]:
  """The evaluated step's temperature and record, fitted on validation now if missing."""
  entry = calibration.entry_for(workdir, model.step)
  if entry is not None:
    return float(entry['temperature']), entry
  if dataset.validation is None or not len(dataset.validation):
    logging.warning('No validation songs to fit a temperature on: reporting uncalibrated '
                    'probabilities (temperature 1).')
    return 1.0, None
  logging.info('Step %d has no temperature yet: fitting it on validation.', model.step)
  entry = calibration.calibrate_model(model, checked_split(dataset, workdir, 'validation'),
                                      workdir)
  return float(entry['temperature']), entry


def _check_split(workdir: str, split_name: str,
                 segments: input_pipeline.SegmentSet, leaky: bool) -> None:
  """Refuses to evaluate songs other than the recorded held-out ones."""
  path = workdir_lib.path(workdir, workdir_lib.DATASET)
  recorded = workdir_lib.read_dataset_info(workdir)['splits']
  keys = [s.key for s in segments.songs]
  if leaky:
    return  # segment_random: every song is in every split, by construction
  if split_name in recorded and sorted(recorded[split_name]) != sorted(keys):
    raise DataError(
        f'The {split_name} split rebuilt now ({len(keys)} songs) differs from the '
        f'one recorded at training time in {path} ({len(recorded[split_name])} '
        'songs): the dataset folder, manifest or split settings changed since '
        'training, so held-out songs may have been trained on. Evaluate with the '
        "run's own config (drop --config) and the original data.")
  overlap = set(keys) & set(recorded.get('train', []))
  if overlap:
    raise DataError(f'{len(overlap)} {split_name} songs were training songs '
                     f'(e.g. {sorted(overlap)[:3]}); refusing to report a leaky score.')


def _checkpoint_info(workdir: str, step: int) -> dict[str, Any]:
  manager = checkpointing.create_manager(workdir, read_only=True)
  try:
    best, latest = manager.best_step(), manager.latest_step()
  finally:
    manager.close()
  return {'step': int(step), 'best_step': best, 'latest_step': latest,
          'is_best': best is not None and int(step) == int(best)}


def save_predictions(path: str, probs: np.ndarray, labels: np.ndarray,
                     song_index: np.ndarray, song_keys: list[str],
                     genres: list[str], step: int) -> None:
  np.savez_compressed(path, segment_probs=probs.astype(np.float32),
                      labels=labels.astype(np.int32),
                      song_index=song_index.astype(np.int32),
                      song_keys=np.asarray(song_keys, dtype=str),
                      genres=np.asarray(genres, dtype=str), step=np.int64(step))


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     step: int | None = None) -> dict[str, Any]:
  """Evaluates a trained workdir on its held-out split; writes WORKDIR/eval/.

  Returns the report dict (also in ``WORKDIR/eval/report.json``).
  """
  workdir = os.path.abspath(workdir)
  config_checks.check_workdir_compatible(config, workdir)
  model = inference.load_for_inference(config, workdir, step)
  if jax.process_index() == 0:  # a deleted metrics.json comes back from the checkpoint
    inference.rebuild_history_files(workdir)
  dataset = input_pipeline.load_dataset(config, workdir)
  leaky = _is_leaky(dataset)
  warnings = []
  if dataset.test is not None and len(dataset.test):
    split_name = 'test'
  else:
    split_name = 'validation'
    warnings.append('no test split: evaluated on validation, which also chose the '
                    'checkpoint, so these numbers are optimistic.')
  if leaky:
    warnings.append(f'split {config.data.split!r} is segment-level: segments of one '
                    'song are in several splits, so these numbers are inflated.')
  segments = checked_split(dataset, workdir, split_name)
  if model.multilabel:
    return _evaluate_multilabel(config, workdir, model, segments, split_name, leaky,
                                warnings)
  temperature, entry = _step_calibration(model, dataset, workdir)

  probs = model.predict(segments.inputs)
  labels = np.asarray(segments.labels)
  song_index = np.asarray(segments.song_index)
  song_keys = [s.key for s in segments.songs]
  report = build_report(probs, labels, song_index, song_keys, model.genres)
  report['calibration'] = calibration_report(probs, labels, song_index, len(song_keys),
                                             temperature, entry)
  if entry is not None and entry.get('fitted_on') == split_name:
    warnings.append(f'the temperature was fitted on these {split_name} songs, so the '
                    'calibrated ECE is optimistic.')
  report.update(workdir=workdir, split=split_name, leaky_split=leaky,
                warnings=warnings, checkpoint=_checkpoint_info(workdir, model.step))

  if jax.process_index() == 0:
    out_dir = _write_report_files(workdir, report, eval_format.format_markdown(report), probs, labels,
                                  song_index, song_keys, model)
    reporting.plot_confusion_matrix(
        np.asarray(report['song']['confusion_matrix']), model.genres,
        os.path.join(out_dir, 'confusion_matrix.png'),
        title=f'{split_name} songs (step {model.step})')
    reporting.plot_confusion_matrix(
        np.asarray(report['segment']['confusion_matrix']), model.genres,
        os.path.join(out_dir, 'confusion_matrix_segments.png'),
        title=f'{split_name} segments (step {model.step})')
    q, y = calibration.songs_of(probs, labels, song_index, len(song_keys))
    calibration.plot_reliability(
        [(f'{split_name} songs', y, q, calibration.apply_temperature(q, temperature)),
         (f'{split_name} segments', labels, probs,
          calibration.apply_temperature(probs, temperature))],
        temperature, os.path.join(out_dir, 'reliability.png'),
        title=f'{split_name} split, step {model.step}')
    _announce(eval_format.format_table(report), out_dir)
  return report


def _evaluate_multilabel(config: ml_collections.ConfigDict, workdir: str, model,
                         segments: input_pipeline.SegmentSet, split_name: str, leaky: bool,
                         warnings: list[str]) -> dict[str, Any]:
  """``evaluate_workdir`` for a multi-label run: tag AUCs, no calibration or confusions."""
  probs = model.predict(segments.inputs)
  labels = np.asarray(segments.labels)
  song_index = np.asarray(segments.song_index)
  song_keys = [s.key for s in segments.songs]
  report = build_multilabel_report(probs, labels, song_index, song_keys, model.genres,
                                   float(config.multilabel.threshold))
  report.update(workdir=workdir, split=split_name, leaky_split=leaky,
                warnings=warnings, checkpoint=_checkpoint_info(workdir, model.step))
  if jax.process_index() == 0:
    out_dir = _write_report_files(workdir, report, eval_format.format_multilabel_markdown(report), probs,
                                  labels, song_index, song_keys, model)
    _announce(eval_format.format_multilabel_table(report), out_dir)
  return report


def _write_report_files(workdir: str, report: dict[str, Any], markdown: str, probs: np.ndarray,
                        labels: np.ndarray, song_index: np.ndarray, song_keys: list[str],
                        model) -> str:
  """WORKDIR/eval/: predictions.npz, report.json and report.md (the reports replaced when complete)."""
  out_dir = os.path.join(workdir, EVAL_DIR)
  os.makedirs(out_dir, exist_ok=True)
  save_predictions(os.path.join(out_dir, 'predictions.npz'), probs, labels,
                   song_index, song_keys, model.genres, model.step)
  with atomic.replaced_when_written(os.path.join(out_dir, 'report.json')) as f:
    json.dump(report, f, indent=1)
  with atomic.replaced_when_written(os.path.join(out_dir, 'report.md')) as f:
    f.write(markdown)
  return out_dir


def _announce(table: str, out_dir: str) -> None:
  print(table)  # CLI output
  print(f'Report: {os.path.join(out_dir, "report.md")}')
  logging.info('Evaluation written to %s.', out_dir)
