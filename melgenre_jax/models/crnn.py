"""The dual-branch CNN-LSTM genre classifier (pure flax.linen).

Input is a log-mel spectrogram laid out time-major, ``[batch, frames, mels]``.
Two convolutional branches look at it with different receptive fields (A: 5x5
kernels and 4x4 pools, coarse; B: 3x3 kernels and 2x2 pools, fine); each
branch's feature map is then read as a sequence over time, one step per
pooled frame with ``mels x channels`` features, by stacked LSTMs. The two
branch summaries are concatenated and a dense layer gives the genre logits.
That concatenation is the segment embedding (``return_embedding=True``):
what the head reads, so a linear probe on it sees what the classifier sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from melgenre_jax.models.layers import Dropout, conv_same, he_normal, max_pool

class _ConvParams(nn.Module):
  """``nn.Conv``'s kernel and bias: same names, shapes, initialisers and order."""

  features: int
  kernel_size: tuple[int, ...]

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    kernel = self.param('kernel', he_normal,
                        (*self.kernel_size, in_features, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return kernel, bias


class _BatchNormVars(nn.Module):
  """``nn.BatchNorm``'s parameters and running statistics, same names and order."""

  features: int

  @nn.compact
  def __call__(self):
    shape = (self.features,)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), shape)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), shape)
    scale = self.param('scale', nn.initializers.ones, shape, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, shape, jnp.float32)
    return ra_mean, ra_var, scale, bias


class ConvBlock(nn.Module):
  """Conv -> BatchNorm -> LeakyReLU -> MaxPool -> Dropout.

  Computed as Conv -> batch statistics -> MaxPool -> BatchNorm affine ->
  LeakyReLU -> Dropout, which is the same function: per channel the BatchNorm
  affine map ``a * y + c`` and the LeakyReLU are monotonic, so the window max
  of their output is their output at the window max of ``y`` (at the window
  min where ``a < 0``, i.e. the max of ``-y``). The conv bias is folded into
  the statistics (``y + b - mean(y + b) = y - mean(y)``). Only the conv output
  and its batch statistics are full-resolution; everything after works on the
  pooled map: fewer full-size buffers, a faster train step on CPU
  (benchmarks/bench_train_step.py, jax vs. jax_plain_block; the ratio is in
  benchmarks/README.md).
  Parameters, statistics, their updates and the dropout masks are those of
  the plain ``nn.Conv``/``nn.BatchNorm``/``Dropout`` formulation (see
  tests/test_models.py); benchmarks/bench_train_step.py measures it.
  """

  features: int
  kernel: Sequence[int]
  pool: Sequence[int]
  dropout: float
  leaky_slope: float
  bn_momentum: float
  dtype: jnp.dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    kernel, conv_bias = _ConvParams(self.features, tuple(self.kernel), name='Conv_0')(
        x.shape[-1])
    ra_mean, ra_var, scale, bn_bias = _BatchNormVars(self.features, name='BatchNorm_0')()
    y = conv_same(x.astype(self.dtype), kernel.astype(self.dtype))  # bias folded below

    if train:
      # Batch statistics in float32 of y; those of y + bias follow exactly.
      y32 = y.astype(jnp.float32)
      stats = jnp.stack([y32.mean((0, 1, 2)), jnp.square(y32).mean((0, 1, 2))])
      if self.bn_axis_name is not None and not self.is_initializing():
        stats = jax.lax.pmean(stats, self.bn_axis_name)
      mean_y = stats[0]
      var = jnp.maximum(0.0, stats[1] - jnp.square(mean_y))
      if not self.is_initializing():
        m = self.bn_momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * (mean_y + conv_bias)
        ra_var.value = m * ra_var.value + (1 - m) * var
      center = mean_y  # mean(y + b) - b
    else:
      var = ra_var.value
      center = ra_mean.value - conv_bias
    # Keras' epsilon (1e-3), as in the reference implementation.
    mul = scale * jax.lax.rsqrt(var + 1e-3)
    sign = jnp.where(scale >= 0, 1.0, -1.0).astype(y.dtype)  # sign of mul
    z = sign * max_pool(y * sign, self.pool)  # window max (min where mul < 0)
    z = ((z - center) * mul + bn_bias).astype(self.dtype)
    z = nn.leaky_relu(z, negative_slope=self.leaky_slope)
    return Dropout(self.dropout)(z, deterministic=not train)


class LSTMStack(nn.Module):
  """Stacked LSTMs scanned over time; all steps between layers, last state out."""

  sizes: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for size in self.sizes:
      # nn.RNN lowers the cell to one `nn.scan` over time (a compiled loop).
      x = nn.RNN(nn.OptimizedLSTMCell(size))(x)
    return x[:, -1, :]


