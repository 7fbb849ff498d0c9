"""Decode-once cache: content, bad files, reuse, rebuild, atomicity (melgenre_jax.data.cache)."""

import json
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf

from configs import default
from melgenre_jax.data import audio
from melgenre_jax.data import cache
from melgenre_jax.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
SR = 8000


def _config(root='', **data):
  config = default.get_config()
  config.audio.sample_rate = SR
  config.audio.segment_seconds = 0.5
  config.audio.segment_hop_seconds = 0.5
  config.data.min_song_seconds = 0.25
  config.data.cache_workers = 0
  config.data.source = 'folder'
  config.data.root = str(root)
  config.progress_bar = False
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


def _tone(seconds, freq, amp=0.3, sr=SR):
  t = np.arange(int(round(seconds * sr))) / sr
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path, wave, sr=SR):
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(str(path), wave, sr)


def _good_dataset(root):
  _write(root / 'jazz' / 'a.wav', _tone(1.0, 300))  # 2 segments
  _write(root / 'jazz' / 'sub' / 'b.flac', _tone(1.6, 400))  # 3, tail dropped
  _write(root / 'rock' / 'c.ogg', _tone(0.3, 500))  # padded to 1
  _write(root / 'rock' / 'd.wav', _tone(1.5, 600, 0.5, 16000), sr=16000)  # resampled


def _bad_files(root):
  (root / 'rock' / 'corrupt.wav').write_bytes(os.urandom(2000))
  (root / 'rock' / 'empty.flac').write_bytes(b'')
  _write(root / 'rock' / 'silent.wav', np.zeros(SR, np.float32))
  _write(root / 'jazz' / 'short.wav', _tone(0.1, 300))
  (root / 'jazz' / 'text.ogg').write_text('not audio\n' * 50)


def _build(config):
  songs = sources.discover_songs(config)
  return cache.build_or_load(config, songs, config.data.cache_dir or str(
      pathlib.Path(config.data.root).parent / 'cache'), progress=False)


def test_cache_content_and_layout(tmp_path):
  root = tmp_path / 'music'
  _good_dataset(root)
  c = _build(_config(root))
  assert not c.reused
  assert [s.key for s in c.songs] == ['jazz/a.wav', 'jazz/sub/b.flac',
                                      'rock/c.ogg', 'rock/d.wav']
  assert c.num_rows.tolist() == [2, 3, 1, 3]
  assert c.inputs.shape == (9, 4000) and c.inputs.dtype == np.float32
  assert isinstance(c.inputs, np.memmap)
  assert c.song_index.tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 3]
  want = audio.segment_audio(audio.load_audio(c.songs[1].path, SR), 4000,
                             4000, 2000)
  np.testing.assert_array_equal(c.inputs[2:5], want)
  assert c.inputs[5, 2400:].max() == 0  # the short song's padding
  for name in ('inputs.npy', 'song_index.npy', 'songs.json', 'summary.json'):
    assert os.path.isfile(os.path.join(c.path, name))
  assert not [n for n in os.listdir(os.path.dirname(c.path))
              if n.startswith('.tmp-')]


def test_bad_files_are_skipped_and_reported(tmp_path):
  root = tmp_path / 'music'
  _good_dataset(root)
  _bad_files(root)
  c = _build(_config(root))
  assert len(c.songs) == 4
  with open(os.path.join(c.path, 'summary.json')) as f:
    summary = json.load(f)
  reasons = {b['key']: b['reason'] for b in summary['bad_files']}
  assert set(reasons) == {'rock/corrupt.wav', 'rock/empty.flac',
                          'rock/silent.wav', 'jazz/short.wav', 'jazz/text.ogg'}
  assert 'not a readable audio file' in reasons['rock/corrupt.wav']
  assert 'empty file' in reasons['rock/empty.flac']
  assert 'silent' in reasons['rock/silent.wav']
  assert 'too short' in reasons['jazz/short.wav']
  assert 'not a readable audio file' in reasons['jazz/text.ogg']
  assert summary['num_bad'] == 5 and summary['num_songs'] == 9
  assert summary['per_genre']['rock'] == {'songs': 5, 'good': 2, 'bad': 3,
                                          'segments': 4}


def test_silent_song_kept_when_skip_silent_is_off(tmp_path):
  root = tmp_path / 'music'
  _write(root / 'rock' / 'silent.wav', np.zeros(SR, np.float32))
  c = _build(_config(root, skip_silent=False))
  assert c.inputs.shape == (2, 4000) and c.summary['num_bad'] == 0


