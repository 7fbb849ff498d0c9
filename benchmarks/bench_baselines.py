"""Feature baselines on ``--mode=cv``'s folds: the score a trained model has to beat.

  python benchmarks/bench_baselines.py --config configs/small_data.py \
      --config.data.source=manifest --config.data.manifest=/path/to/manifest.csv \
      [--cv_workdir=runs/cv_ref] [--out=/tmp/baselines.json]

Every song is decoded as training decodes it (``config.audio.sample_rate``,
the whole clip) and summarised by fixed feature vectors:

  * ``mfcc``: 20 MFCCs, mean and sd over frames;
  * ``rich``: MFCCs and their deltas, spectral contrast, chroma, centroid,
    bandwidth, roll-off, flatness, zero-crossing rate and RMS (mean and sd
    over frames), plus the onset-strength autocorrelation (rhythm).

Each is scored by standardised logistic regression whose C is picked for every
test fold by an inner 4-fold CV (by group, or by song) on that fold's other
songs only, so no test song tunes anything. The folds are ``--mode=cv``'s:
read from ``--cv_workdir``'s ``cv/folds.json`` when given (and that run's
per-fold song accuracies, from ``cv/summary.json``, are paired with the
baselines fold by fold), else drawn by ``cv.assign_folds`` from the config
(``config.seed``, ``config.cv.*``): the folds a cv run of the same config
draws. Prints a markdown table; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import librosa  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
import tqdm  # noqa: E402

from melgenre_jax import errors  # noqa: E402
from melgenre_jax.data import audio  # noqa: E402
from melgenre_jax.data import cache  # noqa: E402
from melgenre_jax.data import sources  # noqa: E402
from melgenre_jax.data import splits  # noqa: E402
from melgenre_jax.data.songs import Song  # noqa: E402
from melgenre_jax.modes import cv  # noqa: E402

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
INNER_FOLDS = 4


def mfcc_features(wave: np.ndarray, sample_rate: int) -> np.ndarray:
  """20 MFCCs' mean and sd over frames: the classic 40-number song summary."""
  m = librosa.feature.mfcc(y=wave, sr=sample_rate, n_mfcc=20)
  return np.concatenate([m.mean(1), m.std(1)])


def rich_features(wave: np.ndarray, sample_rate: int) -> np.ndarray:
  """Timbre, harmony and rhythm statistics (the usual hand-made genre features)."""
  s = np.abs(librosa.stft(wave, n_fft=2048, hop_length=512))
  # Octave bands from 200 Hz: 6 at 22.05 kHz, fewer where Nyquist is lower.
  n_bands = min(6, int(np.floor(np.log2(sample_rate / 2 / 200.0) - 1e-9)) + 1)
  mfcc = librosa.feature.mfcc(y=wave, sr=sample_rate, n_mfcc=20)
  frames = np.concatenate([
      mfcc, librosa.feature.delta(mfcc, mode='nearest'),
      librosa.feature.spectral_contrast(S=s, sr=sample_rate, n_bands=n_bands),
      librosa.feature.chroma_stft(S=s ** 2, sr=sample_rate),
      librosa.feature.spectral_centroid(S=s, sr=sample_rate),
      librosa.feature.spectral_bandwidth(S=s, sr=sample_rate),
      librosa.feature.spectral_rolloff(S=s, sr=sample_rate),
      librosa.feature.spectral_flatness(S=s),
      librosa.feature.zero_crossing_rate(wave),
      librosa.feature.rms(S=s)])
  onset = librosa.onset.onset_strength(y=wave, sr=sample_rate)
  lags = np.zeros(64)
  ac = librosa.autocorrelate(onset - onset.mean(), max_size=64)
  lags[:ac.shape[0]] = ac / (ac[0] + 1e-9)
  return np.concatenate([frames.mean(1), frames.std(1), lags[1:], [onset.mean(), onset.std()]])


FEATURES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    'mfcc': mfcc_features, 'rich': rich_features}


