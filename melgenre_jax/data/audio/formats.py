"""What an audio file must be before a decoder tries it, and how failures read.

Every failure becomes an ``AudioError(path, reason)`` so the cache builder can
skip the file, name it and say why, instead of crashing a long decode run.
Which extensions count as audio depends on the decoders installed: PyAV (a
requirement) adds m4a/aac/opus/wma; without it, audioread may add m4a.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings

from melgenre_jax import errors

# Formats libsndfile reads (mp3 needs libsndfile >= 1.1, checked at runtime).
_BASE_EXTENSIONS = ('.wav', '.flac', '.ogg', '.mp3', '.au', '.aiff', '.aif')
# Containers/codecs libsndfile cannot read (or not in every build: opus) and
# PyAV's bundled FFmpeg decodes.
_PYAV_EXTENSIONS = ('.m4a', '.aac', '.opus', '.wma')
# Without PyAV: only through an audioread backend such as ffmpeg/gstreamer.
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


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  """What a file's header says; ``duration_seconds`` is None when unknown."""
  sample_rate: int
  channels: int
  duration_seconds: float | None


def has_pyav() -> bool:
  """Whether PyAV is installed; patched in tests to try the audioread path."""
  # find_spec does not import av (~75 ms); this runs at module import.
  return importlib.util.find_spec('av') is not None


def import_av():
  """PyAV, imported on first use: it costs ~75 ms and most files never need it."""
  import av  # pylint: disable=g-import-not-at-top
  return av


def import_audioread():
  """audioread without its deprecation warnings, imported on first use."""
  # Its raw backend imports aifc/audioop/sunau, deprecated in Python 3.11+.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import audioread  # pylint: disable=g-import-not-at-top
    import audioread.rawread  # pylint: disable=g-import-not-at-top,unused-import
  return audioread


def _audioread_can_decode_compressed() -> bool:
  """True when audioread has a real codec backend (not just the raw wav/au one)."""
  try:
    audioread = import_audioread()
    backends = audioread.available_backends()
  except Exception:  # pylint: disable=broad-except
    return False
  return any(b.__name__ != 'RawAudioFile' for b in backends)


def _supported_extensions() -> frozenset[str]:
  exts = set(_BASE_EXTENSIONS)
  if has_pyav():
    exts.update(_PYAV_EXTENSIONS)
  elif _audioread_can_decode_compressed():
    exts.update(_AUDIOREAD_ONLY_EXTENSIONS)
  return frozenset(exts)


# Lower-case, with the dot. m4a/aac/opus/wma come from PyAV (a requirement);
# without it, m4a only when an audioread backend exists.
SUPPORTED_EXTENSIONS: frozenset[str] = _supported_extensions()


def has_supported_extension(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in SUPPORTED_EXTENSIONS


def check_path(path: str) -> None:
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


def describe_failure(decoder: str, e: Exception) -> str:
  """One decoder's failure, in words, for the combined 'not readable' reason."""
  name = type(e).__name__
  if name == 'NoBackendError':
    return ('audioread: no backend could decode it (install PyAV, '
            '`pip install av`, for m4a/aac/wma)')
  # FFmpeg errors read "[Errno -1094995529] Invalid data ...: 'path'"; the
  # code and the path (already in the AudioError) are noise.
  text = getattr(e, 'strerror', None) if decoder == 'pyav' else None
  return f'{decoder}: {name}: {text or e}'


def unreadable_error(path: str, failures: list[str]) -> AudioError:
  return AudioError(
      path, 'not a readable audio file (corrupt, truncated or not audio); '
      + '; '.join(failures))
