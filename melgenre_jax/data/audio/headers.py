"""What a WAV or AIFF header promises against what the file holds: a copy cut short.

libsndfile reads a truncated WAV or AIFF without an error: it reports the
frames that are there, and the rest of the song is silently missing (a song
cut in half by an interrupted copy is classified on its first half). The
header still says how long the audio should be; ``shortfall`` compares.
Streamed WAVs whose writer could not go back to fill in the size (0 or
0xFFFFFFFF) promise nothing and are not flagged.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO


@dataclasses.dataclass(frozen=True)
class Shortfall:
  """A file holding fewer sample frames than its header announces."""

  promised: int
  present: int
  sample_rate: int

  @property
  def missing(self) -> int:
    return self.promised - self.present

  def describe(self) -> str:
    """One line: what the header promises, what is there, how much is missing."""
    def seconds(frames: int) -> str:
      return f'{frames / self.sample_rate:.2f} s' if self.sample_rate > 0 else f'{frames} frames'
    share = 100.0 * self.missing / self.promised
    return (f'the header promises {seconds(self.promised)} ({self.promised} samples per '
            f'channel) but the file holds {seconds(self.present)}: {seconds(self.missing)} '
            f'({share:.0f}%) missing, the file is cut short (an interrupted copy or '
            'download?); only the part that is there is used')


def shortfall(path: str) -> Shortfall | None:
  """The ``Shortfall`` of a WAV (RIFF/RIFX) or AIFF file cut short, else None.

  Reads the chunk headers only. Other formats, unreadable files and files
  whose missing part is under a millisecond give None.
  """
  try:
    with open(path, 'rb') as f:
      head = f.read(12)
      size = os.fstat(f.fileno()).st_size
      if head[:4] in (b'RIFF', b'RIFX') and head[8:12] == b'WAVE':
        found = _wav(f, size, '<' if head[:4] == b'RIFF' else '>')
      elif head[:4] == b'FORM' and head[8:12] == b'AIFF':
        found = _aiff(f, size)
      else:
        return None
  except (OSError, struct.error, ValueError):
    return None
  if found is None or found.missing < max(1, found.sample_rate // 1000):
    return None
  return found


def cut_short(paths: Iterable[str]) -> list[dict[str, str]]:
  """``{'path', 'problem'}`` of each of ``paths`` holding less than its header promises.

  For the cache's summary (and so ``data_summary.json``): decoding warned
  about each, and used what was there.
  """
  return [{'path': p, 'problem': found.describe()} for p in paths if (found := shortfall(p))]


def _chunks(f: BinaryIO, size: int, endian: str) -> Iterator[tuple[bytes, int, int]]:
  """``(id, body offset, declared length)`` of each chunk after the 12-byte file header."""
  pos = 12
  while pos + 8 <= size:
    f.seek(pos)
    chunk_id, length = struct.unpack(endian + '4sI', f.read(8))
    yield chunk_id, pos + 8, length
    pos += 8 + length + (length & 1)


def _wav(f: BinaryIO, size: int, endian: str) -> Shortfall | None:
  block_align = rate = 0
  for chunk_id, body, length in _chunks(f, size, endian):
    if chunk_id == b'fmt ':
      _, _, rate, _, block_align = struct.unpack(endian + 'HHIIH', f.read(14))
    elif chunk_id == b'data':
      if not block_align or length in (0, 0xFFFFFFFF):
        return None
      return Shortfall(length // block_align, max(0, size - body) // block_align, rate)
  return None


def _aiff(f: BinaryIO, size: int) -> Shortfall | None:
  frames = frame_bytes = rate = 0
  for chunk_id, body, _ in _chunks(f, size, '>'):
    if chunk_id == b'COMM':
      channels, frames, bits = struct.unpack('>hIh', f.read(8))
      rate = _extended_float(f.read(10))
      frame_bytes = channels * ((bits + 7) // 8)
    elif chunk_id == b'SSND':
      if not frame_bytes:
        return None
      offset, _ = struct.unpack('>II', f.read(8))
      return Shortfall(frames, max(0, size - body - 8 - offset) // frame_bytes, rate)
  return None


def _extended_float(raw: bytes) -> int:
  """AIFF's 80-bit sample rate, as an integer."""
  exponent = ((raw[0] & 0x7F) << 8) | raw[1]
  mantissa = int.from_bytes(raw[2:10], 'big')
  return int(round(mantissa * 2.0 ** (exponent - 16383 - 63))) if exponent else 0
