"""The reference dual-branch CNN-LSTM in Keras 3 (benchmark peer only).

Backend-neutral: set ``KERAS_BACKEND`` (tensorflow | jax) before importing
keras. Same layers and hyperparameters as ``melgenre_jax.models.crnn.DualBranchCRNN``
at the reference config (this is also how the original reference was written):
the L2 penalty of ``config.optim.l2`` on every kernel (conv, LSTM input and
recurrent, dense) as Keras regularizers, Adam with epsilon 1e-7.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras


def build_model(num_classes: int = 10, frames: int = 130, n_mels: int = 128,
                features: int = 32, num_blocks: int = 2,
                branch_a=((5, 5), (4, 4)), branch_b=((3, 3), (2, 2)),
                lstm_sizes: Sequence[int] = (128, 32), dropout: float = 0.2,
                leaky_slope: float = 0.3, bn_momentum: float = 0.99,
                l2: float = 1e-4) -> keras.Model:
  """Log-mel ``[B, frames, mels]`` -> logits ``[B, num_classes]``."""
  reg = keras.regularizers.L2(l2)
  spec = keras.Input((frames, n_mels), name='spec')
  x0 = keras.layers.Reshape((frames, n_mels, 1))(spec)  # NHWC: time, mel, channel
  outputs = []
  for name, (kernel, pool) in (('a', branch_a), ('b', branch_b)):
    x = x0
    for i in range(num_blocks):
      x = keras.layers.Conv2D(features, kernel, padding='same', kernel_initializer='he_normal',
                              kernel_regularizer=reg, name=f'{name}_conv{i}')(x)
      x = keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-3)(x)
      x = keras.layers.LeakyReLU(negative_slope=leaky_slope)(x)
      x = keras.layers.MaxPooling2D(pool)(x)
      x = keras.layers.Dropout(dropout)(x)
    t, f, c = x.shape[1:]
    x = keras.layers.Reshape((t, f * c))(x)  # one step per pooled frame
    for j, size in enumerate(lstm_sizes):
      last = j == len(lstm_sizes) - 1
      x = keras.layers.LSTM(size, return_sequences=not last, kernel_regularizer=reg,
                            recurrent_regularizer=reg, name=f'{name}_lstm{j}')(x)
    outputs.append(x)
  h = keras.layers.Concatenate()(outputs)
  logits = keras.layers.Dense(num_classes, kernel_initializer='he_normal',
                              kernel_regularizer=reg, name='head')(h)
  return keras.Model(spec, logits)


def compile_model(model: keras.Model, jit_compile: bool | str = 'auto',
                  learning_rate: float = 5.55e-4) -> keras.Model:
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.9,
                                      beta_2=0.999, epsilon=1e-7),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      jit_compile=jit_compile)
  return model
