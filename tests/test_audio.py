"""Decoding, resampling, segmentation and silence detection (melgenre_jax.data.audio)."""

import os
import pickle

import numpy as np
import pytest
import soundfile as sf

from melgenre_jax.data import audio
from melgenre_jax.data.audio import formats as audio_formats

SR = 8000


def _tone(seconds=1.0, sr=SR, freq=440.0, amp=0.5):
  t = np.arange(int(round(seconds * sr))) / sr
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave, sr):
  spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
  return np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spec)]


@pytest.mark.parametrize('ext,subtype,exact', [
    ('wav', 'PCM_16', True), ('flac', 'PCM_16', True), ('au', 'PCM_16', True),
    ('aiff', 'PCM_16', True), ('aif', 'PCM_16', True), ('ogg', 'VORBIS', False),
    ('mp3', 'MPEG_LAYER_III', False)])
def test_load_formats(tmp_path, ext, subtype, exact):
  if ext == 'mp3' and 'MP3' not in sf.available_formats():
    pytest.skip('this libsndfile cannot write mp3')
  wave = _tone(1.0)
  path = str(tmp_path / f'song.{ext}')
  fmt = {'aif': 'AIFF', 'mp3': 'MP3'}.get(ext, ext.upper())
  sf.write(path, wave, SR, format=fmt, subtype=subtype)
  out = audio.load_audio(path, SR)
  assert out.dtype == np.float32 and out.ndim == 1
  if exact:
    np.testing.assert_allclose(out, wave, atol=1e-3)
  else:  # lossy: length within codec padding, same pitch
    assert abs(len(out) - len(wave)) < 0.1 * SR
    assert abs(_peak_hz(out, SR) - 440) < 10
  assert os.path.splitext(path)[1] in audio.SUPPORTED_EXTENSIONS


