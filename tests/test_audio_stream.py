"""Block-wise decoding (audio.stream_segments) against the whole-file path.

Every streamed result is compared with ``segment_audio(load_audio(...)[window])``
on files written into tmp_path; small ``block_seconds`` make several decode
blocks, whose boundaries fall inside windows.
"""

import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from melgenre_jax.data import audio
from melgenre_jax.data.audio import decode as audio_decode
from melgenre_jax.data.audio import formats as audio_formats

SR = 22050


def _signal(start, n, sr, channels, noise=True):
  """Frames [start, start + n) of a fixed test song, [n, channels] float32."""
  t = (start + np.arange(n)) / sr
  chans = [0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t)),
           0.2 * np.sin(2 * np.pi * (200 * t + 3 * t * t))]
  x = np.stack(chans[:channels], axis=1)
  if noise:  # seeded by position: block-wise writing gives the same song
    x += 0.05 * np.random.default_rng(start).standard_normal(x.shape)
  return x.astype(np.float32)


def _write_sf(path, seconds, sr, channels=2, noise=True, block_seconds=30.0,
              **kw):
  """Writes block by block, so long test files cost little memory."""
  n, block = int(round(seconds * sr)), int(block_seconds * sr)
  with sf.SoundFile(str(path), 'w', sr, channels, **kw) as f:
    for i in range(0, n, block):
      f.write(_signal(i, min(block, n - i), sr, channels, noise))
  return str(path)


def _write_av(path, seconds, sr, codec, fmt=None, bit_rate=None):
  """A tonal stereo song encoded with PyAV (tonal: no AAC noise substitution)."""
  import av  # pylint: disable=g-import-not-at-top
  n, frame = int(round(seconds * sr)), 1024
  with av.open(str(path), 'w', format=fmt) as container:
    stream = container.add_stream(codec, rate=sr)
    stream.layout = 'stereo'
    if bit_rate:
      stream.bit_rate = bit_rate
    for i in range(0, n, frame):
      x = np.ascontiguousarray(_signal(i, min(frame, n - i), sr, 2, False).T)
      f = av.AudioFrame.from_ndarray(x, format='fltp', layout='stereo')
      f.sample_rate = sr
      for packet in stream.encode(f):
        container.mux(packet)
    for packet in stream.encode(None):
      container.mux(packet)
  return str(path)


def _expected(path, sr, seg, hop, min_samples, offset=0.0, max_seconds=None):
  wave = audio.load_audio(path, sr)
  start = int(round(offset * sr))
  stop = None if max_seconds is None else start + int(round(max_seconds * sr))
  return audio.segment_audio(wave[start:stop], seg, hop, min_samples, path=path)


def _streamed(path, sr, seg, hop, min_samples, max_rows=7, **kw):
  """(all windows, the stream); checks the chunk shapes on the way."""
  stream = audio.stream_segments(path, sr, seg, hop, min_samples,
                                 max_rows=max_rows, **kw)
  chunks = list(stream)
  assert chunks, 'no chunk'
  for c in chunks:
    assert c.dtype == np.float32 and c.ndim == 2 and c.shape[1] == seg
  # Fixed batch shapes for the consumer: only the last chunk may be short.
  assert [len(c) for c in chunks[:-1]] == [max_rows] * (len(chunks) - 1)
  assert 1 <= len(chunks[-1]) <= max_rows
  return np.concatenate(chunks), stream


def _assert_windows(got, want, atol=1e-5):
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def _count_soundfile_frames(monkeypatch):
  """Counts the frames libsndfile decodes (what a seek skipped is not)."""
  seen = [0]
  real = audio_decode._downmix

  def counting(x):
    seen[0] += len(x)
    return real(x)

  monkeypatch.setattr(audio_decode, '_downmix', counting)
  return seen


def _count_pyav_frames(monkeypatch):
  """Counts the samples FFmpeg decodes, including those thrown away."""
  seen = [0]
  real = audio_decode._PyavSource._frames

  def counting(self, start):
    for index, frame in real(self, start):
      seen[0] += frame.samples
      yield index, frame

  monkeypatch.setattr(audio_decode._PyavSource, '_frames', counting)
  return seen


