"""Decode-once cache: content, bad files, reuse, rebuild, atomicity, damage, full disks.

(melgenre_jax.data.cache and checksummed_files.)
"""

import errno
import gc
import json
import logging
import os
import pathlib
import shutil
import subprocess
import zlib

import numpy as np
import pytest
import soundfile as sf

from configs import default
from melgenre_jax import errors
from melgenre_jax.data import audio
from melgenre_jax.data import cache
from melgenre_jax.data import checksummed_files
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


# ------------------------------------------------ damage: detected, moved, rebuilt


def _damaged(cache_dir):
  folder = os.path.join(cache_dir, 'damaged')
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _truncate(path, drop):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - drop)


def _overwrite_middle(path, data):
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(data)


def _clean_copy(c):
  """The arrays of an intact cache, copied (its memmaps must not be read later)."""
  return np.array(c.inputs), c.song_index.copy(), [s.key for s in c.songs]


def _assert_same(c, want):
  np.testing.assert_array_equal(c.inputs, want[0])
  np.testing.assert_array_equal(c.song_index, want[1])
  assert [s.key for s in c.songs] == want[2]


def test_crc32_combine_matches_zlib():
  rng = np.random.default_rng(0)
  for n1, n2 in ((0, 1), (3, 0), (256, 1), (256, 1_000_003), (5, 77_777)):
    a, b = rng.bytes(n1), rng.bytes(n2)
    got = checksummed_files.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b))
    assert got == zlib.crc32(a + b)


def test_manifests_record_sizes_and_checksums(tmp_path):
  root = tmp_path / 'music'
  _good_dataset(root)
  c = _build(_config(root))
  view = cache.materialize_rows(c, np.array([1, 2, 6, 7]))
  entry = json.load(open(os.path.join(c.path, 'manifest.json')))
  digest = os.path.basename(view.filename)[:-len('.npy')]
  views = os.path.join(c.path, 'views')
  view_manifest = json.load(open(os.path.join(views, f'{digest}.json')))
  assert set(entry['files']) == {'inputs.npy', 'song_index.npy', 'songs.json',
                                 'summary.json'}
  for folder, manifest in ((c.path, entry), (views, view_manifest)):
    assert manifest['manifest_version'] == 1 and manifest['checksum'] == 'crc32'
    for name, rec in manifest['files'].items():
      data = pathlib.Path(folder, name).read_bytes()
      assert rec == {'bytes': len(data), 'crc32': f'{zlib.crc32(data):08x}'}
  np.testing.assert_array_equal(np.load(os.path.join(c.path, 'song_index.npy')),
                                c.song_index)


@pytest.mark.parametrize('damage', ['truncated', 'overwritten', 'no manifest'])
def test_damaged_entry_is_moved_aside_and_rebuilt(tmp_path, caplog, damage):
  root = tmp_path / 'music'
  _good_dataset(root)
  clean = _build(_config(root))
  want, path = _clean_copy(clean), clean.path
  del clean  # a truncated memmapped file must never be read (SIGBUS)
  inputs = os.path.join(path, 'inputs.npy')
  size = os.path.getsize(inputs)
  if damage == 'truncated':  # a killed copy, a full disk
    _truncate(inputs, 5000)
    cause = 'inputs.npy has 139256 bytes but 144256 were written (truncated'
  elif damage == 'overwritten':  # bytes changed later, size intact
    _overwrite_middle(inputs, b'\xff' * 4096)  # NaNs, were they read
    cause = 'inputs.npy: CRC-32'
  else:  # what a crash mid-copy (or a pre-manifest build) leaves
    os.remove(os.path.join(path, 'manifest.json'))
    cause = 'manifest.json is missing'
  with caplog.at_level(logging.WARNING):
    again = _build(_config(root))
  assert not again.reused and again.path == path
  _assert_same(again, want)
  moved = _damaged(tmp_path / 'cache')
  assert len(moved) == 1 and moved[0].startswith(os.path.basename(path) + '.')
  kept = tmp_path / 'cache' / 'damaged' / moved[0]
  assert os.path.getsize(kept / 'inputs.npy') == size - 5000 * (damage == 'truncated')
  assert path in caplog.text and cause in caplog.text
  assert str(kept) in caplog.text
  assert _build(_config(root)).reused  # the rebuilt entry passes its checks


def test_large_files_get_checksums_only_with_verify_cache(tmp_path, monkeypatch):
  root = tmp_path / 'music'
  _good_dataset(root)
  want = _clean_copy(_build(_config(root)))
  monkeypatch.setattr(checksummed_files, 'VERIFY_BYTES', 1000)  # inputs.npy is "large"
  c = _build(_config(root))
  _overwrite_middle(os.path.join(c.path, 'inputs.npy'), b'\xff' * 4096)
  # Sizes only: a same-size overwrite of a large file is the documented gap ...
  assert _build(_config(root)).reused and not _damaged(tmp_path / 'cache')
  # ... that --config.data.verify_cache=True closes.
  verified = _build(_config(root, verify_cache=True))
  assert not verified.reused and len(_damaged(tmp_path / 'cache')) == 1
  _assert_same(verified, want)


