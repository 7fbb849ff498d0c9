"""On-device augmentation: identity when off, effective when on, deterministic per key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from melgenre_jax.data import augment

KEY = jax.random.PRNGKey(0)


def _waves(batch: int = 8, samples: int = 4000) -> jax.Array:
  rng = np.random.default_rng(0)
  t = np.arange(samples) / 8000.0
  freqs = rng.uniform(100.0, 2000.0, (batch, 1))
  amps = rng.uniform(0.05, 0.9, (batch, 1))
  return jnp.asarray((amps * np.sin(2 * np.pi * freqs * t)).astype(np.float32))


def _specs(batch: int = 6, frames: int = 40, mels: int = 16) -> jax.Array:
  rng = np.random.default_rng(1)
  return jnp.asarray(rng.uniform(-80.0, 0.0, (batch, frames, mels)).astype(np.float32))


def test_everything_is_identity_with_the_default_config():
  cfg = default_config.get_config()
  waves, specs = _waves(), _specs()
  assert augment.augment_waves(KEY, waves, cfg.augment, cfg.audio.sample_rate) is waves
  assert augment.augment_specs(KEY, specs, cfg.augment) is specs
  labels = jax.nn.one_hot(jnp.arange(6) % 3, 3)
  mixed, soft = augment.mixup(KEY, specs, labels, cfg.augment.mixup_alpha)
  assert mixed is specs and soft is labels


@pytest.mark.parametrize('fn', [
    lambda k, w: augment.add_noise(k, w, 0.0, 0.5),
    lambda k, w: augment.add_noise(k, w, 20.0, 0.0),
    lambda k, w: augment.time_shift(k, w, 0),
])
def test_wave_ops_off_are_identity(fn):
  waves = _waves()
  assert fn(KEY, waves) is waves


@pytest.mark.parametrize('args', [(0, 10, 0, 8), (2, 0, 0, 8), (0, 10, 2, 0)])
def test_spec_augment_off_is_identity(args):
  specs = _specs()
  assert augment.spec_augment(KEY, specs, *args) is specs


# Jitted once per static setting: eager calls would compile every primitive
# separately, which costs more than the tests themselves.
_add_noise = jax.jit(augment.add_noise, static_argnums=(2, 3))
_time_shift = jax.jit(augment.time_shift, static_argnums=2)
_spec_augment = jax.jit(augment.spec_augment, static_argnums=(2, 3, 4, 5, 6))
_mixup = jax.jit(augment.mixup, static_argnums=3)


def test_noise_snr_probability_and_silence():
  snr_db = 12.0
  waves = np.array(_waves(batch=64, samples=8000))
  waves[0] = 0.0  # a silent clip stays silent (its power is 0)
  noisy = np.asarray(_add_noise(KEY, jnp.asarray(waves), snr_db, 0.5))
  assert noisy.shape == waves.shape and noisy.dtype == waves.dtype
  np.testing.assert_array_equal(noisy[0], 0.0)
  changed = np.any(noisy != waves, axis=-1)
  assert 0.25 < changed[1:].mean() < 0.75  # prob 0.5 per clip
  signal_power = np.mean(waves[changed] ** 2, axis=-1)
  noise_power = np.mean((noisy[changed] - waves[changed]) ** 2, axis=-1)
  np.testing.assert_allclose(10 * np.log10(signal_power / noise_power), snr_db, atol=0.4)


def test_time_shift_is_a_per_clip_circular_roll():
  waves = _waves(batch=32, samples=500)
  shifted = np.asarray(_time_shift(KEY, waves, 100))
  assert shifted.shape == waves.shape
  originals = np.asarray(waves)
  shifts = []
  for orig, out in zip(originals, shifted):
    matches = [s for s in range(-100, 101) if np.array_equal(np.roll(orig, s), out)]
    assert matches, 'each clip must be a circular roll of itself within max_shift'
    shifts.append(matches[0])
  assert len(set(shifts)) > 5  # clips get different shifts


def test_spec_augment_masks_bands_with_the_clip_minimum():
  specs = _specs(batch=32)
  out = np.asarray(_spec_augment(KEY, specs, 2, 10, 2, 4, None))
  assert out.shape == specs.shape
  specs = np.asarray(specs)
  changed = out != specs
  assert changed.any()
  for clip, orig, chg, lo in zip(out, specs, changed, specs.min(axis=(1, 2))):
    np.testing.assert_array_equal(clip[chg], lo)  # masked cells hold the clip's minimum
    # Masks are whole frames / whole mel bands, at most masks * max width of each.
    frames, bands = (clip == lo).all(axis=1), (clip == lo).all(axis=0)
    assert frames.sum() <= 2 * 10 and bands.sum() <= 2 * 4
    np.testing.assert_array_equal(chg, (frames[:, None] | bands[None, :]) & (orig != lo))
  zero_fill = np.asarray(_spec_augment(KEY, jnp.asarray(specs), 2, 10, 2, 4, 0.0))
  # Same key, same masks (specs are never exactly 0, so 0 marks a masked cell).
  not_min = specs != specs.min(axis=(1, 2), keepdims=True)
  np.testing.assert_array_equal((zero_fill == 0.0) & not_min, changed)


def test_mixup_mixes_inputs_and_labels_that_sum_to_one():
  labels = jax.nn.one_hot(jnp.arange(16) % 4, 4)
  specs = _specs(batch=16).reshape(16, -1)
  # Labels appended to the inputs: the same partner and lambda must mix both.
  inputs = jnp.concatenate([specs, labels], axis=-1)
  mixed, soft = _mixup(KEY, inputs, labels, 0.4)
  assert mixed.shape == inputs.shape and soft.shape == labels.shape
  np.testing.assert_allclose(np.asarray(soft.sum(-1)), 1.0, atol=1e-6)
  assert np.all(np.asarray(soft) >= 0)
  np.testing.assert_allclose(mixed[:, -4:], soft, atol=1e-5)
  assert not np.allclose(mixed[:, :-4], specs)


def test_configured_ops_apply_deterministically_per_key_under_jit():
  cfg = default_config.get_config()
  cfg.augment.noise_snr_db = 10.0  # configured ops change the inputs ...
  cfg.augment.time_shift_seconds = 0.05
  cfg.augment.time_masks = 2
  cfg.augment.freq_masks = 2
  waves, specs = _waves(), _specs(batch=8)
  labels = jax.nn.one_hot(jnp.arange(8) % 2, 2)

  @jax.jit
  def step(key, waves, specs, labels):
    k1, k2, k3 = jax.random.split(key, 3)
    w = augment.augment_waves(k1, waves, cfg.augment, 8000)
    s = augment.augment_specs(k2, specs, cfg.augment)
    s, y = augment.mixup(k3, s, labels, 0.3)
    return w, s, y

  first = step(KEY, waves, specs, labels)
  again = step(KEY, waves, specs, labels)
  other = step(jax.random.PRNGKey(1), waves, specs, labels)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert first[0].shape == waves.shape and first[1].shape == specs.shape
  assert not np.allclose(first[0], waves) and not np.allclose(first[1], specs)
  assert not np.array_equal(first[0], other[0])
  assert not np.array_equal(first[1], other[1])
