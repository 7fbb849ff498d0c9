"""Song/group-level splits and the published GTZAN lists (melgenre_jax.data.splits)."""

import collections
import logging
import pathlib

import numpy as np
import pytest

from configs import default
from melgenre_jax.data import gtzan
from melgenre_jax.data import splits
from melgenre_jax.data.songs import Song

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**data):
  config = default.get_config()
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


def _songs(genres=('a', 'b', 'c'), per_genre=20, group_size=0):
  out = []
  for g in genres:
    for i in range(per_genre):
      group = f'{g}-artist{i // group_size}' if group_size else None
      out.append(Song(key=f'{g}/{i:03d}', path='', genre=g, group=group))
  return out


def _gtzan_songs(drop=()):
  return [Song(key=f'{g}.{i:05d}', path=f'/d/{g}/{g}.{i:05d}.wav', genre=g)
          for g in gtzan.GTZAN_GENRES for i in range(100)
          if f'{g}.{i:05d}' not in drop]


def _keys(songs):
  return {s.key for s in songs}


def _assert_partition(split, songs):
  sides = [_keys(split.train), _keys(split.validation), _keys(split.test)]
  assert sum(map(len, sides)) == len(set().union(*sides))
  assert set().union(*sides) <= _keys(songs)
  groups = [{s.group for s in side if s.group} for side in
            (split.train, split.validation, split.test)]
  assert not (groups[0] & groups[1] or groups[0] & groups[2]
              or groups[1] & groups[2])


def test_stratified_fractions_and_determinism():
  songs = _songs(per_genre=20)
  split = splits.split_songs(songs, _config(split='stratified'))
  _assert_partition(split, songs)
  for side, n in ((split.train, 14), (split.validation, 4), (split.test, 2)):
    assert collections.Counter(s.genre for s in side) == {'a': n, 'b': n,
                                                          'c': n}
  again = splits.split_songs(list(reversed(songs)), _config(split='stratified'))
  assert _keys(again.validation) == _keys(split.validation)
  config = _config(split='stratified')
  config.seed = 7
  other = splits.split_songs(songs, config)
  assert _keys(other.validation) != _keys(split.validation)


def test_stratified_keeps_groups_together():
  songs = _songs(per_genre=30, group_size=3)
  split = splits.stratified_split(songs, 0.2, 0.2, seed=3)
  _assert_partition(split, songs)
  assert len(split.validation) > 0 and len(split.test) > 0
  assert abs(len(split.validation) - 18) <= 3


def test_tiny_genres_still_reach_validation():
  songs = _songs(per_genre=3)
  split = splits.stratified_split(songs, 0.2, 0.1, seed=0)
  assert collections.Counter(s.genre for s in split.validation) == {
      'a': 1, 'b': 1, 'c': 1}
  assert all(collections.Counter(s.genre for s in split.train).values())


def test_kfold_partitions_and_keeps_groups():
  songs = _songs(per_genre=25, group_size=2)
  tests = []
  for fold in range(5):
    split = splits.split_songs(songs, _config(split='kfold', num_folds=5,
                                              fold=fold))
    _assert_partition(split, songs)
    assert len(split.train) + len(split.validation) + len(split.test) == 75
    tests.append(_keys(split.test))
  assert set().union(*tests) == _keys(songs)
  assert sum(map(len, tests)) == 75
  assert all(13 <= len(t) <= 17 for t in tests)
  with pytest.raises(ValueError, match='config.data.fold=5'):
    splits.split_songs(songs, _config(split='kfold', num_folds=5, fold=5))


def test_manifest_split_and_group_leak_refused():
  songs = [Song('x1', '', 'a', 'g1', 'train'), Song('x2', '', 'a', 'g2',
                                                    'validation'),
           Song('x3', '', 'b', None, 'test'), Song('x4', '', 'b', None,
                                                   'train')]
  split = splits.split_songs(songs, _config(split='manifest'))
  assert _keys(split.train) == {'x1', 'x4'} and _keys(split.test) == {'x3'}
  leaky = songs + [Song('x5', '', 'a', 'g1', 'validation')]
  with pytest.raises(ValueError, match="group.*'g1'.*train and validation"):
    splits.split_songs(leaky, _config(split='manifest'))
  unset = songs + [Song('x6', '', 'a')]
  with pytest.raises(ValueError, match='1 have none'):
    splits.split_songs(unset, _config(split='manifest'))


