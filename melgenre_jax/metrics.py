"""Classification metrics at segment and song level (numpy, host side).

A song's prediction is the mean of its segments' probabilities; the majority
vote of its segments' labels is reported beside it. Songs, not segments, are
what a user classifies, so song-level accuracy is the headline number.

Multi-label tagging (``config.task='multilabel'``) is scored per tag by
ROC-AUC and PR-AUC (average precision), with their macro means over the tags
that can be scored, at segment and song level; the functions equal
scikit-learn's (tested), without needing it at run time.
"""

from __future__ import annotations

import numpy as np


def song_probabilities(probs: np.ndarray, song_index: np.ndarray,
                       num_songs: int) -> np.ndarray:
  """Mean segment probability per song, ``[num_songs, classes]``.

  Songs with no segment in ``song_index`` get a row of NaN (callers drop them).
  """
  sums = np.zeros((num_songs, probs.shape[1]), np.float64)
  np.add.at(sums, song_index, probs)
  counts = np.bincount(song_index, minlength=num_songs)[:, None]
  with np.errstate(invalid='ignore', divide='ignore'):
    return sums / counts


def song_votes(probs: np.ndarray, song_index: np.ndarray,
               num_songs: int) -> np.ndarray:
  """Majority vote of segment labels per song (ties go to the lower class)."""
  votes = np.zeros((num_songs, probs.shape[1]), np.int64)
  np.add.at(votes, (song_index, probs.argmax(axis=1)), 1)
  return votes.argmax(axis=1)


def song_labels(labels: np.ndarray, song_index: np.ndarray,
                num_songs: int) -> np.ndarray:
  """Label of each song, taken from its segments (all share one label)."""
  out = np.full(num_songs, -1, np.int64)
  out[song_index] = labels
  return out


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """Counts, rows = true class, columns = predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, predictions), 1)
  return cm


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall and F1 per class from a confusion matrix (0 where undefined)."""
  tp = np.diag(cm).astype(np.float64)
  predicted = cm.sum(axis=0)
  actual = cm.sum(axis=1)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp),
                 where=denom > 0)
  return {'precision': precision, 'recall': recall, 'f1': f1,
          'support': actual}


def classification_summary(probs: np.ndarray, labels: np.ndarray,
                           song_index: np.ndarray, num_songs: int) -> dict:
  """Segment and song accuracies plus the song-level predictions behind them."""
  seg_pred = probs.argmax(axis=1)
  present = np.bincount(song_index, minlength=num_songs) > 0
  s_probs = song_probabilities(probs, song_index, num_songs)[present]
  s_labels = song_labels(labels, song_index, num_songs)[present]
  s_pred = s_probs.argmax(axis=1)
  s_vote = song_votes(probs, song_index, num_songs)[present]
  return {
      'segment_accuracy': float((seg_pred == labels).mean()) if len(labels) else 0.0,
      'song_accuracy': float((s_pred == s_labels).mean()) if len(s_labels) else 0.0,
      'song_vote_accuracy': float((s_vote == s_labels).mean()) if len(s_labels) else 0.0,
      'num_segments': int(len(labels)),
      'num_songs': int(present.sum()),
      'song_ids': np.flatnonzero(present),
      'song_probs': s_probs,
      'song_labels': s_labels,
      'song_predictions': s_pred,
      'song_vote_predictions': s_vote,
  }


# ----------------------------------------------------------------------------
# Multi-label tagging: ranking metrics per tag (config.task='multilabel').


def _distinct_thresholds(y_true: np.ndarray, y_score: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Cumulative true and false positives at each distinct score, highest first.

  Tied scores form one threshold, as in scikit-learn's ``roc_curve`` and
  ``precision_recall_curve``: a tie between a positive and a negative counts
  half in ROC-AUC, and PR-AUC steps over the tie at once.
  """
  order = np.argsort(-y_score, kind='mergesort')
  score, truth = y_score[order], y_true[order]
  last = np.r_[np.flatnonzero(np.diff(score)), truth.size - 1]  # end of each tie group
  tps = np.cumsum(truth, dtype=np.float64)[last]
  fps = (last + 1) - tps
  return tps, fps


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
  """Area under the ROC curve of one binary label; NaN unless both classes occur.

  Trapezoids over the curve of distinct thresholds: equal to
  ``sklearn.metrics.roc_auc_score`` (ties included).
  """
  y_true = np.asarray(y_true, np.float64) > 0.5
  y_score = np.asarray(y_score, np.float64)
  n_pos = int(y_true.sum())
  n_neg = y_true.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  tps, fps = _distinct_thresholds(y_true, y_score)
  tpr = np.r_[0.0, tps / n_pos]
  fpr = np.r_[0.0, fps / n_neg]
  return float(np.trapezoid(tpr, fpr))


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
  """PR-AUC of one binary label as average precision; NaN unless both classes occur.

  ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (no interpolation):
  equal to ``sklearn.metrics.average_precision_score``.
  """
  y_true = np.asarray(y_true, np.float64) > 0.5
  y_score = np.asarray(y_score, np.float64)
  n_pos = int(y_true.sum())
  if n_pos == 0 or n_pos == y_true.size:
    return float('nan')
  tps, fps = _distinct_thresholds(y_true, y_score)
  precision = tps / (tps + fps)
  recall = tps / n_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tag_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray | float]:
  """Per-tag ROC-AUC and PR-AUC of multi-hot ``labels`` ``[N, K]`` against scores ``[N, K]``.

  A tag that is present in every row or in none has no ranking to score: it
  gets NaN and is left out of the macro means (sklearn would raise, or warn
  and score it 0). ``num_scored`` says how many tags the means cover; the
  means are NaN when none can be scored.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs)
  k = probs.shape[1] if probs.ndim == 2 else 0
  roc = np.array([roc_auc(labels[:, j], probs[:, j]) for j in range(k)], np.float64)
  pr = np.array([average_precision(labels[:, j], probs[:, j]) for j in range(k)], np.float64)
  scored = np.isfinite(roc)
  return {
      'roc_auc': roc, 'pr_auc': pr,
      'roc_auc_macro': float(roc[scored].mean()) if scored.any() else float('nan'),
      'pr_auc_macro': float(pr[scored].mean()) if scored.any() else float('nan'),
      'num_scored': int(scored.sum()),
      'positives': (labels > 0.5).sum(axis=0).astype(np.int64) if k else np.zeros(0, np.int64),
  }


def binary_cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean binary cross-entropy over rows and tags (the multi-label training loss)."""
  if not np.asarray(probs).size:
    return 0.0
  p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
  y = np.asarray(labels, np.float64)
  return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def multilabel_summary(probs: np.ndarray, labels: np.ndarray, song_index: np.ndarray,
                       num_songs: int) -> dict:
  """Segment- and song-level tag scores; a song's scores are its segments' mean.

  ``labels`` are multi-hot ``[N, K]``; a song's labels are those of its
  segments (all share them).
  """
  present = np.bincount(song_index, minlength=num_songs) > 0
  s_probs = song_probabilities(probs, song_index, num_songs)[present]
  s_labels = np.zeros((num_songs, probs.shape[1]), np.float32)
  s_labels[song_index] = labels
  s_labels = s_labels[present]
  return {
      'segment': tag_scores(labels, probs),
      'song': tag_scores(s_labels, s_probs),
      'loss': binary_cross_entropy(probs, labels),
      'num_segments': int(len(labels)),
      'num_songs': int(present.sum()),
      'song_ids': np.flatnonzero(present),
      'song_probs': s_probs,
      'song_labels': s_labels,
  }
