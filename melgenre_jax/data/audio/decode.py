"""Decoding a file into a mono float32 wave: soundfile, then PyAV (or audioread).

Decoders, tried in order: soundfile (libsndfile: wav, flac, ogg vorbis/opus,
mp3, aiff, au), then PyAV (its bundled FFmpeg: m4a/aac, wma, ...), and only
when PyAV is not installed, audioread. Each yields mono float32 blocks at the
file's own sample rate, starting exactly at a given sample, so streaming
(``stream``) and whole-file decoding (``load_audio``) see the same samples.
soundfile, av and audioread are imported inside functions: they take time to
import and this module runs in every cache worker.
"""

from __future__ import annotations

import fractions
import os
from typing import Iterator

from absl import logging
import numpy as np

from melgenre_jax.data.audio import formats
from melgenre_jax.data.audio import headers
from melgenre_jax.data.audio.formats import AudioError
from melgenre_jax.data.audio.formats import AudioInfo
from melgenre_jax.data.audio.resample import resample

# Source samples decoded before a PyAV seek target and dropped: codecs with
# overlapping frames (AAC, mp3 bit reservoir, opus) need the previous frames.
_DECODER_PREROLL_SECONDS = 1.0


def _downmix(data: np.ndarray) -> np.ndarray:
  """[frames, channels] -> mono float32 (the plain channel mean)."""
  return data.mean(axis=1, dtype=np.float32)


class _SoundfileSource:
  """libsndfile; its seek is sample-exact, also for flac/ogg/mp3/opus."""

  name = 'soundfile'

  def __init__(self, path: str):
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    self._file = sf.SoundFile(path)
    self.sample_rate = int(self._file.samplerate)
    self.channels = int(self._file.channels)
    self.frames: int | None = int(self._file.frames)

  @property
  def duration_seconds(self) -> float | None:
    return self.frames / self.sample_rate if self.sample_rate > 0 else None

  def blocks(self, start: int, block_frames: int) -> Iterator[np.ndarray]:
    if start >= self.frames:
      return
    if start:
      self._file.seek(start)
    out = np.empty((block_frames, self.channels), np.float32)  # reused
    while True:
      data = self._file.read(dtype='float32', always_2d=True, out=out)
      if len(data):
        yield _downmix(data)
      if len(data) < block_frames:
        return

  def close(self) -> None:
    self._file.close()


def _frame_to_mono(frame) -> np.ndarray:
  """A PyAV AudioFrame in any sample format -> mono float32 in [-1, 1]."""
  x = frame.to_ndarray()
  channels = len(frame.layout.channels)
  if not frame.format.is_planar:  # packed: [1, samples * channels]
    x = x.reshape(-1, channels).T
  if x.dtype == np.uint8:
    x = (x.astype(np.float32) - 128.0) / 128.0
  elif np.issubdtype(x.dtype, np.integer):
    x = x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))
  else:
    x = x.astype(np.float32, copy=False)
  if x.shape[0] == 1:
    return np.ascontiguousarray(x[0])
  return x.mean(axis=0, dtype=np.float32)


def _pyav_duration(container, stream) -> float | None:
  if stream.duration is not None and stream.time_base is not None:
    return float(stream.duration * stream.time_base)
  if container.duration is not None:
    return container.duration / 1_000_000  # AV_TIME_BASE
  return None


