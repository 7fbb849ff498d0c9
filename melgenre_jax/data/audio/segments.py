"""Cutting a mono wave into fixed-length windows, and measuring their level.

A song shorter than one window still counts when long enough (padded or
repeated, ``SHORT_CLIP_RULES``); a trailing partial window of a longer song is
dropped, so every window is real audio. ``stream`` cuts the same windows.
"""

from __future__ import annotations

import numpy as np

from melgenre_jax.data.audio.formats import AudioError

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
  check_window_args(segment_samples, hop_samples)
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim != 1:
    raise ValueError(f'expected a mono 1-D wave, got shape {wave.shape}')
  n = wave.shape[0]
  if n == 0 or n < min_samples:
    raise AudioError(path, too_short(n, min_samples))
  if n < segment_samples:
    return fill_one(wave, segment_samples, short_clip)
  count = 1 + (n - segment_samples) // hop_samples
  return _windows(wave, segment_samples, hop_samples, count)


def check_window_args(segment_samples: int, hop_samples: int) -> None:
  if segment_samples <= 0 or hop_samples <= 0:
    raise ValueError(f'segment_samples ({segment_samples}) and hop_samples '
                     f'({hop_samples}) must be > 0: check '
                     'config.audio.segment_seconds / segment_hop_seconds')


def too_short(n: int, min_samples: int) -> str:
  return (f'too short: {n} samples < minimum {min_samples} '
          '(config.data.min_song_seconds)')


def fill_one(wave: np.ndarray, segment_samples: int, rule: str = 'pad') -> np.ndarray:
  """One segment from a clip shorter than it: zero-padded, or the clip repeated."""
  if rule not in SHORT_CLIP_RULES:
    raise ValueError(f'short_clip={rule!r}: allowed values are {", ".join(SHORT_CLIP_RULES)}')
  if rule == 'repeat':
    return np.resize(np.asarray(wave, np.float32), (1, segment_samples))
  out = np.zeros((1, segment_samples), np.float32)
  out[0, :len(wave)] = wave
  return out


def window_view(wave: np.ndarray, segment_samples: int, hop_samples: int,
                 count: int) -> np.ndarray:
  """The first ``count`` windows of ``wave``, as a view (no copy)."""
  view = np.lib.stride_tricks.sliding_window_view(wave, segment_samples)
  return view[::hop_samples][:count]


def _windows(wave: np.ndarray, segment_samples: int, hop_samples: int,
             count: int) -> np.ndarray:
  """The first ``count`` windows of ``wave``, as a contiguous copy."""
  return np.ascontiguousarray(
      window_view(wave, segment_samples, hop_samples, count))


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
