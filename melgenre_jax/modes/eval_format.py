"""Eval's report as text: the console table and report.md, genre and multi-label.

Kept apart from ``evaluate.py`` (which computes the report) because cv's
summary reuses the markdown confusion matrix, and formatting needs nothing
from JAX or the workdir.
"""

from __future__ import annotations

from typing import Any

def _pct(x: float) -> str:
  return f'{100 * x:.1f}%'


def format_table(report: dict[str, Any]) -> str:
  """The short stdout summary: headline numbers, then per-genre song scores."""
  s, g = report['song'], report['segment']
  lo, hi = s['accuracy_95ci']
  lines = [
      f"{report['split']} split, checkpoint step {report['checkpoint']['step']}: "
      f"{report['num_songs']} songs, {report['num_segments']} segments, "
      f"{len(report['genres'])} genres (chance {_pct(report['chance_accuracy'])})",
      f"  song accuracy     {_pct(s['accuracy']):>7}  (95% CI {_pct(lo)}-{_pct(hi)}; "
      f"majority vote {_pct(s['vote_accuracy'])})",
      f"  segment accuracy  {_pct(g['accuracy']):>7}",
      f"  song macro-F1     {s['macro_f1']:.3f}   segment macro-F1 {g['macro_f1']:.3f}",
      _calibration_line(report.get('calibration')),
      '',
      f"  {'genre':<14}{'precision':>10}{'recall':>8}{'F1':>7}{'songs':>7}",
  ]
  for genre, sc in s['per_genre'].items():
    lines.append(f"  {genre:<14}{sc['precision']:>10.3f}{sc['recall']:>8.3f}"
                 f"{sc['f1']:>7.3f}{sc['support']:>7d}")
  for w in report['warnings']:
    lines.append(f'  WARNING: {w}')
  return '\n'.join(lines)


def _auc(x: float | None) -> str:
  return '  n/a' if x is None else f'{x:.3f}'


def format_multilabel_table(report: dict[str, Any]) -> str:
  """The stdout summary of a multi-label report: macro AUCs, then per-tag song scores."""
  s, g = report['song'], report['segment']
  lines = [
      f"{report['split']} split, checkpoint step {report['checkpoint']['step']}: "
      f"{report['num_songs']} songs, {report['num_segments']} segments, "
      f"{len(report['genres'])} tags",
      f"  song ROC-AUC      {_auc(s['roc_auc_macro'])}   PR-AUC {_auc(s['pr_auc_macro'])}   "
      f"(macro over {s['num_scored_tags']} tags)",
      f"  segment ROC-AUC   {_auc(g['roc_auc_macro'])}   PR-AUC {_auc(g['pr_auc_macro'])}",
      '',
      f"  {'tag':<14}{'ROC-AUC':>9}{'PR-AUC':>8}{'songs':>7}",
  ]
  for tag, sc in s['per_tag'].items():
    lines.append(f"  {tag:<14}{_auc(sc['roc_auc']):>9}{_auc(sc['pr_auc']):>8}"
                 f"{sc['positives']:>7d}")
  for w in report['warnings']:
    lines.append(f'  WARNING: {w}')
  return '\n'.join(lines)


def format_multilabel_markdown(report: dict[str, Any]) -> str:
  """``report.md`` of a multi-label run: what was evaluated, macro and per-tag AUCs."""
  s, g = report['song'], report['segment']
  ck = report['checkpoint']
  out = [
      f"# Evaluation of `{report['workdir']}` (multi-label tags)", '',
      f"- split: **{report['split']}** ({report['num_songs']} songs, "
      f"{report['num_segments']} segments, {len(report['genres'])} tags)",
      f"- checkpoint: step {ck['step']}" + (' (best by validation song ROC-AUC)'
                                            if ck['is_best'] else
                                            f" (best is {ck['best_step']})"),
      f"- predicted tags: song probability >= {report['threshold']:g}", '',
  ]
  for w in report['warnings']:
    out += [f'> **Warning:** {w}', '']
  out += [
      '| level | ROC-AUC (macro) | PR-AUC (macro) | tags scored |', '|---|---|---|---|',
      f"| song (mean of segment probabilities) | {_auc(s['roc_auc_macro'])} | "
      f"{_auc(s['pr_auc_macro'])} | {s['num_scored_tags']} |",
      f"| segment | {_auc(g['roc_auc_macro'])} | {_auc(g['pr_auc_macro'])} | "
      f"{g['num_scored_tags']} |", '',
      f"Mean binary cross-entropy per segment and tag: {report['loss']:.4f}", '',
      'A tag present in every evaluated song or in none cannot be ranked: it shows n/a '
      'and is left out of the macro means.', '',
      '## Per tag', '',
      '| tag | song ROC-AUC | song PR-AUC | segment ROC-AUC | segment PR-AUC | songs |',
      '|---|---|---|---|---|---|',
  ]
  for tag, sc in s['per_tag'].items():
    sg = g['per_tag'][tag]
    out.append(f"| {tag} | {_auc(sc['roc_auc'])} | {_auc(sc['pr_auc'])} | "
               f"{_auc(sg['roc_auc'])} | {_auc(sg['pr_auc'])} | {sc['positives']} |")
  out += ['', '## Songs', '', '| song | tags | predicted |', '|---|---|---|']
  out += [f"| {x['key']} | {', '.join(x['tags'])} | {', '.join(x['predicted']) or '-'} |"
          for x in report['songs']]
  out += ['', 'Raw segment probabilities: `predictions.npz` (segment_probs, labels '
          '[multi-hot], song_index, song_keys, genres [the tags]).', '']
  return '\n'.join(out)


