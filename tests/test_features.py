"""The JAX log-mel front end against librosa (issue 4's "done when")."""

import functools

import jax
import jax.numpy as jnp
import librosa
import ml_collections
import numpy as np
import pytest
import scipy.signal

from configs import default as default_config
from melgenre_jax.data import features

TOL_DB = 0.05

# (sample_rate, n_fft, hop, n_mels, seconds): the reference and the two others of the issue.
SETTINGS = [
    (22050, 2048, 512, 128, 1.5),
    (16000, 1024, 256, 64, 1.0),
    (44100, 4096, 1024, 96, 1.0),
]


def _test_clips(sample_rate: int, seconds: float) -> np.ndarray:
  """Noise, two tones, a chirp and silence at very different levels: [5, S] float32."""
  n = int(round(sample_rate * seconds))
  t = np.arange(n) / sample_rate
  rng = np.random.default_rng(0)
  clips = [
      0.01 * rng.standard_normal(n),  # quiet white noise
      0.8 * np.sin(2 * np.pi * 440.0 * t),  # loud low tone
      0.05 * np.sin(2 * np.pi * 0.3 * sample_rate * t + 0.3),  # quiet high tone
      0.5 * librosa.chirp(fmin=40.0, fmax=0.45 * sample_rate, sr=sample_rate, length=n),
      np.zeros(n),  # silence
  ]
  return np.stack(clips).astype(np.float32)


def _librosa_db(clip, sample_rate, n_fft, hop, n_mels, top_db=80.0, **mel_kwargs):
  power = librosa.feature.melspectrogram(
      y=clip, sr=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=2.0,
      center=True, pad_mode='constant', **mel_kwargs)
  return librosa.power_to_db(power, ref=np.max, amin=1e-10, top_db=top_db).T


def _cfg(sample_rate=22050, **feature_overrides) -> ml_collections.ConfigDict:
  cfg = default_config.get_config()
  cfg.audio.sample_rate = sample_rate
  for k, v in feature_overrides.items():
    cfg.features[k] = v
  return cfg


@functools.lru_cache(maxsize=None)
def _frontend(sample_rate, n_fft, hop, n_mels, top_db=80.0):
  """Jitted make_frontend, cached so tests sharing settings and shapes compile once."""
  cfg = _cfg(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, top_db=top_db)
  return jax.jit(features.make_frontend(cfg.audio, cfg.features))


@functools.lru_cache(maxsize=None)
def _variant(sample_rate, n_fft, hop, n_mels, **kwargs):
  basis = features.mel_filterbank(sample_rate, n_fft, n_mels, 0.0, 0.0, 'slaney', False)
  return jax.jit(lambda w: features.log_mel_spectrogram(
      w, basis, n_fft=n_fft, hop_length=hop, top_db=80.0, amin=1e-10, **kwargs))


def _assert_close_above_floor(ours: np.ndarray, ref: np.ndarray, top_db: float = 80.0) -> None:
  assert ours.shape == ref.shape
  assert np.all(np.isfinite(ours))
  above = ref > ref.max() - top_db
  np.testing.assert_array_less(np.abs(ours - ref)[above], TOL_DB)


@pytest.mark.parametrize('sample_rate,n_fft,hop,n_mels,seconds', SETTINGS)
def test_matches_librosa_per_clip_in_a_batch(sample_rate, n_fft, hop, n_mels, seconds):
  clips = _test_clips(sample_rate, seconds)
  ours = np.asarray(_frontend(sample_rate, n_fft, hop, n_mels)(clips))
  assert ours.shape == (len(clips), features.num_frames(clips.shape[1], hop), n_mels)
  for i, clip in enumerate(clips):
    ref = _librosa_db(clip, sample_rate, n_fft, hop, n_mels)
    _assert_close_above_floor(ours[i], ref)
    # ref=np.max per clip: every clip (even the quiet ones) peaks at 0 dB, floor at -80.
    assert ours[i].max() == pytest.approx(0.0, abs=1e-4)
    assert ours[i].min() >= -80.0 - 1e-4
  # Silence (the last clip): librosa's answer is exactly 0 dB everywhere, never -inf/NaN.
  np.testing.assert_array_equal(ours[-1], 0.0)