class _PyavSource:
  """FFmpeg through PyAV: m4a/aac, wma and whatever libsndfile cannot read.

  A start past ``_DECODER_PREROLL_SECONDS`` seeks (``container.seek`` to a
  packet at or before start - preroll) and places frames by their timestamps.
  That is sample-aligned only when the stream's time base resolves one sample
  (mp4/m4a, adts, ogg do; asf/wma and matroska count milliseconds), so other
  streams decode from the start and discard. After the preroll the samples
  equal a from-the-start decode, except for codecs that synthesise noise in
  the decoder (AAC PNS): there they are equivalent, not bit-equal.
  """

  name = 'pyav'

  def __init__(self, path: str):
    self._path = path
    self._container = None
    self._open()
    self.frames: int | None = None
    self.duration_seconds = _pyav_duration(self._container, self._stream)

  def _open(self) -> None:
    if self._container is not None:
      self._container.close()
    av = formats.import_av()
    container = av.open(self._path, metadata_errors='ignore')
    try:
      streams = container.streams.audio
      if not streams:
        raise ValueError('no audio stream in the file')
      stream = streams[0]
      sample_rate = int(stream.sample_rate or 0)
      if sample_rate <= 0:
        raise ValueError(f'invalid sample rate {sample_rate}')
    except Exception:
      container.close()
      raise
    self._container, self._stream = container, stream
    self.sample_rate = sample_rate
    self.channels = int(stream.channels)

  def _can_seek_exactly(self, origin) -> bool:
    tb = self._stream.time_base
    return (origin is not None and tb is not None
            and tb <= fractions.Fraction(1, self.sample_rate))

  def _seek(self, origin: int, target: int):
    """(index, first frame, decoder) after seeking to ``target``, or None.

    None when the landing frame cannot be placed at or before ``target``.
    """
    tb = self._stream.time_base
    ts = origin + int(fractions.Fraction(target, self.sample_rate) / tb)
    self._container.seek(ts, stream=self._stream, backward=True)
    decoded = self._container.decode(self._stream)
    first = next(decoded, None)
    if first is None or first.pts is None:
      return None
    index = round((first.pts - origin) * tb * self.sample_rate)
    if index > target:
      return None
    return index, first, decoded

  def _frames(self, start: int) -> Iterator[tuple[int, object]]:
    """(index of its first sample, frame) from the frame holding ``start`` on.

    Indices count samples from the first decoded frame, as a full decode does.
    """
    decoded = self._container.decode(self._stream)
    first = next(decoded, None)
    if first is None:
      return
    target = start - int(_DECODER_PREROLL_SECONDS * self.sample_rate)
    if target > 0 and self._can_seek_exactly(first.pts):
      try:
        sought = self._seek(first.pts, target)
      except formats.import_av().FFmpegError as e:
        sought = None
        logging.debug('%s: seek failed (%s), decoding from the start',
                      self._path, e)
      if sought is not None:
        index, frame, decoded = sought
        yield index, frame
        index += frame.samples
        for frame in decoded:
          yield index, frame
          index += frame.samples
        return
      logging.debug('%s: inexact seek, decoding from the start', self._path)
      self._open()
      decoded = self._container.decode(self._stream)
      first = next(decoded, None)
      if first is None:
        return
    elif target > 0:
      logging.debug('%s: timestamps too coarse to seek to a sample, decoding '
                    'from the start', self._path)
    index = 0
    for frame in _chain(first, decoded):
      yield index, frame
      index += frame.samples

  def blocks(self, start: int, block_frames: int) -> Iterator[np.ndarray]:
    pieces = ((index, _frame_to_mono(frame)) for index, frame in self._frames(start)
              if index + frame.samples > start and frame.samples > 0)
    return _joined(pieces, start, block_frames)

  def close(self) -> None:
    self._container.close()


def _joined(pieces: Iterator[tuple[int, np.ndarray]], start: int,
            block_frames: int) -> Iterator[np.ndarray]:
  """Decoded pieces ``(index of first sample, mono)`` from ``start`` on, as blocks.

  Decoders hand out frames of their own size (a few ms for AAC); consumers
  want blocks of at least ``block_frames`` samples.
  """
  pending, size = [], 0
  for index, mono in pieces:
    if index + len(mono) <= start:
      continue
    pending.append(mono[max(0, start - index):])
    size += len(pending[-1])
    if size >= block_frames:
      yield np.concatenate(pending)
      pending, size = [], 0
  if pending:
    yield np.concatenate(pending)


def _chain(first, rest):
  yield first
  yield from rest