def _calibration_line(c: dict[str, Any] | None) -> str:
  if not c:
    return '  calibration       none'
  how = (f"T {c['temperature']:.3f} from {c['fitted_on']}" if c['calibrated']
         else 'uncalibrated (T 1)')
  if c.get('not_applied_reason'):
    how = f"T 1, a fitted T not applied ({c['not_applied_reason']})"
  return (f"  calibration       {how}: song ECE {c['song']['ece_before']:.3f} -> "
          f"{c['song']['ece_after']:.3f}, segment ECE {c['segment']['ece_before']:.3f} -> "
          f"{c['segment']['ece_after']:.3f}")


def md_confusion(cm: list[list[int]], genres: list[str]) -> list[str]:
  head = '| true \\ predicted | ' + ' | '.join(genres) + ' |'
  rows = [head, '|' + '---|' * (len(genres) + 1)]
  for g, row in zip(genres, cm):
    rows.append(f'| **{g}** | ' + ' | '.join(str(v) for v in row) + ' |')
  return rows


def _md_calibration(c: dict[str, Any] | None) -> list[str]:
  if not c:
    return []
  if c['calibrated']:
    how = (f"temperature {c['temperature']:.3f}, fitted on {c['fitted_songs']} "
           f"{c['fitted_on']} songs")
  else:
    how = 'uncalibrated (temperature 1: no validation songs to fit one on)'
  if c.get('not_applied_reason'):
    how = f"temperature 1: the fitted one is not applied ({c['not_applied_reason']})"
  return [f"Calibration ({how}): song ECE {c['song']['ece_before']:.3f} -> "
          f"{c['song']['ece_after']:.3f}, segment ECE {c['segment']['ece_before']:.3f} -> "
          f"{c['segment']['ece_after']:.3f} (accuracy unchanged; "
          '[reliability diagrams](reliability.png)).', '']


def format_markdown(report: dict[str, Any]) -> str:
  """``report.md``: what was evaluated, headline numbers, per-genre, confusions."""
  s, g = report['song'], report['segment']
  ck = report['checkpoint']
  lo, hi = s['accuracy_95ci']
  out = [
      f"# Evaluation of `{report['workdir']}`", '',
      f"- split: **{report['split']}** ({report['num_songs']} songs, "
      f"{report['num_segments']} segments)",
      f"- checkpoint: step {ck['step']}" + (' (best by validation song accuracy)'
                                            if ck['is_best'] else
                                            f" (best is {ck['best_step']})"),
      f"- chance accuracy {_pct(report['chance_accuracy'])}; always predicting the "
      f"most common genre: {_pct(report['majority_class_song_accuracy'])} of songs", '',
  ]
  for w in report['warnings']:
    out += [f'> **Warning:** {w}', '']
  out += [
      '| level | accuracy | 95% CI | macro-F1 |', '|---|---|---|---|',
      f"| song (mean of segment probabilities) | {_pct(s['accuracy'])} | "
      f"{_pct(lo)}-{_pct(hi)} | {s['macro_f1']:.3f} |",
      f"| song (majority vote of segments) | {_pct(s['vote_accuracy'])} | | |",
      f"| segment | {_pct(g['accuracy'])} | {_pct(g['accuracy_95ci'][0])}-"
      f"{_pct(g['accuracy_95ci'][1])} | {g['macro_f1']:.3f} |", '',
      f"Mean cross-entropy per segment: {report['loss']:.4f}", '',
      *_md_calibration(report.get('calibration')),
      '## Per genre (songs)', '',
      '| genre | precision | recall | F1 | songs |', '|---|---|---|---|---|',
  ]
  for genre, sc in s['per_genre'].items():
    out.append(f"| {genre} | {sc['precision']:.3f} | {sc['recall']:.3f} | "
               f"{sc['f1']:.3f} | {sc['support']} |")
  out += ['', '## Confusion matrix (songs)', '']
  out += md_confusion(s['confusion_matrix'], report['genres'])
  out += ['', '![song confusion matrix](confusion_matrix.png)', '',
          '## Confusion matrix (segments)', '']
  out += md_confusion(g['confusion_matrix'], report['genres'])
  wrong = [x for x in report['songs'] if x['predicted'] != x['genre']]
  out += ['', f'## Misclassified songs ({len(wrong)})', '']
  if wrong:
    out += ['| song | genre | predicted (p) | vote |', '|---|---|---|---|']
    out += [f"| {x['key']} | {x['genre']} | {x['predicted']} ({x['probability']:.2f}) "
            f"| {x['vote']} |" for x in wrong]
  else:
    out.append('None.')
  out += ['', 'Raw segment probabilities: `predictions.npz` (segment_probs, labels, '
          'song_index, song_keys, genres).', '']
  return '\n'.join(out)
