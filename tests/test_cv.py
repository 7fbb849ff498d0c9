"""Cross-validation (--mode=cv, melgenre_jax.modes.cv): folds, resume, summary."""

import collections
import json
import os

import numpy as np
import pytest

from configs import default
from configs import tiny
from melgenre_jax import config_checks
from melgenre_jax.data import splits
from melgenre_jax.data.songs import Song
from melgenre_jax.modes import cv


def _config(num_folds=5, repeats=1, by='auto', seed=0, base=default):
  config = base.get_config()
  config.seed = seed
  config.cv.num_folds = num_folds
  config.cv.repeats = repeats
  config.cv.by = by
  return config


def _songs(genres=('a', 'b', 'c', 'd'), per_genre=30, groups=True):
  """Artists of 1-4 songs (uneven, as in real data), or no groups at all."""
  out = []
  for g in genres:
    i = artist = 0
    while i < per_genre:
      for _ in range(min(1 + artist % 4, per_genre - i)):
        out.append(Song(key=f'{g}/{i:03d}', path='', genre=g,
                        group=f'{g}-artist{artist}' if groups else None))
        i += 1
      artist += 1
  return out


def _record(config, songs, tmp_path):
  return cv.load_or_assign_folds(config, songs, str(tmp_path / 'folds.json'))


def test_folds_cover_every_song_once_keep_groups_and_are_stratified(tmp_path):
  songs = _songs()
  config = _config(num_folds=5, repeats=2)
  record = _record(config, songs, tmp_path)
  assert record['fold_unit'] == 'group'
  assert set(record['folds']) == {s.key for s in songs}
  groups = {s.key: s.group for s in songs}
  for r in range(2):
    fold_of = {k: f[r] for k, f in record['folds'].items()}
    assert set(fold_of.values()) == set(range(5))
    group_folds = collections.defaultdict(set)
    for key, fold in fold_of.items():
      group_folds[groups[key]].add(fold)
    assert all(len(f) == 1 for f in group_folds.values())  # an artist in one fold
    for genre in 'abcd':
      counts = collections.Counter(fold_of[s.key] for s in songs if s.genre == genre)
      assert len(counts) == 5 and max(counts.values()) - min(counts.values()) <= 4
  assert [f[0] for f in record['folds'].values()] != [f[1] for f in record['folds'].values()]

  runs = cv.plan_runs(config, songs, record, str(tmp_path))
  assert [(r.repeat, r.fold, r.seed) for r in runs][:6] == [
      (0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 0), (0, 4, 0), (1, 0, 1)]
  for run in runs:
    split = run.split
    splits.check_disjoint(split)  # by song and by group across all three sides
    assert {s.key for s in split.test} == {
        k for k, f in record['folds'].items() if f[run.repeat] == run.fold}
    assert len(split.train) + len(split.validation) + len(split.test) == len(songs)
    assert {s.genre for s in split.validation} == set('abcd')
  for r in range(2):
    tested = [s.key for run in runs if run.repeat == r for s in run.split.test]
    assert sorted(tested) == sorted(s.key for s in songs)  # each song tested once


def test_folds_are_deterministic_per_seed_and_match_kfold(tmp_path):
  songs = _songs()
  _, folds = cv.assign_folds(_config(seed=3), songs)
  _, again = cv.assign_folds(_config(seed=3), list(reversed(songs)))
  _, other = cv.assign_folds(_config(seed=4), songs)
  assert folds == again and folds != other
  # Repeat r uses seed + r: repeat 1 of seed 3 is repeat 0 of seed 4.
  _, two = cv.assign_folds(_config(seed=3, repeats=2), songs)
  assert {k: f[1] for k, f in two.items()} == {k: f[0] for k, f in other.items()}
  # Repeat 0 is config.data.split='kfold' with the same seed, fold by fold.
  config = _config(seed=3, num_folds=5)
  runs = cv.plan_runs(config, songs, _record(config, songs, tmp_path), str(tmp_path))
  for run in runs:
    kfold = splits.kfold_split(songs, 5, run.fold, config.cv.validation_fraction, 3)
    assert [s.key for s in kfold.test] == [s.key for s in run.split.test]
    assert [s.key for s in kfold.validation] == [s.key for s in run.split.validation]