class Branch(nn.Module):
  """One CNN branch followed by its LSTM stack."""

  num_blocks: int
  features: int
  kernel: Sequence[int]
  pool: Sequence[int]
  lstm_sizes: Sequence[int]
  dropout: float
  leaky_slope: float
  bn_momentum: float
  dtype: jnp.dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for _ in range(self.num_blocks):
      x = ConvBlock(self.features, self.kernel, self.pool, self.dropout,
                    self.leaky_slope, self.bn_momentum, self.dtype,
                    self.bn_axis_name)(x, train)
    b, t, f, c = x.shape
    # One time step per pooled frame; its features are every (mel, channel).
    seq = x.reshape(b, t, f * c).astype(jnp.float32)
    return LSTMStack(self.lstm_sizes)(seq)


class DualBranchCRNN(nn.Module):
  """Log-mel ``[B, frames, mels]`` -> genre logits ``[B, num_classes]``.

  With ``return_embedding=True`` it returns ``(logits, embedding)``, the
  embedding ``[B, 2 * lstm_sizes[-1]]`` being the head's input. A call argument
  rather than ``sow``: inference and export stay pure functions without a
  mutable collection, and the parameters are the same either way.

  ``distill_outputs > 0`` adds ``distill_head``, a dense layer from the
  embedding to a teacher's targets (train/distill.py). Training reads it with
  ``sow`` (collection 'intermediates'); inference never asks for that
  collection, so the layer's output is unused there and compiled away.
  """

  num_classes: int
  conv_features: int = 32
  num_blocks: int = 2
  branch_a_kernel: Sequence[int] = (5, 5)
  branch_a_pool: Sequence[int] = (4, 4)
  branch_b_kernel: Sequence[int] = (3, 3)
  branch_b_pool: Sequence[int] = (2, 2)
  lstm_sizes: Sequence[int] = (128, 32)
  dropout: float = 0.2
  leaky_slope: float = 0.3
  bn_momentum: float = 0.99
  dtype: jnp.dtype = jnp.float32
  # Name of the device axis BatchNorm averages its batch statistics over
  # when the model runs per device inside shard_map (None: one device).
  bn_axis_name: str | None = None
  distill_outputs: int = 0

  @nn.compact
  def __call__(self, spec: jax.Array, train: bool = False,
               return_embedding: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    x = spec[..., None].astype(self.dtype)
    common = dict(num_blocks=self.num_blocks, features=self.conv_features,
                  lstm_sizes=self.lstm_sizes, dropout=self.dropout,
                  leaky_slope=self.leaky_slope, bn_momentum=self.bn_momentum,
                  dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    a = Branch(kernel=self.branch_a_kernel, pool=self.branch_a_pool,
               name='branch_a', **common)(x, train)
    b = Branch(kernel=self.branch_b_kernel, pool=self.branch_b_pool,
               name='branch_b', **common)(x, train)
    h = jnp.concatenate([a, b], axis=-1)
    logits = nn.Dense(self.num_classes, kernel_init=he_normal, name='head')(h)
    if self.distill_outputs:
      self.sow('intermediates', 'distill',
               nn.Dense(self.distill_outputs, name='distill_head')(h.astype(jnp.float32)))
    return (logits, h) if return_embedding else logits


def embedding_dim(model_config: ml_collections.ConfigDict) -> int:
  """Width of the embedding: the two branches' last LSTM sizes, concatenated."""
  return 2 * int(tuple(model_config.lstm_sizes)[-1])


def create(model_config: ml_collections.ConfigDict, num_classes: int,
                 bn_axis_name: str | None = None) -> DualBranchCRNN:
  """Builds the model from ``config.model``."""
  return DualBranchCRNN(
      num_classes=num_classes,
      conv_features=model_config.conv_features,
      num_blocks=model_config.num_blocks,
      branch_a_kernel=tuple(model_config.branch_a_kernel),
      branch_a_pool=tuple(model_config.branch_a_pool),
      branch_b_kernel=tuple(model_config.branch_b_kernel),
      branch_b_pool=tuple(model_config.branch_b_pool),
      lstm_sizes=tuple(model_config.lstm_sizes),
      dropout=model_config.dropout,
      leaky_slope=model_config.leaky_slope,
      bn_momentum=model_config.batchnorm_momentum,
      dtype=jnp.dtype(model_config.dtype),
      bn_axis_name=bn_axis_name,
      distill_outputs=int(model_config.get('distill_outputs', 0)),
  )