@pytest.mark.parametrize('damage', ['truncated', 'overwritten', 'no manifest'])
def test_damaged_view_is_moved_aside_and_rewritten(tmp_path, caplog, damage):
  root = tmp_path / 'music'
  _good_dataset(root)
  c = _build(_config(root))
  rows = np.array([1, 2, 6, 7])
  view = cache.materialize_rows(c, rows)
  path, want = view.filename, np.array(view)
  del view
  if damage == 'truncated':
    _truncate(path, 100)
  elif damage == 'overwritten':
    _overwrite_middle(path, b'\xff' * 64)
  else:
    os.remove(path[:-len('.npy')] + '.json')
  with caplog.at_level(logging.WARNING):
    again = cache.materialize_rows(c, rows)
  assert again.filename == path
  np.testing.assert_array_equal(again, want)
  np.testing.assert_array_equal(again, c.inputs[rows])
  digest = os.path.basename(path)[:-len('.npy')]
  moved = _damaged(tmp_path / 'cache')
  assert len(moved) == 1
  assert moved[0].startswith(f'{os.path.basename(c.path)}.view-{digest}.')
  assert f'{digest}.npy' in os.listdir(tmp_path / 'cache' / 'damaged' / moved[0])
  assert path in caplog.text
  assert cache.materialize_rows(c, rows).filename == path  # intact now
  assert len(_damaged(tmp_path / 'cache')) == 1


# --------------------------------------------------------------- full disks


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_after_first(real):
  calls = []

  def write(*args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
      _no_space()
    return real(*args, **kwargs)
  return write


@pytest.mark.parametrize('at', ['rows', 'small files'])
def test_disk_full_during_build_is_a_disk_full_error(tmp_path, monkeypatch, at):
  root = tmp_path / 'music'
  _good_dataset(root)
  if at == 'rows':  # after some rows went to the temp folder
    monkeypatch.setattr(checksummed_files.RowWriter, 'append',
                        _fail_after_first(checksummed_files.RowWriter.append))
  else:  # song_index.npy / songs.json / summary.json / manifest.json
    monkeypatch.setattr(checksummed_files, 'write_bytes', _no_space)
  with pytest.raises(errors.DiskFullError) as e:
    _build(_config(root))
  assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
  assert 'disk full' in str(e.value) and str(tmp_path / 'cache') in str(e.value)
  assert os.listdir(tmp_path / 'cache') == []  # nothing that looks complete
  monkeypatch.undo()
  assert _build(_config(root)).inputs.shape == (9, 4000)


def test_disk_full_while_writing_a_view(tmp_path, monkeypatch):
  root = tmp_path / 'music'
  _good_dataset(root)
  c = _build(_config(root))
  rows = np.array([1, 2, 6, 7])
  monkeypatch.setattr(checksummed_files.RowWriter, 'append', _no_space)
  with pytest.raises(errors.DiskFullError, match='split view'):
    cache.materialize_rows(c, rows)
  assert os.listdir(os.path.join(c.path, 'views')) == []
  monkeypatch.undo()
  np.testing.assert_array_equal(cache.materialize_rows(c, rows), c.inputs[rows])


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (needs root and mount rights; skipped where CI lacks them)."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  if os.geteuid() != 0 or not shutil.which('mount'):
    pytest.skip('mounting a tmpfs needs root')
  r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(disk)],
                     capture_output=True, text=True, check=False)
  if r.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip()}')
  try:
    yield disk
  finally:
    gc.collect()  # close the tests' memmaps, or umount says "busy"
    if subprocess.run(['umount', str(disk)], capture_output=True,
                      check=False).returncode:
      subprocess.run(['umount', '-l', str(disk)], check=False)


def test_really_full_disk(small_disk, tmp_path):
  # The build: 40 synthetic songs of 1.2 s at 8 kHz are ~1.3 MB of rows.
  config = _config(source='synthetic', cache_dir=str(small_disk / 'big'))
  config.data.synthetic.songs_per_genre = 20
  config.data.synthetic.num_genres = 2
  config.data.synthetic.song_seconds = 1.2
  with pytest.raises(errors.DiskFullError, match=str(small_disk)):
    _build(config)
  assert os.listdir(small_disk / 'big') == []
  # A view: the cache fits, its copy of most rows does not (write(), not a
  # memory map: a mapped write on a full tmpfs would kill pytest with SIGBUS).
  root = tmp_path / 'music'
  _good_dataset(root)
  c = _build(_config(root, cache_dir=str(small_disk / 'ok')))
  filler = small_disk / 'filler'
  filler.write_bytes(b'\0' * (shutil.disk_usage(small_disk).free - (64 << 10)))
  rows = np.arange(1, 9)
  with pytest.raises(errors.DiskFullError, match='split view'):
    cache.materialize_rows(c, rows)
  assert os.listdir(os.path.join(c.path, 'views')) == []
  filler.unlink()
  np.testing.assert_array_equal(cache.materialize_rows(c, rows), c.inputs[rows])


# ------------------------------------------------------------ end to end


@pytest.mark.slow
def test_training_on_a_damaged_cache_matches_a_clean_run(tiny_run_dir, tmp_path,
                                                         caplog):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from melgenre_jax import train  # pylint: disable=g-import-not-at-top
  from melgenre_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  data = input_pipeline.load_dataset(tiny.get_config(), workdir)  # cache + views
  entry, view = data.summary['cache'], data.train.inputs.filename
  del data
  _overwrite_middle(os.path.join(entry, 'inputs.npy'), b'\xff' * (64 << 10))  # NaNs
  _truncate(view, 4096)
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(tiny.get_config(), workdir)
  assert f'damaged cache entry {entry}' in caplog.text
  assert len(_damaged(os.path.join(workdir, 'cache'))) == 1

  def metrics(run):
    rows = json.load(open(os.path.join(run, 'metrics.json')))
    return [{k: v for k, v in r.items() if 'seconds' not in k} for r in rows]
  assert metrics(workdir) == metrics(tiny_run_dir)