class _AudioreadSource:
  """audioread (ffmpeg/gstreamer CLI): 16-bit PCM, no seek (decode, discard)."""

  name = 'audioread'

  def __init__(self, path: str):
    audioread = formats.import_audioread()
    self._file = audioread.audio_open(path)
    self.sample_rate = int(self._file.samplerate)
    self.channels = int(self._file.channels)
    self.frames: int | None = None
    self.duration_seconds = getattr(self._file, 'duration', None)
    if self.channels < 1:
      self._file.close()
      raise ValueError(f'{self.channels} channels')

  def blocks(self, start: int, block_frames: int) -> Iterator[np.ndarray]:
    return _joined(self._pieces(), start, block_frames)

  def _pieces(self) -> Iterator[tuple[int, np.ndarray]]:
    frame_bytes = 2 * self.channels
    rest, index = b'', 0
    for buf in self._file:
      raw = rest + bytes(buf)
      usable = len(raw) // frame_bytes * frame_bytes
      raw, rest = raw[:usable], raw[usable:]
      pcm = np.frombuffer(raw, dtype='<i2').astype(np.float32) / 32768.0
      mono = _downmix(pcm.reshape(-1, self.channels))
      yield index, mono
      index += len(mono)

  def close(self) -> None:
    self._file.close()


def _fallback_sources() -> tuple[type, ...]:
  """Decoders after soundfile: PyAV, or audioread when PyAV is missing."""
  return (_PyavSource,) if formats.has_pyav() else (_AudioreadSource,)


def open_source(path: str, skip_soundfile: bool = False,
                 failures: list[str] | None = None):
  """The first decoder that opens ``path``; AudioError naming each failure."""
  formats.check_path(path)
  failures = [] if failures is None else failures
  sources = _fallback_sources()
  if not skip_soundfile:
    sources = (_SoundfileSource,) + sources
  for source in sources:
    try:
      opened = source(path)
    except Exception as e:  # pylint: disable=broad-except
      failures.append(formats.describe_failure(source.name, e))
      continue
    warn_if_cut_short(path)
    return opened
  raise formats.unreadable_error(path, failures)


_WARNED_CUT_SHORT: set[tuple[str, int, int]] = set()


def warn_if_cut_short(path: str) -> headers.Shortfall | None:
  """Names a WAV/AIFF holding less than its header promises in a warning (once per file).

  Decoders read such a file without an error, so without this line a song
  cut in half would be classified, or trained on, as if whole.
  """
  found = headers.shortfall(path)
  if found is None:
    return None
  try:
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
  except OSError:
    key = (path, -1, -1)
  if key not in _WARNED_CUT_SHORT:
    _WARNED_CUT_SHORT.add(key)
    logging.warning('%s: %s.', path, found.describe())
  return found


def probe(path: str) -> AudioInfo:
  """Sample rate, channels and duration from the header, without decoding.

  Raises:
    AudioError: missing, empty or unreadable file.
  """
  source = open_source(path)
  try:
    return AudioInfo(source.sample_rate, source.channels,
                     source.duration_seconds)
  finally:
    source.close()


# ---------------------------------------------------------------------------
# Whole-file decoding.


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  data, sr = sf.read(path, dtype='float32', always_2d=True)
  return data, int(sr)


def load_audio(path: str, sample_rate: int) -> np.ndarray:
  """Decodes ``path`` to a mono float32 wave at ``sample_rate``.

  soundfile (libsndfile) first; PyAV (FFmpeg) as a fallback for containers
  libsndfile cannot read (audioread when PyAV is not installed).

  Raises:
    AudioError: missing, empty, corrupt, non-audio or zero-length file.
  """
  formats.check_path(path)
  failures = []
  wave = sr = None
  try:
    data, sr = _read_soundfile(path)
    wave = _downmix(data)
    del data
    warn_if_cut_short(path)
  except Exception as e:  # pylint: disable=broad-except
    failures.append(formats.describe_failure('soundfile', e))
  if wave is None:
    source = open_source(path, skip_soundfile=True, failures=failures)
    try:
      sr = source.sample_rate
      blocks = list(source.blocks(0, 60 * sr))
    except Exception as e:  # pylint: disable=broad-except
      failures.append(formats.describe_failure(source.name, e))
      raise formats.unreadable_error(path, failures) from e
    finally:
      source.close()
    wave = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)

  if wave.shape[0] == 0:
    raise AudioError(path, 'zero-length audio (no samples)')
  if sr <= 0:
    raise AudioError(path, f'invalid sample rate {sr}')
  if not np.all(np.isfinite(wave)):
    raise AudioError(path, 'corrupt audio: contains NaN or Inf samples')
  wave = resample(wave, sr, int(sample_rate))
  return np.ascontiguousarray(wave, dtype=np.float32)
