"""musicnn (Pons & Serra, 2019) in flax.linen: the MSD/MTT taggers' architecture.

A port of ``build_musicnn`` in musicnn 0.1.0's models.py, layer for layer, so
its trained TensorFlow weights load unchanged (melgenre_jax/pretrained/):

* front end on the log-mel ``[B, frames, 96]``, seen as an image ``[B, T, F, 1]``
  after a one-channel BatchNorm: two *timbral* convolutions spanning 7 frames
  and 40% / 70% of the mel bands (time padded by 3 each side, 'valid'), three
  *temporal* convolutions spanning 128 / 64 / 32 frames and one band ('same');
  each is ReLU -> BatchNorm -> max over the mel axis -> ``[B, T, filters]``;
  concatenated to 561 channels (for 96 mels and 1.6 x 128 / 32 filters);
* mid end: three 7-frame convolutions over all channels (the original writes
  each as a 2-D 'valid' conv whose kernel spans the whole channel axis; here
  the same kernel runs as a 1-D conv with the channels as features, because
  XLA:CPU's gradient of the 2-D form is ~700x slower), ReLU ->
  BatchNorm, the second and third with residual connections; the front end
  and the three outputs are concatenated (dense connections, 753 channels);
* back end: max and mean over time, interleaved per channel as the original's
  ``concat([max, mean], 2)`` then flatten; BatchNorm (the *pooled* features,
  1506 wide) -> dropout 0.5 -> dense (200, ReLU) -> BatchNorm = the
  *penultimate* embedding -> dropout 0.5 -> the ``head`` (50 logits; sigmoid
  outside the model).

``head_input`` picks what a new head reads: 'penultimate' (the original's) or
'pooled', which skips the penultimate layer. The penultimate layer was trained
to predict the 50 tags, so it keeps what those tags need and drops the rest;
the pooled features, one step earlier, keep more of what a genre set can use
(docs/transfer.md has the measurement).

BatchNorm is ``tf.compat.v1.layers.batch_normalization``'s: epsilon 1e-3,
momentum 0.99, statistics per channel (the last axis).

``frozen`` keeps the pretrained layers fixed while a small genre set trains
the rest: 'input_bn' (the one-channel input BatchNorm only), 'frontend' (it
and the five front-end convs) or 'backbone' (everything before the head: a
linear probe). Frozen layers run in inference mode (BatchNorm running
statistics, no dropout) under ``stop_gradient``, so their gradients are never
computed: the front end is most of a training step's cost on CPU, and with the
input BatchNorm fixed its convolutions need no gradient for their one-channel
input, the slowest part of a full fine-tune on XLA:CPU (docs/transfer.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from melgenre_jax.errors import ConfigError
from melgenre_jax.models.layers import Dropout, tf_batch_norm

_TIMBRAL = (('timbral_74', 0.4), ('timbral_77', 0.7))  # (name, fraction of the mel bands)
_TEMPORAL = (('temporal_128', 128), ('temporal_64', 64), ('temporal_32', 32))  # frames
_MIDEND_LAYERS = 3
_MIDEND_PAD = 3  # the 7-frame kernels' 'same' padding, written out as the original does
FROZEN = ('', 'input_bn', 'frontend', 'backbone')  # config.model.frozen: what stays as imported
HEAD_INPUTS = ('penultimate', 'pooled')  # config.model.head_input: what the head reads
_FRONTEND_LAYERS = ('input_bn',) + tuple(name for name, _ in _TIMBRAL + _TEMPORAL)


class ChannelSpanConv(nn.Module):
  """The original's ``[k, C, 1, F]`` 2-D conv spanning all C channels, run as a 1-D conv.

  Same parameters (name, shape, initialiser) as ``nn.Conv(F, (k, C))`` on a
  one-channel image, so the TF checkpoints map unchanged: ``[B, T, C] -> [B, T - k + 1, F]``.
  """

  features: int
  frames: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (self.frames, channels, 1, self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    y = jax.lax.conv_general_dilated(x, kernel[:, :, 0, :], window_strides=(1,), padding='VALID',
                                     dimension_numbers=('NWC', 'WIO', 'NWC'))
    return y + bias


class MusiCNN(nn.Module):
  """``[B, frames, mels]`` log-mel (log10(1 + 10000 mel)) -> 50 tag logits."""

  num_classes: int
  frontend_filters: float = 1.6
  midend_filters: int = 64
  backend_units: int = 200
  dropout: float = 0.5
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_axis_name: str | None = None
  frozen: str = ''
  head_input: str = 'penultimate'

  def _bn(self, name: str, train: bool) -> nn.BatchNorm:
    return tf_batch_norm(name, train, self.bn_momentum, self.bn_epsilon, self.bn_axis_name)

  def _conv_block(self, x: jax.Array, name: str, features: int, kernel: Sequence[int],
                  padding: str, train: bool) -> jax.Array:
    """conv -> ReLU -> BatchNorm -> max over the mel axis: ``[B, T, F, C] -> [B, T, features]``."""
    x = nn.Conv(features, tuple(kernel), padding=padding, name=f'{name}_conv')(x)
    x = self._bn(f'{name}_bn', train)(nn.relu(x))
    return jnp.max(x, axis=2)

  def frontend(self, logmel: jax.Array, train: bool) -> jax.Array:
    """``[B, T, F]`` -> ``[B, T, 561]``: timbral then temporal features, concatenated."""
    n_mels = logmel.shape[-1]
    x = self._bn('input_bn', train and self.frozen != 'input_bn')(logmel[..., None])
    if self.frozen == 'input_bn':
      x = jax.lax.stop_gradient(x)
    padded = jnp.pad(x, ((0, 0), (3, 3), (0, 0), (0, 0)))
    timbral_filters = int(self.frontend_filters * 128)
    temporal_filters = int(self.frontend_filters * 32)
    outs = [self._conv_block(padded, name, timbral_filters, (7, int(frac * n_mels)), 'VALID', train)
            for name, frac in _TIMBRAL]
    outs += [self._conv_block(x, name, temporal_filters, (frames, 1), 'SAME', train)
             for name, frames in _TEMPORAL]
    return jnp.concatenate(outs, axis=-1)

  def midend(self, front: jax.Array, train: bool) -> jax.Array:
    """``[B, T, C]`` -> ``[B, T, C + 3 x 64]``: three 7-frame convs, two residual."""
    outs, x = [front], front
    for i in range(_MIDEND_LAYERS):
      padded = jnp.pad(x, ((0, 0), (_MIDEND_PAD, _MIDEND_PAD), (0, 0)))
      y = ChannelSpanConv(self.midend_filters, 2 * _MIDEND_PAD + 1,
                          name=f'midend_{i + 1}_conv')(padded)
      y = self._bn(f'midend_{i + 1}_bn', train)(nn.relu(y))
      x = y if i == 0 else y + x
      outs.append(x)
    return jnp.concatenate(outs, axis=-1)

  def pool(self, features: jax.Array, train: bool) -> jax.Array:
    """``[B, T, 753]`` -> the pooled features ``[B, 1506]``: max and mean over time."""
    # The original flattens concat([max, mean], axis=2) of [B, C, 1] maps: max and mean interleave.
    pooled = jnp.stack([jnp.max(features, axis=1), jnp.mean(features, axis=1)], axis=-1)
    return self._bn('pool_bn', train)(pooled.reshape(pooled.shape[0], -1))

  def penultimate(self, pooled: jax.Array, train: bool) -> jax.Array:
    """``[B, 1506]`` -> the penultimate embedding ``[B, 200]``."""
    h = Dropout(self.dropout)(pooled, deterministic=not train)
    h = nn.relu(nn.Dense(self.backend_units, name='penultimate_dense')(h))
    return self._bn('penultimate_bn', train)(h)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_embedding: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    trains = train and self.frozen in ('', 'input_bn')
    front = self.frontend(x, trains)
    if self.frozen == 'frontend':
      front, trains = jax.lax.stop_gradient(front), train
    embedding = self.pool(self.midend(front, trains), trains)
    if self.head_input == 'penultimate':
      embedding = self.penultimate(embedding, trains)
    if self.frozen == 'backbone':
      embedding = jax.lax.stop_gradient(embedding)
    h = Dropout(self.dropout)(embedding, deterministic=not train)
    logits = nn.Dense(self.num_classes, name='head')(h)
    return (logits, embedding) if return_embedding else logits


def embedding_dim(model_config: ml_collections.ConfigDict) -> int:
  """The head's input width: the penultimate layer's, or twice the mid end's output channels."""
  if head_input(model_config) == 'penultimate':
    return int(model_config.get('backend_units', 200))
  filters = float(model_config.get('frontend_filters', 1.6))
  channels = (len(_TIMBRAL) * int(filters * 128) + len(_TEMPORAL) * int(filters * 32)
              + _MIDEND_LAYERS * int(model_config.get('midend_filters', 64)))
  return 2 * channels


