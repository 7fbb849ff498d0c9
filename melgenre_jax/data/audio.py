"""Decoding audio files into mono float32 waves, and cutting them into segments.

Every failure becomes an ``AudioError(path, reason)`` so the cache builder can
skip the file, name it and say why, instead of crashing a long decode run.
Only soundfile, soxr and audioread are imported (librosa/scipy take seconds to
import and this runs in every cache worker).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from melgenre_jax import errors

# Formats libsndfile reads (mp3 needs libsndfile >= 1.1, checked at runtime).
_BASE_EXTENSIONS = ('.wav', '.flac', '.ogg', '.mp3', '.au', '.aiff', '.aif')
# Only readable through an audioread backend such as ffmpeg/gstreamer.
_AUDIOREAD_ONLY_EXTENSIONS = ('.m4a',)


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
  if _audioread_can_decode_compressed():
    exts.update(_AUDIOREAD_ONLY_EXTENSIONS)
  return frozenset(exts)


# Lower-case, with the dot. m4a is included only when a decoder for it exists.
SUPPORTED_EXTENSIONS: frozenset[str] = _supported_extensions()


def has_supported_extension(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in SUPPORTED_EXTENSIONS


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  data, sr = sf.read(path, dtype='float32', always_2d=True)
  return data, int(sr)


def _read_audioread(path: str) -> tuple[np.ndarray, int]:
  audioread = _import_audioread()
  with audioread.audio_open(path) as f:
    sr, channels = int(f.samplerate), int(f.channels)
    raw = b''.join(bytes(buf) for buf in f)
  pcm = np.frombuffer(raw, dtype='<i2').astype(np.float32) / 32768.0
  if channels < 1:
    raise ValueError(f'{channels} channels')
  pcm = pcm[: len(pcm) // channels * channels]
  return pcm.reshape(-1, channels), sr


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  """High-quality resampling (soxr, as librosa's default), float32 out."""
  if orig_sr == target_sr:
    return wave.astype(np.float32, copy=False)
  try:
    import soxr  # pylint: disable=g-import-not-at-top
    out = soxr.resample(wave, orig_sr, target_sr, quality='HQ')
  except ImportError:
    import math  # pylint: disable=g-import-not-at-top
    from scipy import signal  # pylint: disable=g-import-not-at-top
    g = math.gcd(orig_sr, target_sr)
    out = signal.resample_poly(wave, target_sr // g, orig_sr // g)
  return np.asarray(out, dtype=np.float32)


def load_audio(path: str, sample_rate: int) -> np.ndarray:
  """Decodes ``path`` to a mono float32 wave at ``sample_rate``.

  soundfile (libsndfile) first; audioread (ffmpeg etc., when installed) as a
  fallback for containers libsndfile cannot read.

  Raises:
    AudioError: missing, empty, corrupt, non-audio or zero-length file.
  """
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

  errors = []
  data = sr = None
  try:
    data, sr = _read_soundfile(path)
  except Exception as e:  # pylint: disable=broad-except
    errors.append(f'soundfile: {type(e).__name__}: {e}')
  if data is None:
    try:
      data, sr = _read_audioread(path)
    except Exception as e:  # pylint: disable=broad-except
      name = type(e).__name__
      if name == 'NoBackendError':
        errors.append('audioread: no backend could decode it (install ffmpeg '
                      'for mp3/m4a/aac)')
      else:
        errors.append(f'audioread: {name}: {e}')
      raise AudioError(
          path, 'not a readable audio file (corrupt, truncated or not audio); '
          + '; '.join(errors)) from e

  if data.shape[0] == 0 or data.shape[1] == 0:
    raise AudioError(path, 'zero-length audio (no samples)')
  if sr <= 0:
    raise AudioError(path, f'invalid sample rate {sr}')
  wave = data.mean(axis=1, dtype=np.float32)
  if not np.all(np.isfinite(wave)):
    raise AudioError(path, 'corrupt audio: contains NaN or Inf samples')
  wave = resample(wave, sr, int(sample_rate))
  return np.ascontiguousarray(wave, dtype=np.float32)


def segment_audio(wave: np.ndarray,
                  segment_samples: int,
                  hop_samples: int,
                  min_samples: int,
                  *,
                  path: str = '<wave>') -> np.ndarray:
  """Cuts a song into fixed-length segments ``[n, segment_samples]`` float32.

  A song shorter than one segment but at least ``min_samples`` long is
  zero-padded to one segment (short clips still count); a trailing partial
  segment of a longer song is dropped (every segment is real audio).

  Raises:
    AudioError: the song is shorter than ``min_samples`` ('too short').
  """
  if segment_samples <= 0 or hop_samples <= 0:
    raise ValueError(f'segment_samples ({segment_samples}) and hop_samples '
                     f'({hop_samples}) must be > 0: check '
                     'config.audio.segment_seconds / segment_hop_seconds')
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim != 1:
    raise ValueError(f'expected a mono 1-D wave, got shape {wave.shape}')
  n = wave.shape[0]
  if n == 0 or n < min_samples:
    raise AudioError(path, f'too short: {n} samples < minimum {min_samples} '
                     '(config.data.min_song_seconds)')
  if n < segment_samples:
    out = np.zeros((1, segment_samples), np.float32)
    out[0, :n] = wave
    return out
  count = 1 + (n - segment_samples) // hop_samples
  windows = np.lib.stride_tricks.sliding_window_view(wave, segment_samples)
  return np.ascontiguousarray(windows[::hop_samples][:count])


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
