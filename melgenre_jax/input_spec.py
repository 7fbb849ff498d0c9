"""What the model is fed: one owner of the input format.

A segment's length in samples, the hop between segments, where the log-mel is
computed and the shape of one model input are needed by the cache, the loader,
the compiled steps, prediction and export. Deriving them from the config in
each place lets two of them drift apart (a rounding here, a host/device branch
there) and then a model is fed differently than it was trained. ``InputSpec``
is computed once from the config and passed to all of them; it is frozen and
picklable (cache workers receive it).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

FEATURE_PLACES = ('device', 'host')


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """The input format of one run, all lengths in samples.

  ``where='device'``: the model input is the waveform segment and the log-mel
  is computed inside the compiled program; ``'host'``: the input is librosa's
  log-mel, computed while the cache is built (or before prediction).
  """

  sample_rate: int
  segment_samples: int
  hop_samples: int
  min_samples: int
  where: str
  normalize: bool
  features: tuple[tuple[str, Any], ...]  # config.features as sorted items
  short_clip: str = 'pad'  # how a clip shorter than one segment fills it (audio.SHORT_CLIP_RULES)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> InputSpec:
    sr = int(config.audio.sample_rate)
    return cls(
        sample_rate=sr,
        segment_samples=int(round(config.audio.segment_seconds * sr)),
        hop_samples=int(round(config.audio.segment_hop_seconds * sr)),
        min_samples=max(1, int(round(config.data.min_song_seconds * sr))),
        where=str(config.features.where),
        normalize=bool(config.features.normalize),
        features=tuple(sorted(config.features.to_dict().items())),
        short_clip=str(config.audio.get('short_clip', 'pad')))

  # ---------------------------------------------------------------- shapes

  @property
  def takes_waves(self) -> bool:
    """True when the model input is raw audio (the log-mel is on device)."""
    return self.where == 'device'

  @property
  def feature_config(self) -> types.SimpleNamespace:
    """``config.features`` as read-only attributes (what features.* take)."""
    return types.SimpleNamespace(**dict(self.features))

  @property
  def n_mels(self) -> int:
    return int(self.feature_config.n_mels)

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one model input as the loader delivers it."""
    if self.takes_waves:
      return (self.segment_samples,)
    from melgenre_jax.data import features  # pylint: disable=g-import-not-at-top
    return (features.num_frames(self.segment_samples, int(self.feature_config.hop_length)),
            self.n_mels)

  def seconds(self, samples: int) -> float:
    return samples / self.sample_rate

  def host_feature_settings(self) -> dict[str, Any]:
    """The feature settings baked into host-side inputs ({} when they are waves)."""
    if self.takes_waves:
      return {}
    return {k: v for k, v in self.features if k not in ('where', 'normalize')}

  # ------------------------------------------------------------- functions

  def host_inputs(self, segments: np.ndarray) -> np.ndarray:
    """Waveform segments ``[n, samples]`` -> what the model is fed, float32."""
    segments = np.asarray(segments, np.float32)
    if self.takes_waves:
      return np.ascontiguousarray(segments)
    from melgenre_jax.data import features  # pylint: disable=g-import-not-at-top
    audio_cfg = types.SimpleNamespace(sample_rate=self.sample_rate)
    return np.stack([features.librosa_log_mel(s, audio_cfg, self.feature_config)
                     for s in segments]).astype(np.float32)

  def device_preprocess(self, normalize: bool | None = None) -> Callable:
    """``f(inputs, mean, std) -> log-mel [B, frames, mels]``, pure and jittable.

    The same function in training, evaluation, prediction and export. With
    ``normalize=False`` it gives the features before per-band standardisation
    (what the training statistics are computed from).
    """
    from melgenre_jax.data import features  # pylint: disable=g-import-not-at-top
    frontend = (features.make_frontend(types.SimpleNamespace(sample_rate=self.sample_rate),
                                       self.feature_config)
                if self.takes_waves else None)
    standardise = self.normalize if normalize is None else normalize

    def preprocess(inputs: Any, mean: Any, std: Any) -> Any:
      spec = frontend(inputs) if frontend is not None else inputs
      return features.normalize(spec, mean, std) if standardise else spec

    return preprocess
