"""benchmarks/bench_baselines.py: feature + logistic-regression baselines on cv's folds."""

import importlib.util
import json
import os

import numpy as np
import pytest

from configs import tiny
from melgenre_jax import errors
from melgenre_jax.data import sources
from melgenre_jax.modes import cv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  path = os.path.join(ROOT, 'benchmarks', 'bench_baselines.py')
  spec = importlib.util.spec_from_file_location('bench_baselines', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench = _bench()


def _tiny(num_folds=3, repeats=1):
  config = tiny.get_config()
  config.cv.num_folds = num_folds
  config.cv.repeats = repeats
  return config


@pytest.mark.parametrize('sample_rate', [8000, 22050])
def test_features_have_one_length_whatever_the_clip_length(sample_rate):
  rng = np.random.default_rng(0)
  for name, fn in bench.FEATURES.items():
    # 0.3 s: fewer onset frames than autocorrelation lags; 4 s: more.
    short = fn(rng.standard_normal(int(0.3 * sample_rate)).astype(np.float32), sample_rate)
    long = fn(rng.standard_normal(4 * sample_rate).astype(np.float32), sample_rate)
    assert short.shape == long.shape and short.ndim == 1, name
    assert np.isfinite(short).all() and np.isfinite(long).all(), name


def test_score_folds_tests_every_fold_once_and_learns_separable_features():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 12)
  x = np.eye(3)[y] * 3 + 0.3 * rng.standard_normal((36, 3))
  groups = np.array([f'g{i // 2}' for i in range(36)])  # pairs of songs share an artist
  folds = np.stack([np.arange(36) % 3, (np.arange(36) // 2) % 3], axis=1)
  rows = bench.score_folds(x, y, groups, folds, seeds=[0, 1])
  assert [(r['repeat'], r['fold']) for r in rows] == [(r, k) for r in (0, 1) for k in range(3)]
  assert all(r['song_accuracy'] == 1.0 and r['test_songs'] == 12 for r in rows)
  assert all(r['C'] in bench.C_GRID for r in rows)


def test_labels_of_test_songs_never_reach_the_fit(monkeypatch):
  seen = []
  real = bench.fit_predict

  def spy(x_train, y_train, groups, x_test, seed):
    seen.append((x_train[:, 0].copy(), x_test[:, 0].copy()))
    return real(x_train, y_train, groups, x_test, seed)

  monkeypatch.setattr(bench, 'fit_predict', spy)
  y = np.repeat(np.arange(2), 8)
  x = np.stack([np.arange(16.0), y + 0.1 * np.arange(16.0)], axis=1)  # column 0 = song id
  folds = (np.arange(16) % 2)[:, None]
  bench.score_folds(x, y, np.array([f's{i}' for i in range(16)]), folds, seeds=[0])
  for k, (train_ids, test_ids) in enumerate(seen):
    assert sorted(test_ids) == [i for i in range(16) if i % 2 == k]
    assert not set(train_ids) & set(test_ids)


def test_paired_is_the_model_minus_the_baseline_over_shared_folds():
  rows = [{'repeat': 0, 'fold': 0, 'song_accuracy': 0.5},
          {'repeat': 0, 'fold': 1, 'song_accuracy': 0.4},
          {'repeat': 1, 'fold': 0, 'song_accuracy': 0.3}]
  model = [{'repeat': 0, 'fold': 0, 'song_accuracy': 0.6},
           {'repeat': 0, 'fold': 1, 'song_accuracy': 0.2}]
  assert bench.paired(rows, model) == '-0.050 ± 0.212 (1 up, 1 down, 2 folds)'
  assert bench.paired(rows, []) == '-'


def test_a_workdir_that_is_not_a_cv_run_is_a_clear_error(tmp_path):
  with pytest.raises(errors.UserError, match='must be a --mode=cv workdir'):
    bench.read_cv(str(tmp_path))
  with pytest.raises(errors.ConfigError, match='choose from'):
    bench.run(_tiny(), None, ['mfcc', 'wavelets'])


@pytest.mark.slow
def test_end_to_end_uses_the_cv_runs_folds_and_pairs_its_scores(tmp_path):
  config = _tiny(num_folds=3, repeats=1)
  songs = sources.discover_songs(config)
  cv_dir = tmp_path / 'cv'
  cv_dir.mkdir()
  # Folds as --mode=cv records them, but with another seed than the config's:
  # the benchmark must follow the file, not redraw from the config.
  other = _tiny(num_folds=3, repeats=1)
  other.seed = 7
  record = cv.load_or_assign_folds(other, songs, str(cv_dir / 'folds.json'))
  summary = {'workdir': str(tmp_path), 'folds': [
      {'repeat': 0, 'fold': k, 'song_accuracy': 1.0} for k in range(3)]}
  (cv_dir / 'summary.json').write_text(json.dumps(summary))

  results, report = bench.run(config, str(tmp_path), ['mfcc'])
  rows = results['results']['mfcc']
  assert results['seeds'] == [7] and results['num_songs'] == len(songs) == 20
  assert [r['fold'] for r in rows] == [0, 1, 2]
  for r in rows:
    assert r['test_songs'] == sum(f[0] == r['fold'] for f in record['folds'].values())
  accs = [r['song_accuracy'] for r in rows]
  assert np.mean(accs) > 0.5  # 4 synthetic styles (chance 0.25) that MFCCs separate
  assert f'{np.mean(accs):.3f} ± {np.std(accs, ddof=1):.3f}' in report
  assert f'{1 - np.mean(accs):.3f} ±' in report  # the paired column: model 1.0 minus baseline
