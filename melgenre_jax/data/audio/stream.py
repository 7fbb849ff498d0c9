"""Streaming a file's windows block by block, in memory independent of its length.

``stream_segments`` decodes, downmixes and resamples block by block, so a
3-hour recording costs one block plus one chunk of windows, not the wave; its
windows equal ``segment_audio(load_audio(...))``'s.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from melgenre_jax.data.audio import formats
from melgenre_jax.data.audio.decode import open_source
from melgenre_jax.data.audio.formats import AudioError
from melgenre_jax.data.audio.resample import resampled_blocks
from melgenre_jax.data.audio.segments import check_window_args
from melgenre_jax.data.audio.segments import fill_one
from melgenre_jax.data.audio.segments import SHORT_CLIP_RULES
from melgenre_jax.data.audio.segments import too_short
from melgenre_jax.data.audio.segments import window_view

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
    check_window_args(segment_samples, hop_samples)
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
    formats.check_path(path)
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
    source = open_source(self.path)
    try:
      # buf starts at the next window and stays shorter than one window
      # between blocks; windows are copied into the chunk as they complete.
      buf = np.zeros(0, np.float32)
      skip = 0  # samples between windows when hop > segment
      chunk, rows = None, 0
      for block in resampled_blocks(source, sr, start, stop,
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
          chunk[rows:rows + take] = window_view(buf[done * hop:], seg, hop,
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
        yield fill_one(buf, seg, self.short_clip)
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
    reason = too_short(n, self.min_samples)
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
  comes before it (sample-exact for soundfile formats; see ``decode._PyavSource``
  for PyAV). See ``SegmentStream`` for the chunks, memory and errors.
  """
  return SegmentStream(path, sample_rate, segment_samples, hop_samples,
                       min_samples, offset_seconds=offset_seconds,
                       max_seconds=max_seconds, block_seconds=block_seconds,
                       max_rows=max_rows, short_clip=short_clip)