def test_fold_by_song_ignores_groups_and_its_split_file_is_accepted(tmp_path):
  songs = _songs()
  config = _config(num_folds=4, by='song')
  record = _record(config, songs, tmp_path)
  assert record['fold_unit'] == 'song'
  group_folds = collections.defaultdict(set)
  for s in songs:
    group_folds[s.group].add(record['folds'][s.key][0])
  assert any(len(f) > 1 for f in group_folds.values())  # artists do cross folds
  for genre in 'abcd':  # 30 songs per genre over 4 folds: 7 or 8 each
    counts = collections.Counter(record['folds'][s.key][0] for s in songs if s.genre == genre)
    assert sorted(counts.values()) == [7, 7, 8, 8]
  run = cv.plan_runs(config, songs, record, str(tmp_path / 'cv'))[0]
  path = cv.write_split_file(run, record['fold_unit'])
  fold_config = cv.fold_run_config(config, run)
  assert (fold_config.data.split, fold_config.data.split_file) == ('file', path)
  split = splits.split_songs(songs, fold_config)  # groups cross sides: allowed by song
  assert [s.key for s in split.test] == [s.key for s in run.split.test]
  assert [s.key for s in split.train] == [s.key for s in run.split.train]
  assert split.info['cv_fold'] == 0 and split.info['by'] == 'song'


def test_split_file_is_written_once_and_a_different_one_is_refused(tmp_path):
  songs = _songs(groups=False)
  config = _config(num_folds=3)
  record = _record(config, songs, tmp_path)
  run = cv.plan_runs(config, songs, record, str(tmp_path / 'cv'))[1]
  path = cv.write_split_file(run, 'song')
  mtime = os.stat(path).st_mtime_ns
  assert cv.write_split_file(run, 'song') == path and os.stat(path).st_mtime_ns == mtime
  other = cv.plan_runs(_config(num_folds=3, seed=1), songs, cv.load_or_assign_folds(
      _config(num_folds=3, seed=1), songs, str(tmp_path / 'other.json')), str(tmp_path / 'cv'))[1]
  with pytest.raises(ValueError, match='differs from the split derived'):
    cv.write_split_file(other, 'song')


def test_resume_refuses_other_settings_or_other_songs(tmp_path):
  songs = _songs()
  path = str(tmp_path / 'folds.json')
  first = cv.load_or_assign_folds(_config(), songs, path)
  assert cv.load_or_assign_folds(_config(), list(reversed(songs)), path) == first
  with pytest.raises(ValueError, match='num_folds: recorded 5, now 4'):
    cv.load_or_assign_folds(_config(num_folds=4), songs, path)
  with pytest.raises(ValueError, match='seed: recorded 0, now 1'):
    cv.load_or_assign_folds(_config(seed=1), songs, path)
  with pytest.raises(ValueError, match=r'0 new.*1 gone or now unreadable'):
    cv.load_or_assign_folds(_config(), songs[1:], path)


def test_cv_config_checks():
  for field, value, message in (('num_folds', 1, 'cv.num_folds=1'),
                                ('repeats', 0, 'cv.repeats=0'),
                                ('by', 'artist', 'auto, song, group'),
                                ('validation_fraction', 1.0, 'cv.validation_fraction')):
    config = _config()
    config.cv[field] = value
    with pytest.raises(ValueError, match=message):
      config_checks.validate(config)
  config_checks.validate(_config())
  refit = _config()
  refit.cv.validation_fraction = 0.0  # no validation: a refit on every training song
  config_checks.validate(refit)


def test_too_few_songs_or_groups_for_the_folds_is_a_clear_error():
  songs = _songs(per_genre=30) + [Song(f'e/{i}', '', 'e', 'e-one-artist') for i in range(8)]
  with pytest.raises(ValueError, match=r"genre\(s\) with fewer groups than folds \(e: 1\).*"
                                       r'config.cv.by=song'):
    cv.assign_folds(_config(num_folds=5), songs)
  _, folds = cv.assign_folds(_config(num_folds=5, by='song'), songs)  # 8 songs of e: fine
  assert {f[0] for k, f in folds.items() if k.startswith('e/')} == set(range(5))
  few = _songs(per_genre=3, groups=False)
  with pytest.raises(ValueError, match='lower config.cv.num_folds to at most 3'):
    cv.assign_folds(_config(num_folds=4), few)
  with pytest.raises(ValueError, match='needs at least 5 songs, but the source has 4'):
    cv.assign_folds(_config(num_folds=5), few[:4])
  with pytest.raises(ValueError, match="config.cv.by='group' but no song has a group"):
    cv.assign_folds(_config(by='group'), few)