def test_reused_without_decoding_and_rebuilt_on_change(tmp_path, monkeypatch):
  root = tmp_path / 'music'
  _good_dataset(root)
  first = _build(_config(root))

  def no_decoding(*args):
    raise AssertionError(f'decoded again: {args[1]}')
  monkeypatch.setattr(cache, 'decode_song', no_decoding)
  again = _build(_config(root))
  assert again.reused and again.path == first.path
  np.testing.assert_array_equal(again.inputs, first.inputs)
  # An audio-config change, or an edited file, needs a new cache.
  monkeypatch.undo()
  changed = _build(_config(root))
  assert changed.reused
  config = _config(root)
  config.audio.segment_seconds = 0.25
  config.audio.segment_hop_seconds = 0.25
  rebuilt = _build(config)
  assert not rebuilt.reused and rebuilt.path != first.path
  assert rebuilt.inputs.shape == (17, 2000)  # 4 + 6 + 1 + 6
  _write(root / 'jazz' / 'a.wav', _tone(2.0, 300))
  assert not _build(_config(root)).reused


def test_crash_leaves_no_cache_that_looks_complete(tmp_path, monkeypatch):
  root = tmp_path / 'music'
  _good_dataset(root)
  real = cache.decode_song
  calls = []

  def crash_on_third(index, song, params):
    calls.append(index)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real(index, song, params)
  monkeypatch.setattr(cache, 'decode_song', crash_on_third)
  with pytest.raises(KeyboardInterrupt):
    _build(_config(root))
  assert os.listdir(tmp_path / 'cache') == []  # neither cache nor temp dir
  monkeypatch.undo()
  c = _build(_config(root))
  assert not c.reused and c.inputs.shape == (9, 4000)


@pytest.mark.slow
def test_parallel_workers_match_in_process(tmp_path):
  root = tmp_path / 'music'
  _good_dataset(root)
  _bad_files(root)
  serial = _build(_config(root))
  parallel = _build(_config(root, cache_workers=2,
                            cache_dir=str(tmp_path / 'cache2')))
  assert not parallel.reused
  np.testing.assert_array_equal(parallel.inputs, serial.inputs)
  assert parallel.summary['bad_files'] == serial.summary['bad_files']


def test_synthetic_songs_are_generated(tmp_path):
  config = _config(source='synthetic', cache_dir=str(tmp_path / 'cache'))
  config.data.synthetic.songs_per_genre = 2
  config.data.synthetic.num_genres = 2
  config.data.synthetic.song_seconds = 1.2
  c = _build(config)
  assert len(c.songs) == 4 and c.inputs.shape == (8, 4000)
  from melgenre_jax.data import synthetic
  want = synthetic.synthesize_song(c.songs[0].key, SR, 1.2)[:4000]
  np.testing.assert_allclose(c.inputs[0], want, atol=1e-6)


def test_host_features_are_cached(tmp_path):
  from melgenre_jax.data import features
  root = tmp_path / 'music'
  _write(root / 'jazz' / 'a.wav', _tone(1.0, 300))
  config = _config(root)
  config.features.where = 'host'
  config.features.n_fft = 256
  config.features.hop_length = 128
  config.features.n_mels = 16
  c = _build(config)
  wave = audio.load_audio(str(root / 'jazz' / 'a.wav'), SR)
  want = features.librosa_log_mel(wave[:4000], config.audio, config.features)
  assert c.inputs.shape == (2, *want.shape)
  assert want.shape[-1] == 16
  np.testing.assert_allclose(c.inputs[0], want, rtol=1e-5, atol=1e-5)
  config.features.n_mels = 8  # feature config is part of the key ...
  assert not _build(config).reused
  device = _config(root)
  device.features.n_mels = 8  # ... but not when features are on device
  other = _config(root)
  other.features.n_mels = 32
  assert cache.cache_hash(device, c.songs) == cache.cache_hash(other, c.songs)


def test_materialize_rows(tmp_path):
  root = tmp_path / 'music'
  _good_dataset(root)
  c = _build(_config(root))
  rows = np.array([1, 2, 6, 7])
  view = cache.materialize_rows(c, rows)
  assert isinstance(view, np.memmap)
  np.testing.assert_array_equal(view, c.inputs[rows])
  again = cache.materialize_rows(c, rows)
  assert again.filename == view.filename
  assert cache.materialize_rows(c, np.arange(9)) is c.inputs
