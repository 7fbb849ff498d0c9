"""The dual-branch CNN-LSTM: shapes, parameter count, pooling, modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from melgenre_jax import models
from melgenre_jax.models import crnn
from melgenre_jax.models import layers


def _reference_model(num_classes=10):
  return models.create_model(default.get_config().model, num_classes)


def test_reference_output_shape_and_parameter_count():
  model = _reference_model()
  x = jnp.zeros((2, 130, 128))  # 3 s at 22.05 kHz, hop 512, 128 mels
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.shape == (2, 10)
  params = variables['params']
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  # Counted by hand: branch A convs 832 + 25632, BN 4*32 (+ stats), branch B
  # convs 320 + 9248; LSTM A 4*(256*128 + 128*128 + 128) + 4*(128*32 + 32*32 + 32),
  # LSTM B 4*(1024*128 + 128*128 + 128) + same 32-unit layer; head 64*10 + 10.
  conv = (5 * 5 * 1 * 32 + 32) + (5 * 5 * 32 * 32 + 32) + (3 * 3 * 32 + 32) + (3 * 3 * 32 * 32 + 32)
  bn = 4 * 2 * 32
  lstm2 = 4 * (128 * 32 + 32 * 32 + 32)
  lstm_a = 4 * (256 * 128 + 128 * 128 + 128) + lstm2
  lstm_b = 4 * (1024 * 128 + 128 * 128 + 128) + lstm2
  head = 64 * 10 + 10
  assert n == conv + bn + lstm_a + lstm_b + head
  # The LSTM input widths prove the branch sequences: A 8 mels x 32 ch, B 32 x 32.
  assert params['branch_a']['LSTMStack_0']['OptimizedLSTMCell_0']['ii']['kernel'].shape == (256, 128)
  assert params['branch_b']['LSTMStack_0']['OptimizedLSTMCell_0']['ii']['kernel'].shape == (1024, 128)


def test_max_pool_matches_reduce_window():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 13, 10, 3))
  ours = layers.max_pool(x, (4, 2))
  ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 4, 2, 1), (1, 4, 2, 1), 'VALID')
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize('window', [(4, 2), (2, 2), (4, 4)])
def test_max_pool_gradient_is_autodiffs_including_ties(window):
  """The custom backward pass splits the gradient between tied maxima as autodiff does."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 13, 10, 3))
  x = x.at[:, 4:].set(jnp.round(x[:, 4:]))  # many ties, as in a zero-padded tail
  x = x.at[1].set(0.0)  # every window of the second example tied
  g = jax.random.normal(jax.random.PRNGKey(1), (2, 13 // window[0], 10 // window[1], 3))

  def autodiff_pool(x):  # the same window view, differentiated by JAX
    return layers._windows(x, window).max(axis=(2, 4))  # pylint: disable=protected-access

  ours = jax.grad(lambda x: jnp.sum(layers.max_pool(x, window) * g))(x)
  ref = jax.grad(lambda x: jnp.sum(autodiff_pool(x) * g))(x)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(ours)[:, 13 // window[0] * window[0]:] == 0)  # cropped rows


def test_too_small_input_gives_clear_error():
  model = _reference_model()
  with pytest.raises(ValueError, match='too small'):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 128)),
                                      train=False))


def _tiny_model(dropout=0.5):
  return crnn.DualBranchCRNN(num_classes=4, conv_features=4, lstm_sizes=(8, 4),
                               dropout=dropout)


