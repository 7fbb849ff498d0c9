"""Tests of the built-in synthetic genre set (melgenre_jax/data/synthetic/)."""

import functools
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from melgenre_jax.data import synthetic
from melgenre_jax.data.songs import Song

SR = 22050


def _song(genre: str, index: int = 0, seconds: float = 3.0, sample_rate: int = SR) -> np.ndarray:
  return synthetic.synthesize_song(f'synthetic/{genre}/{index:04d}', sample_rate, seconds)


# --- Song lists.


def test_genres_are_ten_distinct_names():
  assert isinstance(synthetic.GENRES, tuple)
  assert len(synthetic.GENRES) == 10
  assert len(set(synthetic.GENRES)) == 10
  assert all(isinstance(g, str) and g.isalpha() and g.islower() for g in synthetic.GENRES)


def test_list_sizes_keys_and_fields():
  songs = synthetic.list_synthetic_songs(3, num_genres=4)
  assert len(songs) == 12
  assert all(isinstance(s, Song) for s in songs)
  assert [s.genre for s in songs] == [g for g in synthetic.GENRES[:4] for _ in range(3)]
  assert songs[0].key == f'synthetic/{synthetic.GENRES[0]}/0000'
  assert songs[-1].key == f'synthetic/{synthetic.GENRES[3]}/0002'
  assert len({s.key for s in songs}) == 12
  assert all(s.path == '' and s.group is None and s.split is None for s in songs)
  assert all(s.key == f'synthetic/{s.genre}/{int(s.key.rsplit("/", 1)[1]):04d}' for s in songs)


def test_list_defaults_to_all_genres():
  songs = synthetic.list_synthetic_songs(1)
  assert [s.genre for s in songs] == list(synthetic.GENRES)


@pytest.mark.parametrize('songs_per_genre,num_genres', [
    (0, 10), (-1, 10), (3, 1), (3, 0), (3, 11), (3, -2), (2.5, 10), (3, 4.0), (True, 10)])
def test_list_bad_arguments_raise(songs_per_genre, num_genres):
  with pytest.raises(ValueError, match='config.data.synthetic'):
    synthetic.list_synthetic_songs(songs_per_genre, num_genres)


# --- Audio.


@pytest.mark.parametrize('genre', synthetic.GENRES)
def test_every_genre_renders_valid_audio(genre):
  y = _song(genre, 1, seconds=4.0)
  assert y.dtype == np.float32
  assert y.shape == (4 * SR,)
  assert np.all(np.isfinite(y))
  peak = float(np.abs(y).max())
  assert 0.3 - 1e-4 <= peak <= 0.9 + 1e-4  # normalised to a random peak in [0.3, 0.9]
  assert float(np.sqrt(np.mean(y**2))) > 0.01  # not silent
  # Not silent over long stretches either: every 1 s window carries signal.
  windows = y[:4 * SR].reshape(4, SR)
  assert np.all(np.sqrt(np.mean(windows**2, axis=1)) > 1e-3)


@pytest.mark.parametrize('seconds,sample_rate', [
    (0.5, SR), (1.0001, SR), (2.37, 16000), (1.5, 8000), (0.75, 44100), (0.01, SR)])
def test_length_is_rounded_seconds_times_rate(seconds, sample_rate):
  for genre in ('ambient', 'metal', 'jazz'):
    y = _song(genre, 2, seconds=seconds, sample_rate=sample_rate)
    assert y.shape == (round(seconds * sample_rate),)
    assert np.all(np.isfinite(y)) and float(np.abs(y).max()) <= 1.0


def test_same_key_is_bit_identical_and_keys_differ():
  for genre in synthetic.GENRES:
    a = _song(genre, 7, seconds=2.0)
    b = _song(genre, 7, seconds=2.0)
    assert np.array_equal(a, b), genre
    c = _song(genre, 8, seconds=2.0)
    assert not np.array_equal(a, c), genre


@pytest.mark.slow
def test_determinism_does_not_depend_on_python_hash_seed():
  """Seeding must not use hash(): a fresh process with another PYTHONHASHSEED gives the same bytes."""
  key = 'synthetic/reggae/0003'
  here = hashlib.sha256(synthetic.synthesize_song(key, 16000, 1.5).tobytes()).hexdigest()
  code = ('import hashlib; from melgenre_jax.data import synthetic; '
          f'print(hashlib.sha256(synthetic.synthesize_song({key!r}, 16000, 1.5).tobytes()).hexdigest())')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONHASHSEED='12345', PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True, cwd=root)
  assert out.stdout.strip() == here


def test_synthesize_style_is_driven_by_the_generator():
  a = synthetic.synthesize_style('funk', np.random.default_rng(5), SR, 2.0)
  b = synthetic.synthesize_style('funk', np.random.default_rng(5), SR, 2.0)
  c = synthetic.synthesize_style('funk', np.random.default_rng(6), SR, 2.0)
  assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize('key', [
    'synthetic/polka/0001', 'synthetic/Rock/0001', 'rock/0001', 'synthetic/rock/', 'synthetic/rock/abc',
    'other/rock/0001', 'synthetic/rock/0001/x', '', None])
