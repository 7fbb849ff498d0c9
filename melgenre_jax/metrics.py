"""Classification metrics at segment and song level (numpy, host side).

A song's prediction is the mean of its segments' probabilities; the majority
vote of its segments' labels is reported beside it. Songs, not segments, are
what a user classifies, so song-level accuracy is the headline number.
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