def test_check_disjoint_refuses_song_overlap():
  s = Song('k', '', 'a')
  with pytest.raises(ValueError, match='train and test'):
    splits.check_disjoint(splits.SongSplit(train=[s], validation=[],
                                           test=[s]))


def test_gtzan_fault_filtered_lists_by_name():
  songs = _gtzan_songs()
  split = splits.split_songs(songs, _config(split='gtzan_fault_filtered'))
  assert (len(split.train), len(split.validation), len(split.test)) == (
      443, 197, 290)
  assert 'blues.00029' in _keys(split.train)
  assert 'blues.00000' in _keys(split.validation)
  assert 'blues.00012' in _keys(split.test)
  assert split.info['num_excluded_unlisted'] == 70


def test_gtzan_missing_listed_song_is_a_warning(caplog):
  songs = _gtzan_songs(drop={'jazz.00054'})  # corrupt in Kaggle's copy
  with caplog.at_level(logging.WARNING):
    split = splits.split_songs(songs, _config(split='gtzan_fault_filtered'))
  assert len(split.train) == 442
  assert split.info['missing_listed'] == {'train': ['jazz.00054']}
  assert 'jazz.00054' in caplog.text


def test_gtzan_stratified_lists():
  split = splits.split_songs(_gtzan_songs(), _config(split='gtzan_stratified'))
  assert (len(split.train), len(split.validation), len(split.test)) == (
      500, 250, 250)


def test_gtzan_lists_match_files_of_another_source():
  songs = [Song(f'x/{g}.{i:05d}.wav', f'/d/{g}.{i:05d}.wav', g)
           for g in ('blues', 'rock') for i in range(100)]
  split = gtzan.gtzan_list_split(songs, 'gtzan_stratified')
  assert len(split.train) == 100
  with pytest.raises(ValueError, match='none of the 1 songs'):
    gtzan.gtzan_list_split([Song('mine.wav', '/m.wav', 'rock')],
                           'gtzan_stratified')


def test_gtzan_artist_3fold():
  songs = _gtzan_songs()
  tests = []
  for fold, n_test in ((0, 315), (1, 316), (2, 317)):
    split = splits.split_songs(songs, _config(split='gtzan_artist_3fold',
                                              fold=fold))
    _assert_partition(split, songs)
    assert len(split.test) == n_test
    assert len(split.train) + len(split.validation) in (631, 632, 633)
    assert all(s.group and s.group.startswith('artist') for s in split.train)
    assert 0.15 < len(split.validation) / (
        len(split.train) + len(split.validation)) < 0.3
    tests.append(_keys(split.test))
  assert len(set().union(*tests)) == 948
  with pytest.raises(ValueError, match='0, 1 or 2'):
    splits.split_songs(songs, _config(split='gtzan_artist_3fold', fold=3))


def test_segment_random_is_leaky_and_loud(caplog):
  songs = _songs(per_genre=4)
  with caplog.at_level(logging.WARNING):
    split = splits.split_songs(songs, _config(split='segment_random'))
  assert split.leaky and 'LEAKS' in caplog.text
  assert _keys(split.train) == _keys(split.validation) == _keys(songs)
  labels = np.repeat(np.arange(3), 40)
  tr, va, te = splits.split_segments_randomly(labels, 0.2, 0.1, seed=0)
  assert np.array_equal(np.sort(np.concatenate([tr, va, te])),
                        np.arange(120))
  assert np.bincount(labels[va]).tolist() == [8, 8, 8]
  tr2, _, _ = splits.split_segments_randomly(labels, 0.2, 0.1, seed=0)
  assert np.array_equal(tr, tr2)


def test_unknown_split_and_bad_fractions():
  with pytest.raises(ValueError, match="config.data.split='random'"):
    splits.split_songs(_songs(), _config(split='random'))
  with pytest.raises(ValueError, match='sum to less than 1'):
    splits.split_songs(_songs(), _config(validation_fraction=0.6,
                                         test_fraction=0.5))