def test_bad_keys_raise(key):
  with pytest.raises(ValueError):
    synthetic.synthesize_song(key, SR, 1.0)


def test_unknown_genre_message_lists_allowed_names():
  with pytest.raises(ValueError, match='ambient'):
    synthetic.synthesize_song('synthetic/polka/0001', SR, 1.0)
  with pytest.raises(ValueError, match='polka'):
    synthetic.synthesize_style('polka', np.random.default_rng(0), SR, 1.0)


@pytest.mark.parametrize('sample_rate,seconds', [
    (0, 1.0), (-22050, 1.0), (500, 1.0), (22050.0, 1.0), (SR, 0.0), (SR, -1.0), (SR, float('nan')),
    (SR, float('inf'))])
def test_bad_rate_or_duration_raise(sample_rate, seconds):
  with pytest.raises(ValueError):
    synthetic.synthesize_song('synthetic/rock/0000', sample_rate, seconds)


# --- Cheap separability sanity checks (not a training run).


def _band_energies(y: np.ndarray, sample_rate: int = SR, n_fft: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Power spectrogram (frames x bins) and bin frequencies, numpy only."""
  frames = y[:y.shape[0] // n_fft * n_fft].reshape(-1, n_fft) * np.hanning(n_fft)
  return np.abs(np.fft.rfft(frames, axis=1))**2, np.fft.rfftfreq(n_fft, 1.0 / sample_rate)


def _onset_rate(y: np.ndarray, hop: int = 256) -> float:
  """Fraction of frames with a clear rise in high-band energy (drum-hit density)."""
  hp = np.diff(y)
  energy = np.log(np.add.reduceat(hp**2, np.arange(0, hp.shape[0], hop)) + 1e-9)
  rise = np.diff(energy)
  return float(np.mean(rise > 1.0))


def _low_fraction(y: np.ndarray, cutoff: float = 120.0) -> float:
  power, freqs = _band_energies(y)
  return float(power[:, freqs < cutoff].sum() / power.sum())


def _high_fraction(y: np.ndarray, cutoff: float = 2000.0) -> float:
  power, freqs = _band_energies(y)
  return float(power[:, freqs > cutoff].sum() / power.sum())


@functools.lru_cache(maxsize=None)
def _shared_song(genre: str, index: int, seconds: float) -> np.ndarray:
  """Songs reused across the statistics tests (read-only: never mutate the result)."""
  return _song(genre, index, seconds=seconds)


def _stat(genre: str, fn, songs: int = 4) -> np.ndarray:
  return np.array([fn(_shared_song(genre, i, 6.0)) for i in range(songs)])


def test_drummed_styles_have_denser_onsets_than_ambient_and_classical():
  ambient, classical = _stat('ambient', _onset_rate), _stat('classical', _onset_rate)
  funk, disco = _stat('funk', _onset_rate), _stat('disco', _onset_rate)
  assert min(funk.min(), disco.min()) > ambient.max()
  assert min(np.median(funk), np.median(disco)) > 3 * np.median(classical)


def test_distorted_metal_is_brighter_than_ambient():
  assert np.median(_stat('metal', _high_fraction)) > 3 * np.median(_stat('ambient', _high_fraction))


def test_hiphop_has_more_sub_bass_than_classical():
  assert np.median(_stat('hiphop', _low_fraction)) > 2 * np.median(_stat('classical', _low_fraction))


def test_nearest_centroid_on_band_energies_beats_chance_by_far():
  """Log band energies of 3 s songs, centroids from songs 0-2, tested on songs 3-4 (all 10 styles)."""
  edges = np.geomspace(40, 10000, 25)

  def features(y: np.ndarray) -> np.ndarray:
    power, freqs = _band_energies(y)
    bands = [power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])]
    logb = np.log(np.stack(bands, 1) + 1e-9)
    logb -= logb.max()  # loudness-invariant
    return np.concatenate([logb.mean(0), logb.std(0)])

  train, test = [], []
  for genre in synthetic.GENRES:
    for i in range(5):
      (train if i < 3 else test).append([features(_song(genre, i, seconds=3.0))])
  centroids = np.stack([np.mean(train[g * 3:(g + 1) * 3], axis=(0, 1)) for g in range(10)])
  scale = np.std(np.concatenate([np.concatenate(t) for t in train]), axis=0) + 1e-6
  correct = total = 0
  for g in range(10):
    for segs in test[g * 2:(g + 1) * 2]:
      for f in segs:
        correct += int(np.argmin((((f - centroids) / scale)**2).sum(1)) == g)
        total += 1
  assert correct / total >= 0.4, correct / total  # chance is 0.1; about 0.75 when written