def test_summary_is_mean_and_sample_sd_over_runs_with_a_pooled_matrix():
  rows = []
  for i, acc in enumerate((0.5, 0.75, 1.0)):
    rows.append({'repeat': 0, 'fold': i, 'seed': 0, 'workdir': f'fold_0_{i}', 'test_songs': 4,
                 'test_segments': 12, 'song_accuracy': acc, 'segment_accuracy': acc / 2,
                 'song_macro_f1': acc, 'segment_macro_f1': acc, 'song_vote_accuracy': acc,
                 'checkpoint_step': 5, 'genres': ['x', 'y'],
                 'song_confusion_matrix': [[2, 0], [2 - int(acc * 4) + 2, int(acc * 4) - 2]]})
  record = {'settings': cv.cv_settings(_config(num_folds=4)), 'fold_unit': 'song',
            'num_songs': 16}
  summary = cv.summarize(rows, record, 4, '/w')
  assert summary['metrics']['song_accuracy']['mean'] == pytest.approx(0.75)
  assert summary['metrics']['song_accuracy']['sd'] == pytest.approx(0.25)  # ddof=1
  assert summary['metrics']['segment_accuracy']['sd'] == pytest.approx(0.125)
  assert not summary['complete'] and summary['runs_done'] == 3
  assert summary['pooled']['song_confusion_matrix'] == [[6, 0], [3, 3]]
  assert summary['pooled']['song_accuracy'] == pytest.approx(0.75)
  md = cv.format_markdown(summary)
  assert '| song accuracy | 75.0% ± 25.0% | 50.0% | 100.0% |' in md
  assert 'incomplete' in md
  one = cv.summarize(rows[:1], record, 1, '/w')
  assert one['metrics']['song_accuracy']['sd'] is None and one['complete']


# ----------------------------------------------------------------------------
# End to end on configs/tiny.py (20 synthetic songs, a few steps per fold).


def _tiny(num_folds, repeats=1):
  config = _config(num_folds=num_folds, repeats=repeats, base=tiny)
  config.debug.max_steps = 4
  return config


def _song_accuracy(npz_path):
  """Song accuracy recomputed from the raw predictions (mean of segment probabilities)."""
  p = np.load(npz_path)
  songs = np.unique(p['song_index'])
  correct = []
  for s in songs:
    rows = p['song_index'] == s
    assert len(set(p['labels'][rows])) == 1
    correct.append(p['segment_probs'][rows].mean(axis=0).argmax() == p['labels'][rows][0])
  segment = float((p['segment_probs'].argmax(axis=1) == p['labels']).mean())
  return float(np.mean(correct)), segment, list(p['song_keys'])


@pytest.mark.slow
def test_cv_end_to_end_summary_is_recomputable_from_the_predictions(tmp_path):
  workdir = str(tmp_path / 'run')
  summary = cv.run_cv(_tiny(num_folds=2, repeats=2), workdir)
  cv_dir = os.path.join(workdir, 'cv')
  with open(os.path.join(cv_dir, 'summary.json')) as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  with open(os.path.join(cv_dir, 'folds.json')) as f:
    folds = json.load(f)['folds']
  assert summary['complete'] and summary['runs_done'] == 4 and len(folds) == 20
  song_accs, segment_accs = [], []
  for row in summary['folds']:
    r, k = row['repeat'], row['fold']
    fold_dir = os.path.join(cv_dir, f'fold_{r}_{k}')
    song_acc, segment_acc, keys = _song_accuracy(os.path.join(fold_dir, 'eval',
                                                              'predictions.npz'))
    assert row['song_accuracy'] == pytest.approx(song_acc)
    assert row['segment_accuracy'] == pytest.approx(segment_acc)
    song_accs.append(song_acc)
    segment_accs.append(segment_acc)
    # The run tested exactly its recorded fold, and trained with seed + repeat.
    assert sorted(keys) == sorted(key for key, f in folds.items() if f[r] == k)
    with open(os.path.join(fold_dir, 'dataset.json')) as f:
      recorded = json.load(f)['splits']
    assert sorted(recorded['test']) == sorted(keys)
    assert not set(recorded['train']) & set(keys)
    with open(os.path.join(fold_dir, 'config.json')) as f:
      assert json.load(f)['seed'] == r
  m = summary['metrics']
  assert m['song_accuracy']['mean'] == pytest.approx(np.mean(song_accs))
  assert m['song_accuracy']['sd'] == pytest.approx(np.std(song_accs, ddof=1))
  assert m['segment_accuracy']['mean'] == pytest.approx(np.mean(segment_accs))
  assert summary['pooled']['songs'] == 40  # every song tested once per repeat
  for name in ('summary.md', 'confusion_matrix.png'):
    assert os.path.getsize(os.path.join(cv_dir, name)) > 0