def test_stereo_44k_wav_to_22k_with_overlapping_hop(tmp_path):
  path = _write_sf(tmp_path / 'song.wav', 150, 44100, subtype='PCM_16')
  seg, hop = 3 * SR, int(1.3 * SR)  # hop does not divide the segment
  want = _expected(path, SR, seg, hop, SR)
  got, stream = _streamed(path, SR, seg, hop, SR, max_rows=16,
                          block_seconds=7.7)  # boundaries fall mid-window
  _assert_windows(got, want)
  assert len(got) == 1 + (150 * SR - seg) // hop
  assert stream.num_samples == 150 * SR and not stream.padded


def test_48k_flac_and_second_iteration(tmp_path):
  path = _write_sf(tmp_path / 'song.flac', 40, 48000, subtype='PCM_16')
  want = _expected(path, SR, SR, SR // 2, SR // 2)
  stream = audio.stream_segments(path, SR, SR, SR // 2, SR // 2,
                                 block_seconds=2.3, max_rows=7)
  first = np.concatenate(list(stream))
  _assert_windows(first, want)
  assert stream.num_samples == len(audio.load_audio(path, SR))
  second = np.concatenate(list(stream))  # decodes afresh, same windows
  np.testing.assert_array_equal(first, second)
  assert stream.num_samples == len(audio.load_audio(path, SR))


@pytest.mark.parametrize('ext,fmt,subtype,sr', [
    ('mp3', 'MP3', 'MPEG_LAYER_III', 44100), ('ogg', 'OGG', 'VORBIS', 44100),
    ('opus', 'OGG', 'OPUS', 48000)])
def test_lossy_soundfile_formats(tmp_path, ext, fmt, subtype, sr):
  if subtype not in sf.available_subtypes(fmt):
    pytest.skip(f'this libsndfile cannot write {subtype}')
  path = _write_sf(tmp_path / f'song.{ext}', 20, sr, format=fmt,
                   subtype=subtype)
  want = _expected(path, SR, SR, SR // 2, SR // 2)
  got, _ = _streamed(path, SR, SR, SR // 2, SR // 2, block_seconds=1.7)
  _assert_windows(got, want)
  # libsndfile seeks these to the sample, so an offset is exact too.
  want = _expected(path, SR, SR, SR // 2, SR // 2, 7.31, 9.0)
  got, _ = _streamed(path, SR, SR, SR // 2, SR // 2, block_seconds=1.7,
                     offset_seconds=7.31, max_seconds=9.0)
  _assert_windows(got, want)


@pytest.mark.parametrize('ext,codec,fmt,bit_rate', [
    ('m4a', 'aac', None, None),      # mp4: timestamps per sample -> seeks
    ('aac', 'aac', 'adts', None),    # raw ADTS stream
    ('wma', 'wmav2', 'asf', 128000)])  # ms timestamps -> decode and discard
def test_pyav_formats(tmp_path, monkeypatch, ext, codec, fmt, bit_rate):
  assert f'.{ext}' in audio.SUPPORTED_EXTENSIONS
  path = _write_av(tmp_path / f'song.{ext}', 20, 44100, codec, fmt, bit_rate)
  with pytest.raises(Exception):  # really not libsndfile's: PyAV decodes it
    sf.info(path)
  want = _expected(path, SR, SR, SR // 2, SR // 2)
  got, _ = _streamed(path, SR, SR, SR // 2, SR // 2, block_seconds=1.3)
  _assert_windows(got, want)

  offset, max_seconds = 12.37, 5.0
  want = _expected(path, SR, SR, SR // 2, SR // 2, offset, max_seconds)
  decoded = _count_pyav_frames(monkeypatch)
  got, _ = _streamed(path, SR, SR, SR // 2, SR // 2, block_seconds=1.3,
                     offset_seconds=offset, max_seconds=max_seconds)
  # After a seek the AAC decoder's float state differs in the last digits.
  _assert_windows(got, want, atol=1e-4)
  # Decoding stops within a block (1.3 s) after the window; mp4/adts seek to
  # 1.5 s before it (decoder + resampler preroll), asf (ms timestamps) cannot
  # place a frame to the sample and decodes from 0.
  end = offset + max_seconds + 1.3 + 0.2
  assert decoded[0] < end * 44100
  if ext == 'wma':
    assert decoded[0] > offset * 44100
  else:
    assert decoded[0] < (end - offset + 1.5) * 44100


def test_m4a_offset_at_the_file_rate(tmp_path):
  # No resampler preroll here: the decoder's own preroll must cover AAC's
  # overlapping first frame after the seek.
  sr = 44100
  path = _write_av(tmp_path / 'song.m4a', 12, sr, 'aac')
  want = _expected(path, sr, sr, sr // 2, sr // 2, 6.5)
  got, _ = _streamed(path, sr, sr, sr // 2, sr // 2, block_seconds=1.3,
                     offset_seconds=6.5)
  _assert_windows(got, want, atol=1e-4)


@pytest.mark.parametrize('file_sr,seg_s,hop_s', [
    (44100, 1.0, 0.5),   # resampled, overlapping
    (SR, 1.0, 0.5),      # same rate: no resampler
    (44100, 1.0, 1.7)])  # hop longer than a segment: gaps between windows
@pytest.mark.parametrize('offset,max_seconds', [
    (0.0, 9.9), (7.31, None), (12.0, 6.45), (29.5, None)])
def test_offset_and_max_seconds(tmp_path, monkeypatch, file_sr, seg_s, hop_s,
                                offset, max_seconds):
  path = _write_sf(tmp_path / 'song.wav', 31, file_sr, subtype='FLOAT')
  seg, hop = int(seg_s * SR), int(hop_s * SR)
  want = _expected(path, SR, seg, hop, SR // 4, offset, max_seconds)
  decoded = _count_soundfile_frames(monkeypatch)
  got, stream = _streamed(path, SR, seg, hop, SR // 4, block_seconds=0.9,
                          offset_seconds=offset, max_seconds=max_seconds)
  _assert_windows(got, want)
  left = 31 - offset if max_seconds is None else max_seconds
  assert stream.num_samples == pytest.approx(left * SR, abs=2)
  # Seeked, not decoded and thrown away: the window, 0.5 s of resampler
  # preroll and the rest of the last 0.9 s block, at most.
  assert decoded[0] <= (left + 0.5 + 0.9) * file_sr + 1


def test_audioread_is_the_fallback_without_pyav(tmp_path, monkeypatch):
  path = _write_sf(tmp_path / 'song.wav', 12, 44100, subtype='PCM_16')
  want = _expected(path, SR, SR, SR // 2, SR // 2, 3.3)

  class Unreadable:
    name = 'soundfile'

    def __init__(self, path):
      raise RuntimeError('pretend libsndfile cannot read this')

  monkeypatch.setattr(audio_formats, 'has_pyav', lambda: False)
  monkeypatch.setattr(audio_decode, '_SoundfileSource', Unreadable)
  got, _ = _streamed(path, SR, SR, SR // 2, SR // 2, block_seconds=0.7,
                     offset_seconds=3.3)  # decoded and discarded: no seek
  _assert_windows(got, want)  # 16-bit PCM: the same samples either way


def test_short_clip_repeat_rule_matches_the_whole_file_path(tmp_path):
  clip = _write_sf(tmp_path / 'clip.wav', 0.6, SR, subtype='PCM_16')
  want = audio.segment_audio(audio.load_audio(clip, SR), SR, SR, SR // 2, short_clip='repeat')
  stream = audio.stream_segments(clip, SR, SR, SR, SR // 2, short_clip='repeat')
  got = np.concatenate(list(stream))
  np.testing.assert_array_equal(got, want)
  assert stream.padded and got[0, stream.num_samples:].any()  # filled with the clip, not zeros


def test_short_clip_is_padded_and_too_short_raises(tmp_path):
  clip = _write_sf(tmp_path / 'clip.wav', 0.6, 44100, subtype='PCM_16')
  want = _expected(clip, SR, SR, SR, SR // 2)
  got, stream = _streamed(clip, SR, SR, SR, SR // 2)
  _assert_windows(got, want)
  assert got.shape == (1, SR) and stream.padded
  assert stream.num_samples == int(0.6 * SR)
  assert not got[0, stream.num_samples:].any()

  exact = _write_sf(tmp_path / 'exact.wav', 1.0, SR, subtype='PCM_16')
  got, stream = _streamed(exact, SR, SR, SR, SR // 2)
  assert got.shape == (1, SR) and not stream.padded

  tiny = _write_sf(tmp_path / 'tiny.wav', 0.4, 44100, subtype='PCM_16')
  it = iter(audio.stream_segments(tiny, SR, SR, SR, SR // 2))
  with pytest.raises(audio.AudioError, match='too short'):
    next(it)

  # The same rule for what is left after an offset.
  song = _write_sf(tmp_path / 'song.wav', 10, 44100, subtype='PCM_16')
  want = _expected(song, SR, SR, SR, SR // 2, offset=9.3)
  got, stream = _streamed(song, SR, SR, SR, SR // 2, offset_seconds=9.3)
  _assert_windows(got, want)
  assert stream.padded
  with pytest.raises(audio.AudioError, match=r'too short.*from 9\.7 s'):
    next(iter(audio.stream_segments(song, SR, SR, SR, SR // 2,
                                    offset_seconds=9.7)))


def _first_error(path, **kw):
  """The AudioError of making the stream or, at the latest, its first next()."""
  with pytest.raises(audio.AudioError) as e:
    next(iter(audio.stream_segments(str(path), SR, SR, SR, SR // 2,
                                    block_seconds=1.0, **kw)))
  assert e.value.path == str(path)
  return e.value.reason


def test_unusable_files_raise_audio_error(tmp_path):
  assert 'not found' in _first_error(tmp_path / 'nope.wav')
  (tmp_path / 'empty.wav').write_bytes(b'')
  assert 'empty file' in _first_error(tmp_path / 'empty.wav')
  assert 'directory' in _first_error(tmp_path)
  (tmp_path / 'notes.m4a').write_text('this is not audio at all\n' * 20)
  reason = _first_error(tmp_path / 'notes.m4a')
  assert 'not a readable audio file' in reason and 'pyav' in reason
  good = _write_sf(tmp_path / 'good.flac', 20, 44100, subtype='PCM_16')
  data = open(good, 'rb').read()
  (tmp_path / 'header.flac').write_bytes(data[:30])
  assert 'not a readable audio file' in _first_error(tmp_path / 'header.flac')
  zero = tmp_path / 'zero.wav'
  sf.write(str(zero), np.zeros(0, np.float32), SR)
  assert 'zero-length' in _first_error(zero)
  nan = tmp_path / 'nan.wav'
  sf.write(str(nan), np.full(SR, np.nan, np.float32), SR, subtype='FLOAT')
  assert 'NaN' in _first_error(nan)


def test_corruption_further_in_raises_when_reached(tmp_path):
  x = _signal(0, 10 * SR, SR, 1)
  x[7 * SR] = np.nan
  sf.write(str(tmp_path / 'nan.wav'), x, SR, subtype='FLOAT')
  stream = audio.stream_segments(str(tmp_path / 'nan.wav'), SR, SR, SR, SR,
                                 block_seconds=1.0, max_rows=2)
  chunks = []
  with pytest.raises(audio.AudioError, match=r'NaN or Inf samples \(first at 7\.00 s\)'):
    for c in stream:
      chunks.append(c)
  assert len(chunks) == 3  # the windows before the bad block came through
  good = _write_sf(tmp_path / 'good.flac', 20, 44100, subtype='PCM_16')
  data = open(good, 'rb').read()
  (tmp_path / 'cut.flac').write_bytes(data[:len(data) // 2])
  with pytest.raises(audio.AudioError, match='decoding failed after'):
    list(audio.stream_segments(str(tmp_path / 'cut.flac'), SR, SR, SR, SR))


@pytest.mark.parametrize('ext', ['wav', 'm4a'])
def test_offset_past_the_end_names_the_duration(tmp_path, ext):
  if ext == 'wav':
    path = _write_sf(tmp_path / 'song.wav', 10, 44100, subtype='PCM_16')
  else:
    path = _write_av(tmp_path / 'song.m4a', 10, 44100, 'aac')
  # m4a decodes to 10.02 s (AAC priming and padding).
  for offset in ((10.0, 25.0) if ext == 'wav' else (10.5, 25.0)):
    reason = _first_error(path, offset_seconds=offset)
    assert f'offset {offset:g} s is at or beyond the end' in reason
    assert 'duration 10.0' in reason


def test_bad_arguments_are_value_errors(tmp_path):
  path = _write_sf(tmp_path / 'song.wav', 1, SR, subtype='PCM_16')
  for kw in (dict(segment_samples=0), dict(hop_samples=-1),
             dict(offset_seconds=-1.0), dict(max_seconds=0.0),
             dict(block_seconds=0.0), dict(max_rows=0)):
    args = {'segment_samples': SR, 'hop_samples': SR, **kw}
    with pytest.raises(ValueError, match=list(kw)[0]):
      audio.stream_segments(path, SR, min_samples=1, **args)


def test_probe(tmp_path):
  wav = _write_sf(tmp_path / 'song.wav', 3.5, 48000, channels=1,
                  subtype='PCM_16')
  assert audio.probe(wav) == audio.AudioInfo(48000, 1, 3.5)
  m4a = _write_av(tmp_path / 'song.m4a', 3.0, 44100, 'aac')
  info = audio.probe(m4a)
  assert (info.sample_rate, info.channels) == (44100, 2)
  assert info.duration_seconds == pytest.approx(3.0, abs=0.1)
  with pytest.raises(audio.AudioError, match='not found'):
    audio.probe(str(tmp_path / 'nope.wav'))
  (tmp_path / 'notes.wav').write_text('not audio\n' * 20)
  with pytest.raises(audio.AudioError, match='not a readable audio file'):
    audio.probe(str(tmp_path / 'notes.wav'))


def _traced_peak(path, sample_rate):
  """Peak Python/numpy allocation while streaming ``path``, chunks dropped."""
  tracemalloc.start()
  try:
    tracemalloc.reset_peak()
    windows = 0
    for chunk in audio.stream_segments(path, sample_rate, sample_rate,
                                       sample_rate // 2, sample_rate,
                                       block_seconds=5.0, max_rows=32):
      windows += len(chunk)
      del chunk
    return tracemalloc.get_traced_memory()[1], windows
  finally:
    tracemalloc.stop()


def test_memory_does_not_grow_with_the_file(tmp_path):
  # 8 kHz windows from 16 kHz mono: the whole 20-minute wave is 77 MB at
  # 16 kHz (38 MB resampled); one block plus one chunk is ~1.5 MB.
  short = _write_sf(tmp_path / 'short.wav', 120, 16000, channels=1,
                    noise=False, subtype='PCM_16')
  long = _write_sf(tmp_path / 'long.wav', 1200, 16000, channels=1,
                   noise=False, subtype='PCM_16')
  peak_short, n_short = _traced_peak(short, 8000)
  peak_long, n_long = _traced_peak(long, 8000)
  assert (n_short, n_long) == (239, 2399)
  whole_file = 1200 * 16000 * 4
  assert peak_long < whole_file / 10, (peak_long, whole_file)
  assert peak_long < 1.5 * peak_short + 256 * 1024, (peak_short, peak_long)
  assert os.path.getsize(long) > 30e6  # the file really is long