def _write_av(path, wave, sr, codec, fmt=None, bit_rate=None):
  """Encodes a mono wave with PyAV (bundled FFmpeg): formats libsndfile lacks."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path, 'w', format=fmt) as container:
    stream = container.add_stream(codec, rate=sr)
    stream.layout = 'mono'
    if bit_rate:
      stream.bit_rate = bit_rate
    for i in range(0, len(wave), 1024):
      frame = av.AudioFrame.from_ndarray(wave[None, i:i + 1024], format='fltp',
                                         layout='mono')
      frame.sample_rate = sr
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)


@pytest.mark.parametrize('ext,codec,fmt,bit_rate', [
    ('m4a', 'aac', None, None), ('aac', 'aac', 'adts', None),
    ('wma', 'wmav2', 'asf', 64000), ('opus', 'libopus', 'ogg', None)])
def test_load_pyav_formats(tmp_path, ext, codec, fmt, bit_rate):
  sr = 48000 if codec == 'libopus' else 44100  # opus encodes at 48 kHz only
  wave = _tone(1.0, sr)
  path = str(tmp_path / f'song.{ext}')
  _write_av(path, wave, sr, codec, fmt, bit_rate)
  out = audio.load_audio(path, SR)
  assert out.dtype == np.float32 and out.ndim == 1
  assert abs(len(out) - SR) < 0.1 * SR  # codec priming/padding at most
  assert abs(_peak_hz(out, SR) - 440) < 10
  assert audio.has_supported_extension(path)


def test_supported_extensions_cover_required():
  for ext in ('.wav', '.flac', '.ogg', '.mp3', '.au', '.aiff', '.aif',
              '.m4a', '.aac', '.opus', '.wma'):
    assert ext in audio.SUPPORTED_EXTENSIONS
  assert audio.has_supported_extension('a/B.WAV')
  assert not audio.has_supported_extension('notes.txt')


def test_extensions_without_pyav(monkeypatch):
  monkeypatch.setattr(audio_formats, 'has_pyav', lambda: False)
  monkeypatch.setattr(audio_formats, '_audioread_can_decode_compressed', lambda: False)
  exts = audio_formats._supported_extensions()
  assert '.wav' in exts and '.m4a' not in exts and '.wma' not in exts
  monkeypatch.setattr(audio_formats, '_audioread_can_decode_compressed', lambda: True)
  assert '.m4a' in audio_formats._supported_extensions()


def test_stereo_is_mixed_to_mono_and_resampled(tmp_path):
  left, right = _tone(1.0, 16000, 440), _tone(1.0, 16000, 440, amp=0.1)
  path = str(tmp_path / 'stereo.wav')
  sf.write(path, np.stack([left, right], axis=1), 16000, subtype='FLOAT')
  out = audio.load_audio(path, SR)
  assert len(out) == SR
  assert abs(_peak_hz(out, SR) - 440) < 5
  rms = np.sqrt(np.mean(out[100:-100] ** 2))
  np.testing.assert_allclose(rms, 0.3 / np.sqrt(2), rtol=0.02)


def test_missing_empty_and_directory(tmp_path):
  with pytest.raises(audio.AudioError, match='not found'):
    audio.load_audio(str(tmp_path / 'nope.wav'), SR)
  empty = tmp_path / 'empty.wav'
  empty.write_bytes(b'')
  with pytest.raises(audio.AudioError, match='empty file'):
    audio.load_audio(str(empty), SR)
  with pytest.raises(audio.AudioError, match='directory'):
    audio.load_audio(str(tmp_path), SR)


def test_non_audio_and_corrupt(tmp_path):
  text = tmp_path / 'notes.wav'
  text.write_text('this is not audio at all\n' * 20)
  with pytest.raises(audio.AudioError, match='not a readable audio file') as e:
    audio.load_audio(str(text), SR)
  # Both decoders say why, and no hint to install what is already there.
  assert 'soundfile:' in e.value.reason and 'pyav:' in e.value.reason
  assert 'ffmpeg' not in e.value.reason and 'Errno' not in e.value.reason
  good = tmp_path / 'good.flac'
  sf.write(str(good), _tone(1.0), SR)
  corrupt = tmp_path / 'corrupt.flac'
  corrupt.write_bytes(good.read_bytes()[:30])  # truncated inside the header
  with pytest.raises(audio.AudioError) as e:
    audio.load_audio(str(corrupt), SR)
  assert e.value.path == str(corrupt)


def test_zero_length_audio(tmp_path):
  path = str(tmp_path / 'zero.wav')
  sf.write(path, np.zeros(0, np.float32), SR)
  assert os.path.getsize(path) > 0  # a valid header with no frames
  with pytest.raises(audio.AudioError, match='zero-length'):
    audio.load_audio(path, SR)


def test_audio_error_is_value_error_and_pickles():
  e = audio.AudioError('/x/a.wav', 'too short')
  assert isinstance(e, ValueError)
  e2 = pickle.loads(pickle.dumps(e))
  assert (e2.path, e2.reason) == ('/x/a.wav', 'too short')
  assert '/x/a.wav' in str(e2) and 'too short' in str(e2)


def test_segment_counts_and_content():
  wave = np.arange(2300, dtype=np.float32)
  seg = audio.segment_audio(wave, 1000, 1000, 500)
  assert seg.shape == (2, 1000)  # trailing 300 samples dropped
  np.testing.assert_array_equal(seg[1], wave[1000:2000])
  overlap = audio.segment_audio(wave, 1000, 500, 500)
  assert overlap.shape == (3, 1000)
  np.testing.assert_array_equal(overlap[2], wave[1000:2000])
  exact = audio.segment_audio(np.ones(3000, np.float32), 1000, 1000, 500)
  assert exact.shape == (3, 1000)


def test_short_song_is_padded_and_too_short_raises():
  padded = audio.segment_audio(np.ones(600, np.float32), 1000, 1000, 500)
  assert padded.shape == (1, 1000)
  assert padded[0, :600].min() == 1 and padded[0, 600:].max() == 0
  with pytest.raises(audio.AudioError, match='too short'):
    audio.segment_audio(np.ones(499, np.float32), 1000, 1000, 500,
                        path='clip.wav')
  with pytest.raises(audio.AudioError, match='too short'):
    audio.segment_audio(np.zeros(0, np.float32), 1000, 1000, 0)


def test_short_clip_rule_repeats_the_clip_or_is_refused():
  clip = np.arange(1, 601, dtype=np.float32)
  repeated = audio.segment_audio(clip, 1000, 1000, 500, short_clip='repeat')
  assert repeated.shape == (1, 1000)
  np.testing.assert_array_equal(repeated[0, :600], clip)
  np.testing.assert_array_equal(repeated[0, 600:], clip[:400])  # the clip again from its start
  longer = np.arange(2500, dtype=np.float32)  # the rule only touches clips shorter than a segment
  np.testing.assert_array_equal(audio.segment_audio(longer, 1000, 1000, 500, short_clip='repeat'),
                                audio.segment_audio(longer, 1000, 1000, 500))
  with pytest.raises(ValueError, match="short_clip='loop'"):
    audio.segment_audio(clip, 1000, 1000, 500, short_clip='loop')


def test_is_silent():
  assert audio.is_silent(np.zeros(100, np.float32))
  assert not audio.is_silent(_tone(0.1))
  quiet = _tone(0.1, amp=10 ** (-70 / 20) * np.sqrt(2))  # -70 dBFS RMS
  assert audio.is_silent(quiet)
  assert not audio.is_silent(quiet, threshold_db=-80)
  assert abs(audio.rms_db(quiet) + 70) < 0.1
