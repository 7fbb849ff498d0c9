"""Decoding audio files into mono float32 waves, and cutting them into segments.

Every failure becomes an ``AudioError(path, reason)`` so the cache builder can
skip the file, name it and say why, instead of crashing a long decode run.

Two ways in, giving the same windows:

* ``load_audio`` + ``segment_audio``: the whole song in memory (training cache,
  where songs are 30 s clips).
* ``stream_segments``: decode, downmix and resample block by block, so a
  3-hour recording costs one block plus one chunk of windows, not the wave.

Decoders, tried in order: soundfile (libsndfile: wav, flac, ogg vorbis/opus,
mp3, aiff, au), then PyAV (its bundled FFmpeg: m4a/aac, wma, ...), and only
when PyAV is not installed, audioread. soundfile, soxr, av and audioread are
imported inside functions: librosa/scipy/av take time to import and this
module runs in every cache worker.
"""

from __future__ import annotations

import dataclasses
import fractions
import importlib.util
import math
import os
from typing import Callable, Iterator
import warnings

from absl import logging
import numpy as np

from melgenre_jax import errors

# Formats libsndfile reads (mp3 needs libsndfile >= 1.1, checked at runtime).
_BASE_EXTENSIONS = ('.wav', '.flac', '.ogg', '.mp3', '.au', '.aiff', '.aif')
# Containers/codecs libsndfile cannot read (or not in every build: opus) and
# PyAV's bundled FFmpeg decodes.
_PYAV_EXTENSIONS = ('.m4a', '.aac', '.opus', '.wma')
# Without PyAV: only through an audioread backend such as ffmpeg/gstreamer.
_AUDIOREAD_ONLY_EXTENSIONS = ('.m4a',)

# Resampled samples decoded before a seek target and dropped, so the
# resampler's start-up transient falls outside the requested window.
_RESAMPLER_PREROLL_SECONDS = 0.5
# Source samples decoded before a PyAV seek target and dropped: codecs with
# overlapping frames (AAC, mp3 bit reservoir, opus) need the previous frames.
_DECODER_PREROLL_SECONDS = 1.0


class AudioError(errors.UserError, ValueError):
  """A file that cannot be used as a song; ``reason`` says why in words."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path = path
    self.reason = reason

  def __reduce__(self):
    # Default exception pickling passes only str(self); this crosses process
    # boundaries (cache workers), so keep both fields.
    return (AudioError, (self.path, self.reason))


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  """What a file's header says; ``duration_seconds`` is None when unknown."""
  sample_rate: int
  channels: int
  duration_seconds: float | None


def _has_pyav() -> bool:
  # find_spec does not import av (~75 ms); this runs at module import.
  return importlib.util.find_spec('av') is not None


def _import_av():
  import av  # pylint: disable=g-import-not-at-top
  return av


def _import_audioread():
  # Its raw backend imports aifc/audioop/sunau, deprecated in Python 3.11+.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import audioread  # pylint: disable=g-import-not-at-top
    import audioread.rawread  # pylint: disable=g-import-not-at-top,unused-import
  return audioread


def _audioread_can_decode_compressed() -> bool:
  """True when audioread has a real codec backend (not just the raw wav/au one)."""
  try:
    audioread = _import_audioread()
    backends = audioread.available_backends()
  except Exception:  # pylint: disable=broad-except
    return False
  return any(b.__name__ != 'RawAudioFile' for b in backends)


def _supported_extensions() -> frozenset[str]:
  exts = set(_BASE_EXTENSIONS)
  if _has_pyav():
    exts.update(_PYAV_EXTENSIONS)
  elif _audioread_can_decode_compressed():
    exts.update(_AUDIOREAD_ONLY_EXTENSIONS)
  return frozenset(exts)


# Lower-case, with the dot. m4a/aac/opus/wma come from PyAV (a requirement);
# without it, m4a only when an audioread backend exists.
SUPPORTED_EXTENSIONS: frozenset[str] = _supported_extensions()