def test_each_clip_gets_its_own_reference():
  sample_rate, n_fft, hop, n_mels, seconds = SETTINGS[0]
  clips = _test_clips(sample_rate, seconds)
  fn = _frontend(sample_rate, n_fft, hop, n_mels)  # same shapes as above: no recompile
  batched = np.asarray(fn(clips))
  # Making one clip 50x louder changes neither its dB (own ref) nor the others'
  # (a batch-wide ref would shift every other clip by -34 dB).
  scaled = clips.copy()
  scaled[1] *= 50.0
  np.testing.assert_allclose(np.asarray(fn(scaled)), batched, atol=1e-3)


def test_power_to_db_per_clip_matches_librosa_with_and_without_top_db():
  rng = np.random.default_rng(3)
  power = np.stack([10.0 ** rng.uniform(-9.5, -0.5, (40, 16)),  # 90 dB range
                    rng.gamma(2.0, 5.0, (40, 16)),
                    np.zeros((40, 16))]).astype(np.float32)
  for top_db, librosa_top_db in ((80.0, 80.0), (30.0, 30.0), (0.0, None), (-1.0, None)):
    ours = np.asarray(features.power_to_db_per_clip(jnp.asarray(power), amin=1e-10, top_db=top_db))
    for i, clip in enumerate(power):
      ref = librosa.power_to_db(clip, ref=np.max, amin=1e-10, top_db=librosa_top_db)
      np.testing.assert_allclose(ours[i], ref, atol=1e-3, err_msg=f'top_db={top_db} clip {i}')
  assert np.asarray(features.power_to_db_per_clip(jnp.asarray(power), amin=1e-10, top_db=0.0))[0].min() < -80


def test_implementation_variants_agree():
  """GPU path (whole batch, dense mel) and uneven clip steps give the CPU default's answer."""
  sample_rate, n_fft, hop, n_mels, seconds = SETTINGS[1]
  clips = _test_clips(sample_rate, seconds)
  base = np.asarray(_frontend(sample_rate, n_fft, hop, n_mels)(clips))  # compiled above
  for kwargs in (dict(clips_per_step=None, block_sparse=False), dict(clips_per_step=2)):
    other = np.asarray(_variant(sample_rate, n_fft, hop, n_mels, **kwargs)(clips))
    np.testing.assert_allclose(other, base, atol=1e-3, err_msg=str(kwargs))


def test_gather_framing_htk_no_norm_band_limits_match_librosa():
  """hop does not divide n_fft (gather framing), htk mels without norm, fmin/fmax set."""
  cfg = _cfg(16000, n_fft=400, hop_length=160, n_mels=40, fmin=100.0, fmax=6000.0,
             mel_norm='none', htk=True)
  clips = _test_clips(16000, 0.5)
  ours = np.asarray(jax.jit(features.make_frontend(cfg.audio, cfg.features))(clips))
  for i, clip in enumerate(clips):
    ref = _librosa_db(clip, 16000, 400, 160, 40, fmin=100.0, fmax=6000.0, norm=None, htk=True)
    _assert_close_above_floor(ours[i], ref)
  basis = features.mel_filterbank(16000, 400, 40, 0.0, 0.0, 'slaney', False)
  with pytest.raises(ValueError, match='divide n_fft'):
    features.log_mel_spectrogram(jnp.asarray(clips), basis, n_fft=400, hop_length=160,
                                 top_db=80.0, amin=1e-10, framing='reshape')


def test_host_path_matches_device_path_and_num_frames():
  sample_rate, n_fft, hop, n_mels, seconds = SETTINGS[0]
  cfg = _cfg(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
  clips = _test_clips(sample_rate, seconds)
  device = np.asarray(_frontend(sample_rate, n_fft, hop, n_mels)(clips))
  for i, clip in enumerate(clips):
    host = features.librosa_log_mel(clip, cfg.audio, cfg.features)
    assert host.dtype == np.float32
    assert host.shape == (features.num_frames(len(clip), hop), n_mels)
    _assert_close_above_floor(device[i], host)


def test_num_frames_matches_librosa_frame_count():
  for samples in (1, 511, 512, 513, 66150):
    clip = np.zeros(samples, np.float32)
    power = librosa.feature.melspectrogram(y=clip, sr=22050, n_fft=2048, hop_length=512)
    assert features.num_frames(samples, 512) == power.shape[-1]
  with pytest.raises(ValueError, match='hop_length'):
    features.num_frames(100, 0)


def test_mel_filterbank_is_librosas_transposed():
  basis = features.mel_filterbank(22050, 2048, 128, 0.0, 0.0, 'slaney', False)
  assert basis.shape == (1025, 128) and basis.dtype == np.float32
  np.testing.assert_array_equal(
      basis, librosa.filters.mel(sr=22050, n_fft=2048, n_mels=128, fmax=11025.0).T)
  no_norm = features.mel_filterbank(16000, 512, 40, 50.0, 7000.0, 'none', True)
  np.testing.assert_array_equal(
      no_norm, librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=50.0, fmax=7000.0,
                                   norm=None, htk=True).T)
  with pytest.raises(ValueError, match='mel_norm'):
    features.mel_filterbank(16000, 512, 40, 0.0, 0.0, 'l2', False)


