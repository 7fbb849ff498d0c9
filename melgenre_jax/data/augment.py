"""On-device training augmentation: pure, batched, jittable, driven by an explicit key.

Every function is the identity (returns its input unchanged) when its config
value disables it, so the reference recipe (everything off in
``config.augment``) compiles to exactly the un-augmented step. The config
values are static Python numbers: branching on them happens at trace time.

Where each one runs in the training step:
  waves [B, S] --augment_waves--> frontend --(normalize)--> specs [B, T, M]
  --augment_specs--> mixup(specs, one-hot labels) --> model.
Mixup needs the labels, so the train step calls it itself with
``config.augment.mixup_alpha``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def add_noise(key: jax.Array, waves: jax.Array, snr_db: float, prob: float) -> jax.Array:
  """Add white Gaussian noise at ``snr_db`` relative to each clip's own mean power.

  Each clip is noised with probability ``prob``. A silent clip stays silent
  (its power is 0, so is the noise). ``snr_db <= 0`` or ``prob <= 0``: identity
  (0 means off in config.augment.noise_snr_db).
  """
  if snr_db <= 0 or prob <= 0:
    return waves
  noise_key, coin_key = jax.random.split(key)
  power = jnp.mean(jnp.square(waves), axis=-1, keepdims=True)
  noise_std = jnp.sqrt(power / (10.0 ** (snr_db / 10.0)))
  noise = jax.random.normal(noise_key, waves.shape, waves.dtype) * noise_std
  apply = jax.random.bernoulli(coin_key, min(float(prob), 1.0), (waves.shape[0], 1))
  return jnp.where(apply, waves + noise, waves)


def time_shift(key: jax.Array, waves: jax.Array, max_shift_samples: int) -> jax.Array:
  """Roll each clip circularly by its own shift, uniform in [-max, max] samples.

  Circular (not zero-filled) so a shifted clip keeps its loudness and length.
  ``max_shift_samples <= 0``: identity.
  """
  if max_shift_samples <= 0:
    return waves
  num_samples = waves.shape[-1]
  shifts = jax.random.randint(key, (waves.shape[0], 1), -max_shift_samples, max_shift_samples + 1)
  idx = jnp.mod(jnp.arange(num_samples)[None, :] - shifts, num_samples)
  return jnp.take_along_axis(waves, idx, axis=-1)


def _band_mask(key: jax.Array, batch: int, size: int, num_masks: int, max_width: int) -> jax.Array:
  """[batch, size] bool: the union of ``num_masks`` bands of width U{0..max_width} per clip."""
  width_key, start_key = jax.random.split(key)
  max_width = min(int(max_width), size)
  widths = jax.random.randint(width_key, (batch, num_masks, 1), 0, max_width + 1)
  starts = jnp.floor(jax.random.uniform(start_key, (batch, num_masks, 1))
                     * (size - widths + 1)).astype(widths.dtype)
  pos = jnp.arange(size)[None, None, :]
  return jnp.any((pos >= starts) & (pos < starts + widths), axis=1)


def spec_augment(key: jax.Array, specs: jax.Array, time_masks: int, time_mask_frames: int,
                 freq_masks: int, freq_mask_bins: int, fill_value: float | None = None) -> jax.Array:
  """SpecAugment time and frequency masks on [B, frames, mels].

  Masked cells get each clip's own minimum (``fill_value=None``): for dB
  features that is the -top_db floor, i.e. silence, whether or not the
  features were standardised afterwards (for standardised features a constant
  such as 0 is also reasonable: pass ``fill_value``). Widths are uniform in
  ``0..max`` per mask, as in the SpecAugment paper. Zero masks or zero width:
  identity.
  """
  use_time = time_masks > 0 and time_mask_frames > 0
  use_freq = freq_masks > 0 and freq_mask_bins > 0
  if not (use_time or use_freq):
    return specs
  if specs.ndim != 3:
    raise ValueError(f'spec_augment expects [batch, frames, mels], got shape {specs.shape}')
  batch, frames, mels = specs.shape
  time_key, freq_key = jax.random.split(key)
  mask = jnp.zeros((batch, frames, mels), bool)
  if use_time:
    mask = mask | _band_mask(time_key, batch, frames, time_masks, time_mask_frames)[:, :, None]
  if use_freq:
    mask = mask | _band_mask(freq_key, batch, mels, freq_masks, freq_mask_bins)[:, None, :]
  if fill_value is None:
    fill = jnp.min(specs, axis=(1, 2), keepdims=True)
  else:
    fill = jnp.asarray(fill_value, specs.dtype)
  return jnp.where(mask, fill, specs)


def mixup(key: jax.Array, inputs: jax.Array, labels_onehot: jax.Array,
          alpha: float) -> tuple[jax.Array, jax.Array]:
  """Mix each example with a random other one of the batch, lambda ~ Beta(alpha, alpha).

  One lambda per example (broadcast over its trailing dims); labels are mixed
  with the same lambda, so every soft label still sums to 1. ``alpha <= 0``:
  identity (inputs and labels returned unchanged).
  """
  if alpha <= 0:
    return inputs, labels_onehot
  perm_key, lam_key = jax.random.split(key)
  batch = inputs.shape[0]
  perm = jax.random.permutation(perm_key, batch)
  lam = jax.random.beta(lam_key, alpha, alpha, (batch,), jnp.float32)
  lam_x = lam.reshape((batch,) + (1,) * (inputs.ndim - 1)).astype(inputs.dtype)
  labels = labels_onehot.astype(jnp.float32)
  lam_y = lam.reshape((batch,) + (1,) * (labels.ndim - 1))
  mixed_inputs = lam_x * inputs + (1 - lam_x) * inputs[perm]
  mixed_labels = lam_y * labels + (1 - lam_y) * labels[perm]
  return mixed_inputs, mixed_labels


def augment_waves(key: jax.Array, waves: jax.Array, augment_cfg: Any, sample_rate: int) -> jax.Array:
  """Waveform augmentations of ``config.augment``: circular time shift, then noise."""
  shift_key, noise_key = jax.random.split(key)
  max_shift = int(round(float(augment_cfg.time_shift_seconds) * sample_rate))
  waves = time_shift(shift_key, waves, max_shift)
  return add_noise(noise_key, waves, float(augment_cfg.noise_snr_db), float(augment_cfg.noise_prob))


def augment_specs(key: jax.Array, specs: jax.Array, augment_cfg: Any) -> jax.Array:
  """Spectrogram augmentations of ``config.augment`` (SpecAugment; mixup is separate)."""
  return spec_augment(key, specs, int(augment_cfg.time_masks), int(augment_cfg.time_mask_frames),
                      int(augment_cfg.freq_masks), int(augment_cfg.freq_mask_bins))