def test_cv_without_validation_trains_on_every_other_fold_and_tests_the_last_epoch(tmp_path):
  workdir = str(tmp_path / 'run')
  config = _tiny(num_folds=2)
  config.cv.validation_fraction = 0.0
  config.debug.max_steps = -1  # both epochs, so the last epoch is not the first
  summary = cv.run_cv(config, workdir)
  assert summary['complete'] and summary['runs_done'] == 2
  with open(os.path.join(workdir, 'cv', 'folds.json')) as f:
    folds = json.load(f)['folds']
  for row in summary['folds']:
    fold_dir = os.path.join(workdir, 'cv', f"fold_0_{row['fold']}")
    with open(os.path.join(fold_dir, 'dataset.json')) as f:
      recorded = json.load(f)['splits']
    assert recorded['validation'] == []
    assert sorted(recorded['train']) == sorted(
        k for k, f in folds.items() if f[0] != row['fold'])
    with open(os.path.join(fold_dir, 'metrics.json')) as f:
      history = json.load(f)
    assert [r['epoch'] for r in history] == [1, 2]
    assert not any('val_song_accuracy' in r for r in history)
    assert row['checkpoint_step'] == history[-1]['step']  # the last epoch is tested


@pytest.mark.slow
def test_killed_cv_resumes_without_retraining_finished_folds(tmp_path):
  from melgenre_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  cv_dir = os.path.join(workdir, 'cv')
  config = _tiny(num_folds=3)
  config.debug.max_steps = -1  # two whole epochs: fold 1 dies after its first

  class Killed(Exception):
    pass

  trained = []

  def dies_in_fold_1(fold_config, fold_dir):
    trained.append(os.path.basename(fold_dir))
    if fold_dir.endswith('fold_0_1'):
      def kill(row):
        if row['epoch'] == 1:
          raise Killed
      return train.train_and_evaluate(fold_config, fold_dir, on_epoch_end=kill)
    return train.train_and_evaluate(fold_config, fold_dir)

  with pytest.raises(Killed):
    cv.run_cv(config, workdir, train_fn=dies_in_fold_1)
  assert trained == ['fold_0_0', 'fold_0_1']
  done = os.path.join(cv_dir, 'fold_0_0', cv.DONE_FILE)
  done_mtime = os.stat(done).st_mtime_ns
  report_mtime = os.stat(os.path.join(cv_dir, 'fold_0_0', 'eval', 'report.json')).st_mtime_ns
  assert not os.path.exists(os.path.join(cv_dir, 'fold_0_1', cv.DONE_FILE))
  with open(os.path.join(cv_dir, 'fold_0_1', 'metrics.json')) as f:
    epoch_1 = json.load(f)
  assert [row['epoch'] for row in epoch_1] == [1]
  with open(os.path.join(cv_dir, 'summary.json')) as f:
    partial = json.load(f)
  assert not partial['complete'] and partial['runs_done'] == 1

  trained.clear()

  def counted(fold_config, fold_dir):
    trained.append(os.path.basename(fold_dir))
    return train.train_and_evaluate(fold_config, fold_dir)

  summary = cv.run_cv(config, workdir, train_fn=counted)
  assert trained == ['fold_0_1', 'fold_0_2']  # fold 0 was not trained again
  assert os.stat(done).st_mtime_ns == done_mtime
  assert os.stat(os.path.join(cv_dir, 'fold_0_0', 'eval', 'report.json')
                 ).st_mtime_ns == report_mtime
  with open(os.path.join(cv_dir, 'fold_0_1', 'metrics.json')) as f:
    resumed = json.load(f)
  # Epoch 1 came back from the checkpoint (its timing too), only epoch 2 was trained.
  assert [row['epoch'] for row in resumed] == [1, 2] and resumed[0] == epoch_1[0]
  assert summary['complete'] and [(r['repeat'], r['fold']) for r in summary['folds']] == [
      (0, 0), (0, 1), (0, 2)]
  assert summary['pooled']['songs'] == 20
  trained.clear()
  again = cv.run_cv(config, workdir, train_fn=counted)  # all done: nothing trains
  assert trained == [] and again['metrics'] == summary['metrics']
