"""Ensembles of finished ``--mode=cv`` runs, fold by fold, from their saved test predictions.

  python benchmarks/bench_cv_ensemble.py --cv_workdirs=runs/ft_msd --cv_workdirs=runs/ft_mtt \
      [--out=/tmp/ensemble.json]

Two or more cv runs on the same data and folds (their ``cv/folds.json`` must
agree: same songs, same test fold per repeat) are combined per test fold: a
song's probabilities are the mean of its segments' (uncalibrated, as eval's
song accuracy reads them) in each member, averaged over the members, and the
song is classified by the average. Nothing is retrained; each member's
``cv/fold_r_k/eval/predictions.npz`` is read. Prints each member's and the
ensemble's song accuracy per fold, mean ± sd over folds x repeats, and the
ensemble minus the best single member fold by fold (paired).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

import bench_baselines  # noqa: E402
from melgenre_jax import errors  # noqa: E402
from melgenre_jax import metrics  # noqa: E402

def song_probabilities(path: str) -> tuple[dict[str, np.ndarray], dict[str, int], list[str]]:
  """One run's test songs: key -> mean segment probabilities, key -> label index, genres."""
  if not os.path.isfile(path):
    raise errors.UserError(f'{path} not found: every member must be a finished cv run '
                           '(run its --mode=cv command again to finish it)')
  d = np.load(path)
  keys = [str(k) for k in d['song_keys']]
  probs = metrics.song_probabilities(d['segment_probs'], d['song_index'], len(keys))
  labels = metrics.song_labels(d['labels'], d['song_index'], len(keys))
  return dict(zip(keys, probs)), dict(zip(keys, labels.tolist())), [str(g) for g in d['genres']]


def check_same_folds(workdirs: Sequence[str]) -> list[dict]:
  """Every member's ``cv/summary.json``; refuses members whose fold assignments differ."""
  folds, summaries = [], []
  for w in workdirs:
    record, summary = bench_baselines.read_cv(w)
    if summary is None or not summary.get('complete'):
      raise errors.UserError(f'{w}: the cv run is not finished; run its command again first')
    folds.append(record['folds'])
    summaries.append(summary)
  for w, f in zip(workdirs[1:], folds[1:]):
    if f != folds[0]:
      raise errors.UserError(f'{w} has other folds than {workdirs[0]}: give cv runs of the same '
                             'data, seed, cv.num_folds and cv.repeats')
  return summaries


def run(workdirs: Sequence[str]) -> tuple[dict, str]:
  if len(workdirs) < 2:
    raise errors.UserError('--cv_workdirs: give two or more finished cv workdirs')
  summaries = check_same_folds(workdirs)
  rows = []
  for fold in summaries[0]['folds']:
    members = [song_probabilities(os.path.join(w, 'cv', fold['workdir'], 'eval',
                                               'predictions.npz')) for w in workdirs]
    genres = members[0][2]
    if any(m[2] != genres for m in members):
      raise errors.UserError(f'{fold["workdir"]}: the members classify other genres')
    keys = sorted(members[0][0])
    if any(sorted(m[0]) != keys for m in members):
      raise errors.UserError(f'{fold["workdir"]}: the members tested other songs')
    labels = np.asarray([members[0][1][k] for k in keys])
    each = [np.stack([m[0][k] for k in keys]) for m in members]
    accs = [float((p.argmax(axis=1) == labels).mean()) for p in each]
    ensemble = float((np.mean(each, axis=0).argmax(axis=1) == labels).mean())
    rows.append({'repeat': fold['repeat'], 'fold': fold['fold'], 'songs': len(keys),
                 'members': accs, 'ensemble': ensemble})
  return {'workdirs': list(workdirs), 'runs': rows}, table(workdirs, rows)


def table(workdirs: Sequence[str], rows: list[dict]) -> str:
  lines = ['| model | song accuracy (mean ± sd) | per run |', '|---|---|---|']
  for i, w in enumerate(workdirs):
    accs = [r['members'][i] for r in rows]
    lines.append(f'| {w} | {bench_baselines.mean_sd(accs)} | '
                 + ', '.join(f'{a:.2f}' for a in accs) + ' |')
  accs = [r['ensemble'] for r in rows]
  lines.append('| ensemble (mean of song probabilities) | '
               f'{bench_baselines.mean_sd(accs)} | ' + ', '.join(f'{a:.2f}' for a in accs) + ' |')
  means = [np.mean([r['members'][i] for r in rows]) for i in range(len(workdirs))]
  best = int(np.argmax(means))
  diffs = [r['ensemble'] - r['members'][best] for r in rows]
  up, down = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
  return (f'{len(rows)} runs (folds x repeats), the same test songs in every member\n'
          + '\n'.join(lines) + f'\n\nensemble minus the best member ({workdirs[best]}): '
          f'{bench_baselines.mean_sd(diffs)} ({up} up, {down} down)')


def main(argv: Sequence[str]) -> None:
  del argv
  bench_baselines.report_run(lambda: run(flags.FLAGS.cv_workdirs), flags.FLAGS.out)


if __name__ == '__main__':
  flags.DEFINE_multi_string('cv_workdirs', [], 'Finished --mode=cv workdirs (2 or more).')
  flags.DEFINE_string('out', None, 'Write the numbers as JSON here.')
  app.run(main)
