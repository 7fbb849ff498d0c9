"""Layers the model families share: a fast max pool, a 'SAME' conv, dropout.

Kept apart from any one architecture so a new family (models/<name>.py) reuses
them without importing another family.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from melgenre_jax.errors import ConfigError

he_normal = nn.initializers.he_normal()

# Compute dtypes of the conv/LSTM layers (parameters stay float32).
DTYPES = ('float32', 'bfloat16')


def max_pool(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """Non-overlapping max pool over (time, freq) of ``[B, T, F, C]``, floor mode.

  Written as crop + reshape + max rather than ``reduce_window``: with stride
  equal to the window the two are the same function, and on XLA:CPU the
  reshape form trains faster (its backward pass is a cheap select instead of
  a scatter). Its gradient is ``_window_max``'s own (below). See
  benchmarks/bench_train_step.py; the ratios are in benchmarks/README.md.
  """
  wt, wf = window
  t, f = x.shape[1], x.shape[2]
  if t // wt == 0 or f // wf == 0:
    raise ConfigError(
        f'Input of {t} frames x {f} mel bands is too small for a {wt}x{wf} max '
        'pool; use longer segments, more mel bands or smaller pools.')
  return _window_max(x, (int(wt), int(wf)))


def _windows(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """``[B, T, F, C]`` cropped and viewed as ``[B, T/wt, wt, F/wf, wf, C]``."""
  wt, wf = window
  b, t, f, c = x.shape
  return x[:, :t // wt * wt, :f // wf * wf, :].reshape(b, t // wt, wt, f // wf, wf, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  return _windows(x, window).max(axis=(2, 4))


def _window_max_fwd(x, window):
  m = _window_max(x, window)
  return m, (x, m)


def _window_max_bwd(window, residuals, g):
  """JAX's gradient of a max (split evenly between tied maxima), computed faster.

  Autodiff of ``max(axis=(2, 4))`` counts the ties with a reduction that
  XLA:CPU fuses into the full-resolution select, recomputing it for every
  element; here the count is a sum of the ``wt * wf`` window slices at the
  pooled resolution, kept apart from the select by an optimisation barrier.
  Ties are real: a zero-padded tail is a constant spectrogram.
  """
  x, m = residuals
  wt, wf = window
  hit = _windows(x, window) == m[:, :, None, :, None, :]
  count = sum(hit[:, :, i, :, j, :].astype(g.dtype) for i in range(wt) for j in range(wf))
  share = jax.lax.optimization_barrier(g / count)
  d = jnp.where(hit, share[:, :, None, :, None, :], jnp.zeros((), g.dtype))
  b, t, f, c = x.shape
  d = d.reshape(b, d.shape[1] * wt, d.shape[3] * wf, c)
  return (jnp.pad(d, ((0, 0), (0, t - d.shape[1]), (0, f - d.shape[2]), (0, 0))),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'SAME'-padded stride-1 convolution of ``[B, T, F, Cin]`` by ``[kt, kf, Cin, Cout]``."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class Dropout(nn.Module):
  """Inverted dropout with masks from 16-bit random numbers, two per 32-bit word.

  ``nn.Dropout`` draws a float32 uniform per element; on CPU threefry then
  costs more than the rest of the element-wise work (benchmarks/README.md).
  Comparing 16-bit halves of each random word with ``round(keep * 2**16)``
  halves the random bits; the kept fraction is that threshold over 2**16 (for
  rate 0.2: 0.8000031) and the kept values are scaled by its inverse, so the
  expectation is exactly the input. Same ``'dropout'`` RNG stream as flax.
  """

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    threshold = round((1.0 - self.rate) * 65536)
    if deterministic or threshold >= 65536:
      return x
    if threshold <= 0:
      return jnp.zeros_like(x)
    words = jax.random.bits(self.make_rng('dropout'), ((x.size + 1) // 2,), jnp.uint32)
    halves = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:x.size]
    keep = halves.reshape(x.shape) < threshold
    return jnp.where(keep, x * (65536.0 / threshold), 0.0).astype(x.dtype)


def tf_batch_norm(name: str, train: bool, momentum: float, epsilon: float,
                  axis_name: str | None) -> nn.BatchNorm:
  """``nn.BatchNorm`` as the ported TF taggers used it (batch statistics across devices in training).

  One place for the ported families (musicnn, vgg): their checkpoints' statistics
  are only right with the epsilon and momentum they were trained with.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                      axis_name=axis_name if train else None, name=name)
