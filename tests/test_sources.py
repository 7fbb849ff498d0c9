"""Song discovery for every config.data.source (melgenre_jax.data.sources)."""

import os
import pathlib

import pytest

from configs import default
from melgenre_jax.data import gtzan
from melgenre_jax.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**data):
  config = default.get_config()
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


def _touch(path: pathlib.Path, content: bytes = b'x'):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content)


def test_folder_nested_unicode_and_ignored_files(tmp_path):
  _touch(tmp_path / 'jazz' / 'a.wav')
  _touch(tmp_path / 'jazz' / 'live' / '1999' / 'b.FLAC')
  _touch(tmp_path / 'Música Ñ' / 'canción é.ogg')
  _touch(tmp_path / 'rock' / 'x.mp3')
  _touch(tmp_path / 'rock' / 'cover.jpg')  # not audio: ignored
  _touch(tmp_path / 'rock' / '.hidden.wav')  # hidden: ignored
  _touch(tmp_path / '__MACOSX' / 'rock' / '._x.mp3')
  _touch(tmp_path / 'loose.wav')  # not in a genre folder: ignored
  songs = sources.discover_songs(_config(source='folder', root=str(tmp_path)))
  keys = [s.key for s in songs]
  assert keys == sorted(['jazz/a.wav', 'jazz/live/1999/b.FLAC',
                         'Música Ñ/canción é.ogg', 'rock/x.mp3'])
  by_key = {s.key: s for s in songs}
  assert by_key['jazz/live/1999/b.FLAC'].genre == 'jazz'
  assert by_key['Música Ñ/canción é.ogg'].genre == 'Música Ñ'
  assert os.path.isfile(by_key['rock/x.mp3'].path)
  assert sources.genre_names(_config(source='folder'), songs) == [
      'Música Ñ', 'jazz', 'rock']


def test_folder_empty_genre_fails_clearly(tmp_path):
  _touch(tmp_path / 'jazz' / 'a.wav')
  (tmp_path / 'blues').mkdir()
  _touch(tmp_path / 'blues' / 'readme.txt')
  with pytest.raises(ValueError, match=r"\['blues'\].*no audio files"):
    sources.discover_songs(_config(source='folder', root=str(tmp_path)))


def test_missing_root_and_unknown_source(tmp_path):
  with pytest.raises(ValueError, match='config.data.root is empty'):
    sources.discover_songs(_config(source='folder', root=''))
  with pytest.raises(FileNotFoundError, match='config.data.root'):
    sources.discover_songs(_config(source='gtzan',
                                   root=str(tmp_path / 'missing')))
  with pytest.raises(ValueError, match='no genre folders'):
    sources.discover_songs(_config(source='folder', root=str(tmp_path)))
  with pytest.raises(ValueError, match="config.data.source='mp3s'"):
    sources.discover_songs(_config(source='mp3s'))
  with pytest.raises(ValueError, match='config.data.manifest'):
    sources.discover_songs(_config(source='manifest', manifest=''))


@pytest.mark.parametrize('layout,ext', [
    ('genres', 'au'),  # original tarball
    ('genres_original', 'wav'),  # Kaggle
    ('Data/genres_original', 'wav'),  # Kaggle with its Data/ wrapper
    ('Data/genres', 'au'),
    ('', 'au'),  # root is the genres folder itself
])
def test_gtzan_layouts(tmp_path, layout, ext):
  base = tmp_path / layout if layout else tmp_path
  for g in gtzan.GTZAN_GENRES:
    for i in (0, 54):
      _touch(base / g / f'{g}.{i:05d}.{ext}')
  _touch(base / 'jazz' / '._jazz.00001.wav')  # macOS resource fork
  _touch(base / 'blues' / 'notes.txt')
  _touch(base / 'rock' / 'rock_mix.wav')  # not a GTZAN track name: warned
  songs = sources.discover_songs(_config(source='gtzan', root=str(tmp_path)))
  assert len(songs) == 20
  assert [s.key for s in songs[:2]] == ['blues.00000', 'blues.00054']
  assert {s.genre for s in songs} == set(gtzan.GTZAN_GENRES)
  assert all(s.path.endswith(f'{s.key}.{ext}') for s in songs)
  assert sources.genre_names(_config(source='gtzan'), songs) == list(
      gtzan.GTZAN_GENRES)


def test_gtzan_wrong_root_says_what_is_expected(tmp_path):
  _touch(tmp_path / 'music' / 'a.wav')
  with pytest.raises(FileNotFoundError, match='does not look like GTZAN'):
    sources.discover_songs(_config(source='gtzan', root=str(tmp_path)))


def test_gtzan_key_spellings():
  assert gtzan.gtzan_key('blues/blues.00012.wav') == 'blues.00012'
  assert gtzan.gtzan_key('./hiphop_00007.wav') == 'hiphop.00007'
  assert gtzan.gtzan_key('jazz.00054.au') == 'jazz.00054'
  assert gtzan.gtzan_key('my song.wav') is None


def test_manifest_paths_groups_and_splits(tmp_path):
  _touch(tmp_path / 'audio' / 'a.wav')
  _touch(tmp_path / 'elsewhere.wav')
  absolute = tmp_path / 'abs' / 'c.flac'
  _touch(absolute)
  csv = tmp_path / 'lists' / 'songs.csv'
  csv.parent.mkdir()
  csv.write_text(
      'path,label,split,group\n'
      '../audio/a.wav,jazz,train,artistA\n'
      '../elsewhere.wav,rock,val,\n'
      f'{absolute},rock,,artistB\n'
      '\n'
      '../missing.wav,jazz,test,artistC\n', encoding='utf-8')
  songs = sources.discover_songs(_config(source='manifest', manifest=str(csv)))
  assert len(songs) == 4
  a, e, c, m = songs
  assert a.path == str(tmp_path / 'audio' / 'a.wav')
  assert (a.genre, a.split, a.group) == ('jazz', 'train', 'artistA')
  assert (e.split, e.group) == ('validation', None)
  assert (c.path, c.split, c.group) == (str(absolute), None, 'artistB')
  assert m.split == 'test' and not os.path.exists(m.path)  # decoder reports it


def test_manifest_errors(tmp_path):
  bad_header = tmp_path / 'a.csv'
  bad_header.write_text('file,genre\nx.wav,jazz\n')
  with pytest.raises(ValueError, match='path,label'):
    sources.read_manifest(str(bad_header))
  bad_split = tmp_path / 'b.csv'
  bad_split.write_text('path,label,split\nx.wav,jazz,holdout\n')
  with pytest.raises(ValueError, match='line 2.*holdout'):
    sources.read_manifest(str(bad_split))
  dup = tmp_path / 'c.csv'
  dup.write_text('path,label\nx.wav,jazz\n./x.wav,rock\n')
  with pytest.raises(ValueError, match='line 3.*already listed on line 2'):
    sources.read_manifest(str(dup))
  with pytest.raises(FileNotFoundError):
    sources.read_manifest(str(tmp_path / 'none.csv'))


def test_synthetic_source():
  config = _config(source='synthetic')
  config.data.synthetic.songs_per_genre = 3
  config.data.synthetic.num_genres = 4
  songs = sources.discover_songs(config)
  assert len(songs) == 12 and all(s.path == '' for s in songs)
  from melgenre_jax.data import synthetic
  assert sources.genre_names(config, songs) == list(synthetic.GENRES[:4])
