"""Classification metrics at segment and song level (numpy, host side).

A song's prediction is the mean of its segments' probabilities; the majority
vote of its segments' labels is reported beside it. Songs, not segments, are
what a user classifies, so song-level accuracy is the headline number.

Multi-label tagging (``config.task='multilabel'``) is scored per tag by
ROC-AUC and PR-AUC (average precision), with their macro means over the tags
that can be scored, at segment and song level.

Per-class scores, confusion matrices and ranking metrics are scikit-learn's.
It is imported where a score is computed, not with this module: predict and
serve import this module through calibration and would otherwise pay about a
second of start-up for it.
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


def per_class_report(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> dict[str, np.ndarray | float]:
  """Confusion matrix (rows = true class), per-class precision, recall, F1, support, macro-F1.

  An undefined precision or recall (a class never predicted, or absent) is 0.
  Macro-F1 averages the classes that occur as label or prediction, scikit-learn's
  default: a genre absent from a small test set is not counted as a 0.
  """
  if not len(labels):  # scikit-learn refuses empty input; an empty level scores 0
    zeros = np.zeros(num_classes)
    return {'confusion_matrix': np.zeros((num_classes, num_classes), np.int64),
            'precision': zeros, 'recall': zeros, 'f1': zeros,
            'support': np.zeros(num_classes, np.int64), 'macro_f1': 0.0}
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top
  classes = np.arange(num_classes)
  cm = sk.confusion_matrix(labels, predictions, labels=classes)
  precision, recall, f1, support = sk.precision_recall_fscore_support(
      labels, predictions, labels=classes, zero_division=0)
  macro_f1 = float(sk.f1_score(labels, predictions, average='macro', zero_division=0))
  return {'confusion_matrix': cm, 'precision': precision, 'recall': recall, 'f1': f1,
          'support': support, 'macro_f1': macro_f1}


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


def tag_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray | float]:
  """Per-tag ROC-AUC and PR-AUC of multi-hot ``labels`` ``[N, K]`` against scores ``[N, K]``.

  A tag that is present in every row or in none has no ranking to score: it
  gets NaN and is left out of the macro means (sklearn would raise, or warn
  and score it 0). ``num_scored`` says how many tags the means cover; the
  means are NaN when none can be scored.
  """
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels) > 0.5
  probs = np.asarray(probs, np.float64)
  k = probs.shape[1] if probs.ndim == 2 else 0
  scored = np.array([0 < labels[:, j].sum() < len(labels) for j in range(k)], bool)
  roc = np.array([sk.roc_auc_score(labels[:, j], probs[:, j]) if scored[j] else np.nan
                  for j in range(k)], np.float64)
  pr = np.array([sk.average_precision_score(labels[:, j], probs[:, j]) if scored[j] else np.nan
                 for j in range(k)], np.float64)
  return {
      'roc_auc': roc, 'pr_auc': pr,
      'roc_auc_macro': float(roc[scored].mean()) if scored.any() else float('nan'),
      'pr_auc_macro': float(pr[scored].mean()) if scored.any() else float('nan'),
      'num_scored': int(scored.sum()),
      'positives': labels.sum(axis=0).astype(np.int64) if k else np.zeros(0, np.int64),
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