def has_supported_extension(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in SUPPORTED_EXTENSIONS


def _check_path(path: str) -> None:
  """Raises the AudioError a user can act on before any decoder is tried."""
  if not os.path.exists(path):
    raise AudioError(path, 'file not found')
  if os.path.isdir(path):
    raise AudioError(path, 'is a directory, not an audio file')
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise AudioError(path, f'cannot stat file ({e})') from e
  if size == 0:
    raise AudioError(path, 'empty file (0 bytes)')


def _describe(decoder: str, e: Exception) -> str:
  """One decoder's failure, in words, for the combined 'not readable' reason."""
  name = type(e).__name__
  if name == 'NoBackendError':
    return ('audioread: no backend could decode it (install PyAV, '
            '`pip install av`, for m4a/aac/wma)')
  # FFmpeg errors read "[Errno -1094995529] Invalid data ...: 'path'"; the
  # code and the path (already in the AudioError) are noise.
  text = getattr(e, 'strerror', None) if decoder == 'pyav' else None
  return f'{decoder}: {name}: {text or e}'


def _unreadable(path: str, failures: list[str]) -> AudioError:
  return AudioError(
      path, 'not a readable audio file (corrupt, truncated or not audio); '
      + '; '.join(failures))


# ---------------------------------------------------------------------------
# Decoders: each yields mono float32 blocks at the file's own sample rate,
# starting exactly at a given sample, so streaming and whole-file decoding
# see the same samples.


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
    av = _import_av()
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
      except _import_av().FFmpegError as e:
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
    audioread = _import_audioread()
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
  return (_PyavSource,) if _has_pyav() else (_AudioreadSource,)


def _open_source(path: str, skip_soundfile: bool = False,
                 failures: list[str] | None = None):
  """The first decoder that opens ``path``; AudioError naming each failure."""
  _check_path(path)
  failures = [] if failures is None else failures
  sources = _fallback_sources()
  if not skip_soundfile:
    sources = (_SoundfileSource,) + sources
  for source in sources:
    try:
      return source(path)
    except Exception as e:  # pylint: disable=broad-except
      failures.append(_describe(source.name, e))
  raise _unreadable(path, failures)


def probe(path: str) -> AudioInfo:
  """Sample rate, channels and duration from the header, without decoding.

  Raises:
    AudioError: missing, empty or unreadable file.
  """
  source = _open_source(path)
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


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  """High-quality resampling (soxr, as librosa's default), float32 out."""
  if orig_sr == target_sr:
    return wave.astype(np.float32, copy=False)
  try:
    import soxr  # pylint: disable=g-import-not-at-top
    out = soxr.resample(wave, orig_sr, target_sr, quality='HQ')
  except ImportError:
    from scipy import signal  # pylint: disable=g-import-not-at-top
    g = math.gcd(orig_sr, target_sr)
    out = signal.resample_poly(wave, target_sr // g, orig_sr // g)
  return np.asarray(out, dtype=np.float32)


def load_audio(path: str, sample_rate: int) -> np.ndarray:
  """Decodes ``path`` to a mono float32 wave at ``sample_rate``.

  soundfile (libsndfile) first; PyAV (FFmpeg) as a fallback for containers
  libsndfile cannot read (audioread when PyAV is not installed).

  Raises:
    AudioError: missing, empty, corrupt, non-audio or zero-length file.
  """
  _check_path(path)
  failures = []
  wave = sr = None
  try:
    data, sr = _read_soundfile(path)
    wave = _downmix(data)
    del data
  except Exception as e:  # pylint: disable=broad-except
    failures.append(_describe('soundfile', e))
  if wave is None:
    source = _open_source(path, skip_soundfile=True, failures=failures)
    try:
      sr = source.sample_rate
      blocks = list(source.blocks(0, 60 * sr))
    except Exception as e:  # pylint: disable=broad-except
      failures.append(_describe(source.name, e))
      raise _unreadable(path, failures) from e
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


SHORT_CLIP_RULES = ('pad', 'repeat')


def segment_audio(wave: np.ndarray,
                  segment_samples: int,
                  hop_samples: int,
                  min_samples: int,
                  *,
                  path: str = '<wave>',
                  short_clip: str = 'pad') -> np.ndarray:
  """Cuts a song into fixed-length segments ``[n, segment_samples]`` float32.

  A song shorter than one segment but at least ``min_samples`` long still
  counts: it becomes one segment by ``short_clip`` (``SHORT_CLIP_RULES``:
  'pad' with silence, or 'repeat' the clip until the segment is full). A
  trailing partial segment of a longer song is dropped (every segment is real
  audio).

  Raises:
    AudioError: the song is shorter than ``min_samples`` ('too short').
  """
  _check_window_args(segment_samples, hop_samples)
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim != 1:
    raise ValueError(f'expected a mono 1-D wave, got shape {wave.shape}')
  n = wave.shape[0]
  if n == 0 or n < min_samples:
    raise AudioError(path, _too_short(n, min_samples))
  if n < segment_samples:
    return _fill_one(wave, segment_samples, short_clip)
  count = 1 + (n - segment_samples) // hop_samples
  return _windows(wave, segment_samples, hop_samples, count)


def _check_window_args(segment_samples: int, hop_samples: int) -> None:
  if segment_samples <= 0 or hop_samples <= 0:
    raise ValueError(f'segment_samples ({segment_samples}) and hop_samples '
                     f'({hop_samples}) must be > 0: check '
                     'config.audio.segment_seconds / segment_hop_seconds')


def _too_short(n: int, min_samples: int) -> str:
  return (f'too short: {n} samples < minimum {min_samples} '
          '(config.data.min_song_seconds)')


def _fill_one(wave: np.ndarray, segment_samples: int, rule: str = 'pad') -> np.ndarray:
  """One segment from a clip shorter than it: zero-padded, or the clip repeated."""
  if rule not in SHORT_CLIP_RULES:
    raise ValueError(f'short_clip={rule!r}: allowed values are {", ".join(SHORT_CLIP_RULES)}')
  if rule == 'repeat':
    return np.resize(np.asarray(wave, np.float32), (1, segment_samples))
  out = np.zeros((1, segment_samples), np.float32)
  out[0, :len(wave)] = wave
  return out


def _window_view(wave: np.ndarray, segment_samples: int, hop_samples: int,
                 count: int) -> np.ndarray:
  """The first ``count`` windows of ``wave``, as a view (no copy)."""
  view = np.lib.stride_tricks.sliding_window_view(wave, segment_samples)
  return view[::hop_samples][:count]


def _windows(wave: np.ndarray, segment_samples: int, hop_samples: int,
             count: int) -> np.ndarray:
  """The first ``count`` windows of ``wave``, as a contiguous copy."""
  return np.ascontiguousarray(
      _window_view(wave, segment_samples, hop_samples, count))


# ---------------------------------------------------------------------------
# Streaming.


def _guarded(blocks: Iterator[np.ndarray], source, path: str,
             position: Callable[[], float]) -> Iterator[np.ndarray]:
  """Re-raises a decoder failure mid-file as an AudioError saying where."""
  while True:
    try:
      block = next(blocks)
    except StopIteration:
      return
    except AudioError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise AudioError(
          path, f'decoding failed after {position():.1f} s (corrupt or '
          f'truncated); {_describe(source.name, e)}') from e
    yield block


def _resampled_blocks(source, sample_rate: int, start: int, stop: int | None,
                      block_seconds: float,
                      path: str) -> Iterator[np.ndarray]:
  """Samples [start, stop) of the song resampled to ``sample_rate``, in blocks.

  Equals ``load_audio(path, sample_rate)[start:stop]`` within float rounding:
  the decoder starts at an input sample that maps exactly onto an output
  sample ``_RESAMPLER_PREROLL_SECONDS`` before ``start`` (so soxr's start-up
  transient is dropped), and soxr streaming matches its one-shot resample.
  """
  import soxr  # pylint: disable=g-import-not-at-top
  in_sr = source.sample_rate
  if in_sr <= 0:
    raise AudioError(path, f'invalid sample rate {in_sr}')
  if in_sr == sample_rate:
    first_out = first_in = start
    resampler = None
  else:
    g = math.gcd(in_sr, sample_rate)
    step_out, step_in = sample_rate // g, in_sr // g
    preroll = int(_RESAMPLER_PREROLL_SECONDS * sample_rate)
    first_out = max(0, start - preroll) // step_out * step_out
    first_in = first_out // step_out * step_in
    resampler = soxr.ResampleStream(in_sr, sample_rate, 1, dtype='float32',
                                    quality='HQ')
  drop = start - first_out
  left = None if stop is None else stop - start
  decoded = 0

  def position() -> float:
    return (first_in + decoded) / in_sr

  block_frames = max(1, int(round(block_seconds * in_sr)))
  blocks = _guarded(source.blocks(first_in, block_frames), source, path,
                    position)
  for block in blocks:
    finite = np.isfinite(block)
    if not finite.all():
      at = (first_in + decoded + int(np.argmin(finite))) / in_sr
      raise AudioError(path, 'corrupt audio: contains NaN or Inf samples '
                       f'(first at {at:.2f} s)')
    decoded += len(block)
    out = block if resampler is None else resampler.resample_chunk(block)
    out, drop, left = _trim(out, drop, left)
    if len(out):
      yield out
    if left == 0:
      return
  if resampler is not None:
    out = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
    out, drop, left = _trim(out, drop, left)
    if len(out):
      yield out


def _trim(out: np.ndarray, drop: int, left: int | None):
  """Drops the first ``drop`` samples and keeps at most ``left``."""
  if drop:
    cut = min(drop, len(out))
    out, drop = out[cut:], drop - cut
  if left is not None:
    out = out[:left]
    left -= len(out)
  return out, drop, left


class SegmentStream:
  """Iterable over chunks of windows [k <= max_rows, segment_samples] float32 of one file.

  The chunks concatenated equal ``segment_audio(load_audio(path, sr)[offset:
  offset + max], ...)`` (within soxr float rounding): same count, same
  zero-padding of a short song, trailing partial window dropped. Every chunk
  but the last holds exactly ``max_rows`` windows, so a consumer can batch
  with a fixed shape.

  Memory is one decoded block (``block_seconds``, a few copies: channels,
  mono, resampled), one window and the chunk being filled (``max_rows``
  windows), plus whatever chunks the caller still holds: independent of the
  file's length. Each iteration decodes the file afresh.

  Errors: missing/empty/directory paths raise when the stream is made; an
  unreadable file, zero-length audio, a too-short song or an offset past the
  end raise on the first ``next()``; NaN samples or corrupt data further in
  raise when decoding reaches them (after earlier chunks were yielded). All
  are AudioError.

  Attributes:
    num_samples: resampled samples read so far within the offset/max window;
      final after iteration.
    padded: True when the audio was shorter than one segment and was
      filled up to one by ``short_clip`` (zero padding or repetition).
  """

  def __init__(self, path: str, sample_rate: int, segment_samples: int,
               hop_samples: int, min_samples: int, *,
               offset_seconds: float = 0.0, max_seconds: float | None = None,
               block_seconds: float = 60.0, max_rows: int = 256, short_clip: str = 'pad'):
    _check_window_args(segment_samples, hop_samples)
    if short_clip not in SHORT_CLIP_RULES:
      raise ValueError(f'short_clip={short_clip!r}: allowed values are '
                       f'{", ".join(SHORT_CLIP_RULES)}')
    if sample_rate <= 0:
      raise ValueError(f'sample_rate must be > 0, got {sample_rate}')
    if not offset_seconds >= 0:
      raise ValueError(f'offset_seconds must be >= 0, got {offset_seconds}')
    if max_seconds is not None and not max_seconds > 0:
      raise ValueError(f'max_seconds must be > 0 or None, got {max_seconds}')
    if not block_seconds > 0:
      raise ValueError(f'block_seconds must be > 0, got {block_seconds}')
    if max_rows < 1:
      raise ValueError(f'max_rows must be >= 1, got {max_rows}')
    _check_path(path)
    self.path = path
    self.sample_rate = int(sample_rate)
    self.segment_samples = int(segment_samples)
    self.hop_samples = int(hop_samples)
    self.min_samples = int(min_samples)
    self.offset_seconds = float(offset_seconds)
    self.max_seconds = max_seconds
    self.block_seconds = float(block_seconds)
    self.max_rows = int(max_rows)
    self.short_clip = short_clip
    self.num_samples = 0
    self.padded = False

  def __iter__(self) -> Iterator[np.ndarray]:
    return self._generate()

  def _generate(self) -> Iterator[np.ndarray]:
    self.num_samples, self.padded = 0, False
    sr, seg, hop = self.sample_rate, self.segment_samples, self.hop_samples
    start = int(round(self.offset_seconds * sr))
    stop = (None if self.max_seconds is None
            else start + int(round(self.max_seconds * sr)))
    source = _open_source(self.path)
    try:
      # buf starts at the next window and stays shorter than one window
      # between blocks; windows are copied into the chunk as they complete.
      buf = np.zeros(0, np.float32)
      skip = 0  # samples between windows when hop > segment
      chunk, rows = None, 0
      for block in _resampled_blocks(source, sr, start, stop,
                                     self.block_seconds, self.path):
        self.num_samples += len(block)
        if skip:
          cut = min(skip, len(block))
          block, skip = block[cut:], skip - cut
        buf = np.concatenate([buf, block]) if len(buf) else block
        done = 0  # windows of buf copied so far
        ready = 0 if len(buf) < seg else 1 + (len(buf) - seg) // hop
        while done < ready:
          if chunk is None:
            chunk, rows = np.empty((self.max_rows, seg), np.float32), 0
          take = min(ready - done, self.max_rows - rows)
          chunk[rows:rows + take] = _window_view(buf[done * hop:], seg, hop,
                                                 take)
          rows, done = rows + take, done + take
          if rows == self.max_rows:
            full, chunk = chunk, None
            yield full
            del full
        skip = max(0, ready * hop - len(buf))
        buf = buf[ready * hop:]
      self._check_length(source)
      if self.num_samples < seg:
        self.padded = True
        yield _fill_one(buf, seg, self.short_clip)
      elif chunk is not None:
        yield chunk[:rows]
    finally:
      source.close()

  def _check_length(self, source) -> None:
    """Raises the AudioError for no audio, or too little, in the window."""
    n = self.num_samples
    if n and n >= self.min_samples:
      return
    if n == 0 and self.offset_seconds > 0:
      duration = source.duration_seconds
      said = 'unknown' if duration is None else f'{duration:.2f} s'
      raise AudioError(
          self.path, f'offset {self.offset_seconds:g} s is at or beyond the '
          f'end of the file (duration {said})')
    if n == 0 and self.max_seconds is None:
      raise AudioError(self.path, 'zero-length audio (no samples)')
    reason = _too_short(n, self.min_samples)
    if self.offset_seconds > 0 or self.max_seconds is not None:
      reason += (f' in the window from {self.offset_seconds:g} s'
                 + ('' if self.max_seconds is None
                    else f' lasting {self.max_seconds:g} s'))
    raise AudioError(self.path, reason)


def stream_segments(path: str, sample_rate: int, segment_samples: int,
                    hop_samples: int, min_samples: int, *,
                    offset_seconds: float = 0.0,
                    max_seconds: float | None = None,
                    block_seconds: float = 60.0,
                    max_rows: int = 256, short_clip: str = 'pad') -> SegmentStream:
  """The windows of ``path`` decoded block by block, in bounded memory.

  ``offset_seconds``/``max_seconds`` pick the part of the song (rounded to
  samples at ``sample_rate``); the offset seeks instead of decoding what
  comes before it (sample-exact for soundfile formats; see ``_PyavSource``
  for PyAV). See ``SegmentStream`` for the chunks, memory and errors.
  """
  return SegmentStream(path, sample_rate, segment_samples, hop_samples,
                       min_samples, offset_seconds=offset_seconds,
                       max_seconds=max_seconds, block_seconds=block_seconds,
                       max_rows=max_rows, short_clip=short_clip)


def rms_db(segment: np.ndarray) -> float:
  """RMS level in dB relative to full scale (1.0); -inf for digital silence."""
  x = np.asarray(segment, dtype=np.float64)
  if x.size == 0:
    return float('-inf')
  rms = np.sqrt(np.mean(np.square(x)))
  return float(20.0 * np.log10(rms)) if rms > 0 else float('-inf')


def is_silent(segment: np.ndarray, threshold_db: float = -60.0) -> bool:
  """True when the segment's RMS level is below ``threshold_db`` dBFS."""
  return rms_db(segment) < threshold_db
