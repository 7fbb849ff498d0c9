"""A song is a file and its bytes: aliases are one song, identical copies never span splits (#34)."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from melgenre_jax import errors
from melgenre_jax.data import input_pipeline as ip
from melgenre_jax.data import songs as songs_lib
from melgenre_jax.data import sources
from melgenre_jax.data import splits
from melgenre_jax.data import stratify
from melgenre_jax.data.songs import Song

from tests.test_input_pipeline import SR
from tests.test_input_pipeline import _config  # the same small 8 kHz data config


def _wav(path, freq: float, seconds: float = 1.0) -> str:
  """A short sine: a distinct ``freq`` gives distinct bytes."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  t = np.arange(int(seconds * SR)) / SR
  sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
  return str(path)


def _library(root, copies: int = 4, per_genre: int = 8) -> list[tuple[str, str]]:
  """``root/<genre>/NN.wav``, distinct songs, plus renamed byte-identical copies of
  the first ``copies`` jazz songs under ``jazz/copy_NN.wav``; returns the copy pairs."""
  for gi, genre in enumerate(('jazz', 'rock')):
    for i in range(per_genre):
      _wav(os.path.join(root, genre, f'{i:02d}.wav'), 200 + 40 * gi + 3 * i)
  pairs = []
  for i in range(copies):
    copy = f'jazz/copy_{i:02d}.wav'
    shutil.copyfile(os.path.join(root, 'jazz', f'{i:02d}.wav'), os.path.join(root, copy))
    pairs.append((f'jazz/{i:02d}.wav', copy))
  return pairs


def _side_of(split: stratify.SongSplit) -> dict[str, str]:
  return {s.key: name for name, side in split.as_dict().items() for s in side}


# ---------------------------------------------------------------- folder source


def test_renamed_copies_never_reach_two_splits_of_a_folder(tmp_path):
  root = str(tmp_path / 'music')
  pairs = _library(root)
  found, duplicates = songs_lib.identify(sources.list_folder(root))
  assert sorted(d['songs'] for d in duplicates['identical_content']) == sorted(
      sorted(p) for p in pairs)
  for seed in range(20):
    config = _config(source='folder', root=root, validation_fraction=0.25,
                     test_fraction=0.25)
    config.seed = seed
    side = _side_of(splits.split_songs(found, config))
    assert all(side[a] == side[b] for a, b in pairs), seed
  # Without identity (the songs as listed), some seed splits a pair: the test can fail.
  raw = sources.list_folder(root)
  split_apart = 0
  for seed in range(20):
    config.seed = seed
    side = _side_of(splits.split_songs(raw, config))
    split_apart += any(side[a] != side[b] for a, b in pairs)
  assert split_apart > 0


def test_kfold_and_cv_by_song_keep_copies_in_one_fold(tmp_path):
  root = str(tmp_path / 'music')
  pairs = _library(root)
  found, _ = songs_lib.identify(sources.list_folder(root))
  for seed in range(5):
    folds = splits.assign_folds(stratify.ungrouped(found), 4, seed)
    assert all(folds[a] == folds[b] for a, b in pairs)


def test_a_symlink_is_the_same_song(tmp_path):
  root = tmp_path / 'music'
  _library(str(root), copies=0)
  os.symlink(root / 'jazz' / '03.wav', root / 'jazz' / 'linked.wav')
  listed = sources.list_folder(str(root))
  assert len(listed) == 17
  found, duplicates = songs_lib.identify(listed)
  assert len(found) == 16 and 'jazz/linked.wav' not in {s.key for s in found}
  assert duplicates['same_file'] == [{'file': os.path.realpath(root / 'jazz' / '03.wav'),
                                      'kept': 'jazz/03.wav', 'dropped': ['jazz/linked.wav']}]
  assert duplicates['identical_content'] == []


def test_one_file_under_two_genres_is_refused(tmp_path):
  root = tmp_path / 'music'
  _library(str(root), copies=0)
  os.symlink(root / 'jazz' / '03.wav', root / 'rock' / 'linked.wav')
  with pytest.raises(errors.DataError, match='different genres .*jazz, rock'):
    songs_lib.identify(sources.list_folder(str(root)))


def test_data_summary_lists_the_duplicates(tmp_path):
  root = str(tmp_path / 'music')
  pairs = _library(root, copies=2)
  os.symlink(os.path.join(root, 'rock', '05.wav'), os.path.join(root, 'rock', 'alias.wav'))
  ds = ip.load_dataset(_config(source='folder', root=root, validation_fraction=0.25,
                               test_fraction=0.25), str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'data_summary.json') as f:
    summary = json.load(f)
  dup = summary['duplicates']
  assert [d['songs'] for d in dup['identical_content']] == [list(p) for p in pairs]
  assert dup['same_file'][0]['dropped'] == ['rock/alias.wav']
  side = {s.key: name for name, x in (('train', ds.train), ('validation', ds.validation),
                                      ('test', ds.test)) for s in x.songs}
  assert all(side[a] == side[b] for a, b in pairs)
  assert 'rock/alias.wav' not in side


# ---------------------------------------------------------------- manifest source