def test_train_mode_uses_dropout_and_updates_batch_stats():
  model = _tiny_model()
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32))
  # Always jit: eager flax with a scanned LSTM re-traces the scan every call.
  v = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)
  infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
  np.testing.assert_array_equal(infer(v, x), infer(v, x))  # inference is deterministic
  train = jax.jit(lambda v, x, k: model.apply(v, x, train=True, rngs={'dropout': k},
                                              mutable=['batch_stats']))
  out1, upd = train(v, x, jax.random.PRNGKey(1))
  out2, _ = train(v, x, jax.random.PRNGKey(2))
  assert not np.allclose(out1, out2)
  before = jax.tree.leaves(v['batch_stats'])
  after = jax.tree.leaves(upd['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize('rate', [0.2, 0.5])
def test_dropout_keeps_the_right_fraction_and_the_expectation(rate):
  x = jnp.ones((64, 33, 32))  # odd element count per row: the last word is half used
  drop = jax.jit(lambda k: layers.Dropout(rate).apply({}, x, deterministic=False,
                                                      rngs={'dropout': k}))
  out = np.asarray(drop(jax.random.PRNGKey(0)))
  kept = out != 0
  n = kept.size
  # Binomial sd of the kept fraction is ~0.002 here; 5 sd.
  assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
  np.testing.assert_allclose(out[kept], 1 / (1 - rate), rtol=1e-4)  # inverted scaling
  assert abs(out.mean() - 1.0) < 5 * np.sqrt(rate / (1 - rate) / n)
  assert not np.array_equal(out, np.asarray(drop(jax.random.PRNGKey(1))))  # fresh masks
  np.testing.assert_array_equal(out, np.asarray(drop(jax.random.PRNGKey(0))))  # same key


def test_dropout_is_identity_when_deterministic_and_handles_the_ends():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
  rngs = {'dropout': jax.random.PRNGKey(1)}
  np.testing.assert_array_equal(layers.Dropout(0.5).apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(
      layers.Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs), x)
  np.testing.assert_array_equal(
      layers.Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs), np.zeros((3, 5)))
  half = layers.Dropout(0.5).apply({}, x.astype(jnp.bfloat16), deterministic=False, rngs=rngs)
  assert half.dtype == jnp.bfloat16


def test_kernels_are_he_normal_scaled():
  model = _reference_model()
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(
      jnp.zeros((1, 130, 128)))['params']
  k = np.asarray(params['branch_a']['ConvBlock_1']['Conv_0']['kernel'])
  fan_in = 5 * 5 * 32
  assert abs(k.std() - np.sqrt(2.0 / fan_in)) < 0.1 * np.sqrt(2.0 / fan_in)


class _PlainConvBlock(crnn.ConvBlock):
  """The textbook order (full-resolution BatchNorm and LeakyReLU, then the pool)."""

  @crnn.nn.compact
  def __call__(self, x, train):
    nn = crnn.nn
    x = nn.Conv(self.features, tuple(self.kernel), padding='SAME',
                kernel_init=layers.he_normal)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=1e-3)(x)
    x = nn.leaky_relu(x, negative_slope=self.leaky_slope)
    x = layers.max_pool(x, self.pool)
    return layers.Dropout(self.dropout)(x, deterministic=not train)


@pytest.mark.parametrize('train', [True, False])
def test_pool_first_conv_block_is_the_textbook_block(train):
  """ConvBlock pools before the BatchNorm affine and LeakyReLU: same function, grads, stats."""
  kwargs = dict(features=3, kernel=(3, 3), pool=(2, 2), dropout=0.3, leaky_slope=0.3,
                bn_momentum=0.9)
  ours, plain = crnn.ConvBlock(**kwargs), _PlainConvBlock(**kwargs)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 9, 8, 2))
  variables = plain.init(jax.random.PRNGKey(1), x, train=False)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x, train=False)) == \
      jax.tree.map(jnp.shape, variables)
  # Non-trivial state: a negative BatchNorm scale (pooling must take the min
  # there), a conv bias, running statistics away from their initial values.
  params = jax.tree.map(lambda p: p, variables['params'])
  params['BatchNorm_0']['scale'] = jnp.array([1.5, -0.7, 0.2])
  params['BatchNorm_0']['bias'] = jnp.array([0.1, -0.2, 0.3])
  params['Conv_0']['bias'] = jnp.array([0.5, -1.0, 2.0])
  stats = {'mean': jnp.array([0.4, -0.9, 2.2]), 'var': jnp.array([2.0, 0.5, 1.3])}
  rngs = {'dropout': jax.random.PRNGKey(2)}

  def run(block, params, x):
    out, updates = block.apply({'params': params, 'batch_stats': {'BatchNorm_0': stats}}, x,
                               train=train, rngs=rngs, mutable=['batch_stats'])
    return out, updates

  def loss(block, params, x):
    out, _ = run(block, params, x)
    return jnp.sum(out * jnp.arange(out.size).reshape(out.shape) / out.size)

  out_ours, upd_ours = run(ours, params, x)
  out_plain, upd_plain = run(plain, params, x)
  np.testing.assert_allclose(out_ours, out_plain, rtol=1e-5, atol=1e-5)
  for k in ('mean', 'var'):
    np.testing.assert_allclose(upd_ours['batch_stats']['BatchNorm_0'][k],
                               upd_plain['batch_stats']['BatchNorm_0'][k], rtol=1e-5, atol=1e-6)
  g_ours = jax.grad(lambda p, x: loss(ours, p, x), argnums=(0, 1))(params, x)
  g_plain = jax.grad(lambda p, x: loss(plain, p, x), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