def create(model_config: ml_collections.ConfigDict, num_classes: int,
           bn_axis_name: str | None = None) -> MusiCNN:
  return MusiCNN(
      num_classes=num_classes,
      frontend_filters=float(model_config.get('frontend_filters', 1.6)),
      midend_filters=int(model_config.get('midend_filters', 64)),
      backend_units=int(model_config.get('backend_units', 200)),
      dropout=float(model_config.get('dropout', 0.5)),
      bn_momentum=float(model_config.get('batchnorm_momentum', 0.99)),
      bn_epsilon=float(model_config.get('bn_epsilon', 1e-3)),
      bn_axis_name=bn_axis_name,
      frozen=frozen(model_config),
      head_input=head_input(model_config))


def is_frozen(model_config: ml_collections.ConfigDict, layer: str) -> bool:
  """Whether the top-level parameter group ``layer`` stays as imported (the optimizer skips it)."""
  what = frozen(model_config)
  if what == 'backbone':
    return layer != 'head'
  if what == 'input_bn':
    return layer == 'input_bn'
  return what == 'frontend' and layer.startswith(_FRONTEND_LAYERS)


def frozen(model_config: ml_collections.ConfigDict) -> str:
  """``config.model.frozen``, checked: one of ``FROZEN``."""
  return _choice(model_config, 'frozen', FROZEN, " ('' trains every layer)")


def head_input(model_config: ml_collections.ConfigDict) -> str:
  """``config.model.head_input``, checked: one of ``HEAD_INPUTS``."""
  return _choice(model_config, 'head_input', HEAD_INPUTS)


def _choice(model_config: ml_collections.ConfigDict, field: str, allowed: tuple[str, ...],
            note: str = '') -> str:
  """``config.model.<field>`` (default ``allowed[0]``), or one line naming the allowed values."""
  value = str(model_config.get(field, allowed[0]))
  if value not in allowed:
    raise ConfigError(f'config.model.{field}={value!r}: choose one of '
                      f'{", ".join(repr(v) for v in allowed)}{note}.')
  return value