def test_bad_inputs_raise_clear_errors():
  basis = features.mel_filterbank(16000, 512, 40, 0.0, 0.0, 'slaney', False)
  with pytest.raises(ValueError, match=r'\[batch, samples\]'):
    features.log_mel_spectrogram(jnp.zeros(1000), basis, n_fft=512, hop_length=128,
                                 top_db=80.0, amin=1e-10)
  with pytest.raises(ValueError, match='n_fft // 2 \\+ 1'):
    features.log_mel_spectrogram(jnp.zeros((1, 1000)), basis, n_fft=1024, hop_length=128,
                                 top_db=80.0, amin=1e-10)
  with pytest.raises(ValueError, match='amin'):
    features.make_frontend(_cfg().audio, _cfg(amin=0.0).features)
  with pytest.raises(ValueError, match='one mono clip'):
    features.librosa_log_mel(np.zeros((2, 100)), _cfg().audio, _cfg().features)


def test_frontend_runs_inside_shard_map():
  cfg = _cfg(16000, n_fft=256, hop_length=64, n_mels=16)
  frontend = features.make_frontend(cfg.audio, cfg.features)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('data',))
  spec = jax.sharding.PartitionSpec('data')
  sharded = jax.jit(jax.shard_map(frontend, mesh=mesh, in_specs=spec, out_specs=spec))
  clips = _test_clips(16000, 0.25)[:4]
  ours = np.asarray(sharded(clips))
  for i, clip in enumerate(clips):  # each shard's clips still get their own ref
    _assert_close_above_floor(ours[i], features.librosa_log_mel(clip, cfg.audio, cfg.features))


def test_band_stats_streamed_equals_whole_and_normalize():
  rng = np.random.default_rng(1)
  feats = (rng.normal(-40.0, 12.0, (6, 50, 8)) + np.arange(8) * 3.0).astype(np.float32)
  feats[..., 5] = -80.0  # a constant band: std 0, floored in normalize
  mean, std = features.band_stats(feats)
  np.testing.assert_allclose(mean, feats.reshape(-1, 8).mean(0), rtol=1e-5)
  np.testing.assert_allclose(std, feats.reshape(-1, 8).std(0), rtol=1e-4, atol=1e-5)
  s_mean, s_std = features.band_stats(iter([feats[:1], feats[1:4], feats[4:]]))
  np.testing.assert_allclose(s_mean, mean, rtol=1e-6)
  np.testing.assert_allclose(s_std, std, rtol=1e-5, atol=1e-6)
  normed = np.asarray(features.normalize(jnp.asarray(feats), mean, std))
  assert np.all(np.isfinite(normed))
  keep = np.arange(8) != 5
  np.testing.assert_allclose(normed.reshape(-1, 8).mean(0)[keep], 0.0, atol=1e-4)
  np.testing.assert_allclose(normed.reshape(-1, 8).std(0)[keep], 1.0, atol=1e-4)
  np.testing.assert_array_equal(normed[..., 5], 0.0)
  with pytest.raises(ValueError, match='training split'):
    features.band_stats(iter([]))


@pytest.mark.parametrize('old,new', [(66150, 48000), (1000, 777), (999, 600), (1001, 1500), (800, 800)])
def test_resample_fft_is_scipys_fourier_resampling(old, new):
  """Down (even and odd lengths, the reference's 3 s at 22.05 kHz to 16 kHz), up, and same."""
  x = np.random.default_rng(0).standard_normal((3, old)).astype(np.float32)
  got = np.asarray(features.resample_fft(jnp.asarray(x), new))
  np.testing.assert_allclose(got, scipy.signal.resample(x.astype(np.float64), new, axis=-1),
                             atol=1e-5)
