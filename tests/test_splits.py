"""Song/group-level splits and the published GTZAN lists (melgenre_jax.data.splits)."""

import collections
import json
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


def _manifest(tmp_path, rows):
  path = tmp_path / 'songs.csv'
  path.write_text('path,label,split,group\n' + ''.join(
      f'{p},{label},{split},{group}\n' for p, label, split, group in rows))
  return str(path)


def test_manifest_with_only_train_and_test_carves_validation_by_group(tmp_path, caplog):
  """A published split's usual shape: validation comes from train, groups whole."""
  from melgenre_jax.data import sources  # pylint: disable=g-import-not-at-top
  rows = [(f'{g}/{i:02d}.wav', g, 'test' if i < 6 else 'train', f'{g}-artist{i // 2}')
          for g in ('jazz', 'rock', 'pop') for i in range(30)]
  songs = sources.read_manifest(_manifest(tmp_path, rows))
  with caplog.at_level(logging.INFO):
    split = splits.split_songs(songs, _config(split='manifest',
                                              validation_fraction=0.2))
  _assert_partition(split, songs)
  assert _keys(split.test) == {s.key for s in songs if s.split == 'test'}
  assert _keys(split.train) | _keys(split.validation) == {
      s.key for s in songs if s.split == 'train'}
  per_genre = collections.Counter(s.genre for s in split.validation)
  assert per_genre == {'jazz': 4, 'rock': 4, 'pop': 4}  # 0.2 of 24, whole pairs
  assert 'carved 12 of its 72 training songs' in caplog.text
  assert split.info['validation_carved_from_train'] == {'songs': 12, 'of': 72,
                                                        'fraction': 0.2}
  again = splits.split_songs(list(reversed(songs)), _config(
      split='manifest', validation_fraction=0.2))
  assert _keys(again.validation) == _keys(split.validation)
  refit = splits.split_songs(songs, _config(split='manifest', validation_fraction=0.0))
  assert not refit.validation  # asked for none: every training song trains
  assert _keys(refit.train) == {s.key for s in songs if s.split == 'train'}


def test_an_empty_validation_side_is_refused_unless_none_was_asked_for():
  songs = [Song(f'{g}{i}', '', g, None, 'test' if i else 'train')
           for g in 'ab' for i in range(3)]  # one training song per genre: none to carve
  with pytest.raises(ValueError, match='left the validation split empty.*set it to 0'):
    splits.split_songs(songs, _config(split='manifest', validation_fraction=0.2))
  split = splits.split_songs(songs, _config(split='manifest', validation_fraction=0.0))
  assert _keys(split.train) == {'a0', 'b0'} and not split.validation


def test_manifest_validation_rows_are_kept_as_given():
  songs = [Song(f'{g}{i}', '', g, None, 'validation' if i == 0 else 'train')
           for g in 'ab' for i in range(10)]
  split = splits.split_songs(songs, _config(split='manifest'))
  assert _keys(split.validation) == {'a0', 'b0'}
  assert 'validation_carved_from_train' not in split.info


def _write_json(path, obj):
  path.write_text(json.dumps(obj))
  return str(path)


def test_file_split_is_taken_exactly_and_missing_songs_are_reported(tmp_path, caplog):
  songs = _songs(per_genre=10, group_size=2)
  keys = sorted(_keys(songs))
  listed = {'train': keys[:20], 'validation': keys[20:24], 'test': keys[24:28] + ['gone/1']}
  path = _write_json(tmp_path / 'split.json', listed)
  with caplog.at_level(logging.INFO):
    split = splits.split_songs(songs, _config(split='file', split_file=path))
  assert [s.key for s in split.train] == keys[:20]
  assert [s.key for s in split.validation] == keys[20:24]
  assert [s.key for s in split.test] == keys[24:28]
  assert split.info['missing_listed'] == {'test': ['gone/1']}
  assert 'gone/1' in caplog.text and '2 song(s) are in no list' in caplog.text
  # A run's dataset.json replays that run's split.
  path = _write_json(tmp_path / 'dataset.json', {'genres': ['a'], 'splits': listed})
  replay = splits.split_songs(songs, _config(split='file', split_file=path))
  assert _keys(replay.test) == _keys(split.test)


def test_file_split_without_validation_carves_it_and_checks_groups(tmp_path):
  songs = _songs(per_genre=20, group_size=2)
  keys = sorted(_keys(songs))
  path = _write_json(tmp_path / 's.json', {'train': keys[:50], 'test': keys[50:]})
  split = splits.split_songs(songs, _config(split='file', split_file=path,
                                            validation_fraction=0.2))
  _assert_partition(split, songs)
  assert len(split.validation) == 10 and _keys(split.test) == set(keys[50:])
  # keys[48] and keys[49] ('c/008', 'c/009') are one artist's pair: train and validation.
  crossing = _write_json(tmp_path / 'x.json', {'train': keys[:49], 'validation': keys[49:50],
                                               'test': keys[50:]})
  with pytest.raises(ValueError, match='group'):
    splits.split_songs(songs, _config(split='file', split_file=crossing))
  by_song = _write_json(tmp_path / 'y.json', {'by': 'song', 'train': keys[:49],
                                              'validation': keys[49:50], 'test': keys[50:]})
  assert len(splits.split_songs(songs, _config(split='file', split_file=by_song)).validation) == 1


def test_file_split_refuses_bad_files(tmp_path):
  songs = _songs(per_genre=4)
  keys = sorted(_keys(songs))
  for content, message in (
      ({'train': keys[:2], 'test': keys[1:3]}, "listed under both 'train' and 'test'"),
      ({'training': keys}, 'JSON object with lists of song keys'),
      ({'train': 'a/000'}, "'train' must be a list"),
      ({'train': ['x/1'], 'validation': ['x/2']}, 'none of its 2 song keys')):
    path = _write_json(tmp_path / 'bad.json', content)
    with pytest.raises(ValueError, match=message):
      splits.split_songs(songs, _config(split='file', split_file=path))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    splits.split_songs(songs, _config(split='file', split_file=str(tmp_path / 'no.json')))