def extract(songs: Sequence[Song], config: ml_collections.ConfigDict, names: Sequence[str]
            ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
  """Feature matrices per name, the mask of songs that decoded, and the skip reasons."""
  rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
  ok, skipped = [], []
  params = cache.decode_params(config)
  for song in tqdm.tqdm(songs, desc='features', unit='song'):
    try:
      wave = cache.song_wave(song, params)
    except audio.AudioError as e:
      ok.append(False)
      skipped.append(f'{song.key}: {e.reason}')
      continue
    ok.append(True)
    for n in names:
      rows[n].append(FEATURES[n](wave, int(config.audio.sample_rate)))
  return {n: np.asarray(r, np.float64) for n, r in rows.items()}, np.asarray(ok), skipped


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, groups: np.ndarray,
                x_test: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
  """Standardised logistic regression, C chosen by inner group CV on the training side."""
  inner = min(INNER_FOLDS, int(np.unique(y_train, return_counts=True)[1].min()),
              len(set(groups)))
  model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
  search = GridSearchCV(model, {'logisticregression__C': list(C_GRID)},
                        cv=StratifiedGroupKFold(max(2, inner), shuffle=True, random_state=seed))
  search.fit(x_train, y_train, groups=groups)
  return search.predict(x_test), float(search.best_params_['logisticregression__C'])


def score_folds(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: np.ndarray,
                seeds: Sequence[int]) -> list[dict]:
  """One row per (repeat, fold): test song accuracy and the C its inner CV chose."""
  out = []
  for r, seed in enumerate(seeds):
    for k in sorted(set(folds[:, r].tolist())):
      test = folds[:, r] == k
      pred, c = fit_predict(x[~test], y[~test], groups[~test], x[test], seed)
      out.append({'repeat': r, 'fold': int(k), 'test_songs': int(test.sum()),
                  'song_accuracy': float((pred == y[test]).mean()), 'C': c})
  return out


def mean_sd(values: Sequence[float]) -> str:
  """'mean ± sd' of fold scores, with cv's statistics (sample sd; '-' for one value)."""
  stats = cv.mean_sd(values)
  sd = '-' if stats['sd'] is None else f"{stats['sd']:.3f}"
  return f"{stats['mean']:.3f} ± {sd}"


def read_cv(cv_workdir: str) -> tuple[dict, dict | None]:
  """``cv/folds.json`` (required) and ``cv/summary.json`` (None while absent)."""
  folds_path = os.path.join(cv_workdir, 'cv', 'folds.json')
  if not os.path.isfile(folds_path):
    raise errors.UserError(f'{folds_path} not found: --cv_workdir must be a --mode=cv workdir '
                           '(run the cv first, or leave --cv_workdir out to draw the folds)')
  with open(folds_path) as f:
    record = json.load(f)
  summary_path = os.path.join(cv_workdir, 'cv', 'summary.json')
  summary = None
  if os.path.isfile(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  return record, summary


def cv_folds(cv_workdir: str, songs: Sequence[Song]
             ) -> tuple[str, dict[str, int], list[int], dict | None]:
  """A cv run's fold unit, fold of every song key, seeds (one a repeat) and summary."""
  record, summary = read_cv(cv_workdir)
  missing = [s.key for s in songs if s.key not in record['folds']]
  if missing:
    raise errors.UserError(f'{len(missing)} songs (e.g. {missing[0]}) are not in '
                           f'{cv_workdir}/cv/folds.json: give the same data config '
                           'as that cv run')
  settings = record['settings']
  seeds = [int(settings['seed']) + r for r in range(int(settings['repeats']))]
  return record['fold_unit'], record['folds'], seeds, summary


def paired(rows: list[dict], cv_runs: Sequence[dict]) -> str:
  """The cv model minus the baseline over the folds both have: mean ± sd (up/down)."""
  model = {(r['repeat'], r['fold']): r['song_accuracy'] for r in cv_runs}
  diffs = [model[(r['repeat'], r['fold'])] - r['song_accuracy'] for r in rows
           if (r['repeat'], r['fold']) in model]
  if not diffs:
    return '-'
  up = sum(d > 0 for d in diffs)
  down = sum(d < 0 for d in diffs)
  return f'{mean_sd(diffs)} ({up} up, {down} down, {len(diffs)} folds)'


def table(results: dict[str, list[dict]], summary: dict | None) -> str:
  lines = ['| features + logistic regression | song accuracy | per fold | C chosen | '
           'cv model minus baseline |', '|---|---|---|---|---|']
  for name, rows in results.items():
    accs = [r['song_accuracy'] for r in rows]
    per_fold = ', '.join(f'{a:.2f}' for a in accs)
    chosen = ', '.join(f'{r["C"]:g}' for r in rows)
    vs_model = paired(rows, summary['folds']) if summary else '-'
    lines.append(f'| {name} | {mean_sd(accs)} | {per_fold} | {chosen} | {vs_model} |')
  if summary:
    accs = [r['song_accuracy'] for r in summary['folds']]
    per_fold = ', '.join(f'{a:.2f}' for a in accs)
    lines.append(f'| (the cv run: {summary["workdir"]}) | {mean_sd(accs)} | {per_fold} | - | - |')
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, cv_workdir: str | None,
        names: Sequence[str]) -> tuple[dict, str]:
  """Scores every feature set on the folds; (results, markdown report)."""
  unknown = sorted(set(names) - set(FEATURES))
  if unknown:
    raise errors.ConfigError(f'--features {unknown}: choose from {sorted(FEATURES)}')
  songs = sorted(sources.discover_songs(config), key=lambda s: s.key)
  summary = None
  if cv_workdir:
    unit, fold_of, seeds, summary = cv_folds(cv_workdir, songs)
  else:
    unit, fold_of = cv.assign_folds(config, songs)
    seeds = [int(config.seed) + r for r in range(int(config.cv.repeats))]
  genres = sorted({s.genre for s in songs})
  feats, ok, skipped = extract(songs, config, names)
  for line in skipped:
    logging.warning('skipped %s', line)
  kept = [s for s, good in zip(songs, ok) if good]
  if len(kept) < 2 * len(genres):
    raise errors.DataError(f'only {len(kept)} of {len(songs)} songs decoded (first skipped: '
                           f'{skipped[:1]}): fix or remove the bad files')
  y = np.asarray([genres.index(s.genre) for s in kept])
  # The units the folds were dealt in, by cv.assign_folds' own rule.
  units = kept if unit == 'group' else splits.ungrouped(kept)
  groups = np.asarray([splits.unit_key(s) for s in units])
  folds = np.asarray([fold_of[s.key] for s in kept])
  scores = {n: score_folds(feats[n], y, groups, folds, seeds) for n in names}
  report = (f'{len(kept)} songs ({len(skipped)} skipped), {len(genres)} genres, folds by '
            f'{unit}, seeds {seeds}; C from {list(C_GRID)} by an inner CV (up to '
            f'{INNER_FOLDS} folds) on each training side\n' + table(scores, summary))
  results = {'fold_unit': unit, 'seeds': seeds, 'num_songs': len(kept), 'skipped': skipped,
             'results': scores}
  return results, report


def report_run(compute: Callable[[], tuple[dict, str]], out: str | None) -> None:
  """Runs ``compute`` (results, markdown), prints the report, writes the results to ``out``.

  A bad ``--out`` folder is refused before minutes of work; a UserError is one line.
  """
  try:
    out_dir = os.path.dirname(os.path.abspath(out)) if out else None
    if out_dir and not os.path.isdir(out_dir):  # before minutes of work, not after
      raise errors.UserError(f'--out={out}: folder {out_dir} does not exist; create it '
                             'or write elsewhere')
    results, report = compute()
  except errors.UserError as e:
    logging.error('%s: %s', type(e).__name__, e)  # what to do, without a traceback
    raise SystemExit(1) from None
  print(report)
  if out:
    with open(out, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)


def main(argv: Sequence[str]) -> None:
  del argv
  flags_ = flags.FLAGS
  report_run(lambda: run(flags_.config, flags_.cv_workdir, flags_.features), flags_.out)


if __name__ == '__main__':
  # Defined here, not at import: tests import this file beside main.py's own --config.
  config_flags.DEFINE_config_file('config', 'configs/small_data.py',
                                  'Config file (its data and cv settings).', lock_config=True)
  flags.DEFINE_string('cv_workdir', None,
                      'A --mode=cv workdir: use its folds and pair its scores.')
  flags.DEFINE_multi_string('features', list(FEATURES), 'Feature sets to score.')
  flags.DEFINE_string('out', None, 'Write the results here as JSON.')
  app.run(main)