def _manifest(path, rows) -> str:
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['path', 'label', 'split'][:len(rows[0])])
    w.writerows(rows)
  return str(path)


def test_manifest_relative_and_absolute_paths_of_one_file_are_refused(tmp_path):
  song = _wav(tmp_path / 'a' / 'song.wav', 300)
  _wav(tmp_path / 'a' / 'other.wav', 330)
  path = _manifest(tmp_path / 'm.csv', [['a/song.wav', 'jazz', 'train'],
                                        ['a/other.wav', 'jazz', 'train'],
                                        [song, 'jazz', 'test']])
  with pytest.raises(errors.DataError, match=r"line 4: .* is the same file as 'a/song.wav' "
                     r'on line 2'):
    sources.read_manifest(path)


def test_manifest_copies_in_two_split_columns_are_refused(tmp_path):
  rows = []
  for i in range(6):
    rows.append([os.path.relpath(_wav(tmp_path / f's{i}.wav', 250 + 7 * i), tmp_path), 'jazz',
                 ('train', 'validation', 'test')[i % 3]])
  shutil.copyfile(tmp_path / 's0.wav', tmp_path / 'renamed.wav')
  rows.append(['renamed.wav', 'jazz', 'test'])
  found, _ = songs_lib.identify(sources.read_manifest(_manifest(tmp_path / 'm.csv', rows)))
  config = _config(source='manifest', split='manifest')
  with pytest.raises(errors.DataError, match='byte-identical copies of train songs, e.g. '
                     'renamed.wav = s0.wav'):
    splits.split_songs(found, config)


def test_manifest_copies_follow_their_group(tmp_path):
  songs = [Song(key=f'k{i}', path=_wav(tmp_path / f'{i}.wav', 250 + 7 * i), genre='jazz',
                group=('artist1' if i < 2 else None)) for i in range(4)]
  shutil.copyfile(tmp_path / '0.wav', tmp_path / 'copy.wav')
  songs.append(Song(key='kcopy', path=str(tmp_path / 'copy.wav'), genre='jazz'))
  found, _ = songs_lib.identify(songs)
  by_key = {s.key: s for s in found}
  assert by_key['kcopy'].group == 'artist1' and by_key['kcopy'].content
  assert by_key['kcopy'].content == by_key['k0'].content and not by_key['k2'].content


# ---------------------------------------------------------------- GTZAN source


def test_gtzan_copies_stay_together_and_lists_cannot_split_them(tmp_path):
  base = tmp_path / 'gtzan' / 'genres'
  for gi, genre in enumerate(('blues', 'jazz')):
    for i in range(8):
      _wav(base / genre / f'{genre}.{i:05d}.wav', 200 + 50 * gi + 3 * i)
  shutil.copyfile(base / 'blues' / 'blues.00000.wav', base / 'blues' / 'blues.00007.wav')
  listed = sources.discover_songs(_config(source='gtzan', root=str(tmp_path / 'gtzan')))
  found, duplicates = songs_lib.identify(listed)
  assert duplicates['identical_content'][0]['songs'] == ['blues.00000', 'blues.00007']
  for seed in range(10):
    config = _config(source='gtzan', root=str(tmp_path / 'gtzan'), validation_fraction=0.25,
                     test_fraction=0.25)
    config.seed = seed
    side = _side_of(splits.split_songs(found, config))
    assert side['blues.00000'] == side['blues.00007']
  by_key = {s.key: s for s in found}
  listed_split = stratify.SongSplit(
      train=[by_key['blues.00000'], by_key['jazz.00000']], validation=[by_key['jazz.00001']],
      test=[by_key['blues.00007']])
  with pytest.raises(errors.DataError, match='blues.00007 = blues.00000'):
    stratify.check_disjoint(listed_split)


def test_distinct_files_are_never_marked(tmp_path):
  songs = [Song(key=f'k{i}', path=_wav(tmp_path / f'{i}.wav', 250 + 7 * i), genre='jazz')
           for i in range(5)]
  songs.append(Song(key='missing', path=str(tmp_path / 'nope.wav'), genre='jazz'))
  songs.append(Song(key='synthetic/jazz/0001', path='', genre='jazz'))
  found, duplicates = songs_lib.identify(songs)
  assert found == sorted(songs, key=lambda s: s.key)
  assert duplicates == {'same_file': [], 'identical_content': []}


def test_symlinked_folders_are_followed_and_loops_read_once(tmp_path, caplog):
  root = tmp_path / 'music'
  _library(str(root), copies=0, per_genre=3)
  elsewhere = tmp_path / 'elsewhere' / 'live'
  _wav(str(elsewhere / 'gig.wav'), 777)
  os.symlink(elsewhere, root / 'jazz' / 'live')  # a linked folder: followed
  os.symlink(root / 'rock', root / 'rock' / 'again')  # a loop: read once, said
  keys = {s.key for s in sources.list_folder(str(root))}
  assert 'jazz/live/gig.wav' in keys
  assert not any(k.startswith('rock/again/') for k in keys) and len(keys) == 7
  assert any('symlink loop' in r.getMessage() for r in caplog.records)
