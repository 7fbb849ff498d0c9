"""musicnn's VGG-like baseline tagger (``vgg`` in musicnn 0.1.0's models.py) in flax.linen.

Five 3x3 'same' convolutions (ReLU -> BatchNorm -> max pool -> dropout 0.25)
on the log-mel image ``[B, 187, 96, 1]`` after a one-channel BatchNorm; pools
(4, 1)/stride 2, three (2, 2), then (4, 4): 'valid', as
``tf.compat.v1.layers.max_pooling2d``. The flattened last pool (2 x 1 x 128 =
256 for 187 x 96 inputs) is the embedding; dropout 0.5 and the ``head`` (50
logits). The flatten ties the head to 187-frame inputs, as in the original.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections

from melgenre_jax.models.layers import Dropout, tf_batch_norm

# (window, strides) of the max pool after each convolution.
POOLS = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)),
         ((4, 4), (4, 4)))


class VGG(nn.Module):
  """``[B, frames, mels]`` log-mel -> tag logits."""

  num_classes: int
  filters: int = 128
  conv_dropout: float = 0.25
  dropout: float = 0.5
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_axis_name: str | None = None

  def _bn(self, name: str, train: bool) -> nn.BatchNorm:
    return tf_batch_norm(name, train, self.bn_momentum, self.bn_epsilon, self.bn_axis_name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_embedding: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    x = self._bn('input_bn', train)(x[..., None])
    for i, (window, strides) in enumerate(POOLS, 1):
      if i > 1:
        x = Dropout(self.conv_dropout)(x, deterministic=not train)
      x = nn.relu(nn.Conv(self.filters, (3, 3), padding='SAME', name=f'conv{i}')(x))
      x = nn.max_pool(self._bn(f'bn{i}', train)(x), window, strides, padding='VALID')
    embedding = x.reshape(x.shape[0], -1)
    h = Dropout(self.dropout)(embedding, deterministic=not train)
    logits = nn.Dense(self.num_classes, name='head')(h)
    return (logits, embedding) if return_embedding else logits


def embedding_dim(model_config: ml_collections.ConfigDict) -> int:
  """The flattened last pool for 187 x 96 inputs: 2 x 1 x filters."""
  return 2 * int(model_config.get('filters', 128))


def create(model_config: ml_collections.ConfigDict, num_classes: int,
           bn_axis_name: str | None = None) -> VGG:
  return VGG(num_classes=num_classes, filters=int(model_config.get('filters', 128)),
             conv_dropout=float(model_config.get('conv_dropout', 0.25)),
             dropout=float(model_config.get('dropout', 0.5)),
             bn_momentum=float(model_config.get('batchnorm_momentum', 0.99)),
             bn_epsilon=float(model_config.get('bn_epsilon', 1e-3)),
             bn_axis_name=bn_axis_name)
