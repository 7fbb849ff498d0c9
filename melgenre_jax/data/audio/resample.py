"""Resampling to the model's rate: one-shot for a whole wave, streamed for blocks.

Both use soxr's HQ filter (librosa's default), so a streamed song equals the
whole-file one within float rounding; scipy's polyphase filter stands in for
the one-shot path where soxr is missing.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np

from melgenre_jax.data.audio import formats
from melgenre_jax.data.audio.formats import AudioError

# Resampled samples decoded before a seek target and dropped, so the
# resampler's start-up transient falls outside the requested window.
_RESAMPLER_PREROLL_SECONDS = 0.5


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
          f'truncated); {formats.describe_failure(source.name, e)}') from e
    yield block


def resampled_blocks(source, sample_rate: int, start: int, stop: int | None,
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
