"""Audio files into mono float32 waves at the model's rate, cut into windows.

Two ways in, giving the same windows:

* ``load_audio`` + ``segment_audio``: the whole song in memory (training cache,
  where songs are 30 s clips).
* ``stream_segments``: decode, downmix and resample block by block, so a
  3-hour recording costs one block plus one chunk of windows, not the wave.

Modules, lowest first: ``formats`` (AudioError, supported extensions, path
checks), ``resample``, ``segments`` (windows, silence), ``decode`` (soundfile,
PyAV, audioread backends; whole-file decoding), ``stream``. The names callers
use are re-exported here, so ``audio.load_audio`` etc. keep working.
"""

from melgenre_jax.data.audio.formats import AudioError
from melgenre_jax.data.audio.formats import AudioInfo
from melgenre_jax.data.audio.formats import has_supported_extension
from melgenre_jax.data.audio.formats import SUPPORTED_EXTENSIONS
from melgenre_jax.data.audio.resample import resample
from melgenre_jax.data.audio.segments import is_silent
from melgenre_jax.data.audio.segments import rms_db
from melgenre_jax.data.audio.segments import segment_audio
from melgenre_jax.data.audio.segments import SHORT_CLIP_RULES
from melgenre_jax.data.audio.decode import load_audio
from melgenre_jax.data.audio.decode import probe
from melgenre_jax.data.audio.stream import SegmentStream
from melgenre_jax.data.audio.stream import stream_segments

__all__ = [
    'AudioError', 'AudioInfo', 'has_supported_extension',
    'SUPPORTED_EXTENSIONS', 'resample', 'is_silent', 'rms_db',
    'segment_audio', 'SHORT_CLIP_RULES', 'load_audio', 'probe',
    'SegmentStream', 'stream_segments',
]
