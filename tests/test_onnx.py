"""export/model.onnx (#32): jax2onnx's graph run by onnxruntime equals the JAX model within 1e-4.

Every model family is converted: the reference CRNN (waveform and log-mel
input), musicnn (waveform in, its own log10 front end, multi-label) and vgg
(musicnn's front end, 2-D max pools over time and frequency).
The models are freshly initialised and then given non-trivial statistics
(BatchNorm running mean/variance, negative BatchNorm scales, which take the
min-pool branch, feature normalisation from real log-mels), so that a graph
that dropped or misread any of them would differ. They are compared with the
product's own prediction path (``InferenceModel.predict``/``embed``, the
shard_mapped steps), on synthetic songs, silence and a real recording.
"""

import os

import jax
import numpy as np
import pytest

from configs import musicnn
from configs import tiny
from melgenre_jax import inference
from melgenre_jax import steps
from melgenre_jax.data import audio
from melgenre_jax.data import features
from melgenre_jax.data import synthetic
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.modes import onnx_export
from melgenre_jax.pretrained import musicnn as pretrained_musicnn
from melgenre_jax.runtime import parallel

GENRES = ['ambient', 'blues', 'classical', 'disco']
EXCERPT = os.path.join(os.path.dirname(__file__), 'fixtures', 'musicnn', 'excerpt.flac')
TOL = onnx_export.TOLERANCE


CASES = {'crnn': ('crnn', 'device'), 'crnn_log_mel': ('crnn', 'host'),
         'musicnn': ('musicnn', 'device'), 'vgg': ('vgg', 'device')}


def _config(family: str = 'crnn', where: str = 'device'):
  config = (tiny.get_config() if family == 'crnn' else
            pretrained_musicnn.family_config(musicnn.get_config(), family))
  config.features.where = where
  return config


def _segments(sample_rate: int, samples: int) -> np.ndarray:
  """Two segments of four synthetic songs, up to three of a real recording, and silence."""
  songs = [synthetic.synthesize_song(f'synthetic/{g}/0003', sample_rate, 2 * samples / sample_rate)
           for g in GENRES]
  if os.path.exists(EXCERPT):  # 9 s of a CC BY-SA rock song (fixtures/musicnn/README.md)
    songs.append(audio.load_audio(EXCERPT, sample_rate)[:3 * samples])
  rows = [s[i:i + samples] for s in songs for i in range(0, len(s) - samples + 1, samples)]
  return np.stack(rows + [np.zeros(samples)]).astype(np.float32)


def _with_statistics(variables: steps.ModelVariables, spec: InputSpec,
                     waves: np.ndarray) -> steps.ModelVariables:
  """Non-trivial BatchNorm statistics and scales, feature statistics of real log-mels."""
  rng = np.random.default_rng(1)
  stats = jax.tree.map(lambda a: np.asarray(a) + rng.uniform(0.05, 0.5, a.shape).astype(np.float32),
                       variables.batch_stats)

  def flip(path, a):
    a = np.asarray(a)
    if path[-1].key == 'scale':  # BatchNorm scales of both signs
      return a * rng.choice([-1.0, 1.0], a.shape).astype(np.float32)
    return a

  params = jax.tree_util.tree_map_with_path(flip, variables.params)
  mels = spec.device_preprocess(normalize=False)(waves if spec.takes_waves
                                                 else spec.host_inputs(waves), 0.0, 1.0)
  mean, std = features.band_stats(np.asarray(mels))
  return steps.ModelVariables(params=params, batch_stats=stats, feature_mean=mean,
                              feature_std=std)


def _model(config, waves: np.ndarray, seed: int = 0) -> inference.InferenceModel:
  mesh = parallel.create_mesh()
  spec = InputSpec.from_config(config)
  module = steps.create_model(config, len(GENRES))
  fresh = steps.init_variables(spec, module, jax.random.PRNGKey(seed))
  variables = jax.device_put(_with_statistics(fresh, spec, waves), parallel.replicated(mesh))
  return inference.make_inference_model(config, GENRES, variables, mesh, step=0)


@pytest.fixture(scope='module')
def waves():
  return _segments(8000, 8000)


@pytest.fixture(scope='module', params=sorted(CASES))
def exported(request, tmp_path_factory):
  """(model, inputs, path, info) for each family and input kind."""
  config = _config(*CASES[request.param])
  spec = InputSpec.from_config(config)
  waves = _segments(spec.sample_rate, spec.segment_samples)
  model = _model(config, waves)
  inputs = model.spec.host_inputs(waves)
  path = str(tmp_path_factory.mktemp('onnx') / onnx_export.ONNX_FILE)
  info = onnx_export.write_onnx(onnx_export.inference_outputs(model), model.spec.input_shape,
                                path, inputs=inputs)
  return model, inputs, path, info


def test_onnx_equals_the_product_prediction_path(exported):
  model, inputs, path, info = exported
  assert info['file'] == 'model.onnx' and os.path.getsize(path) == info['bytes'] > 0
  assert set(info['max_abs_difference']) == {'probabilities', 'embedding'}
  assert max(info['max_abs_difference'].values()) <= TOL
  got = onnx_export.run(onnx_export.session(path), inputs)
  probs, emb = model.predict(inputs), model.embed(inputs)
  assert got['probabilities'].shape == (len(inputs), len(GENRES))
  assert got['embedding'].shape == (len(inputs), model.embedding_dim)
  np.testing.assert_allclose(got['probabilities'], probs, rtol=0, atol=TOL)
  np.testing.assert_allclose(got['embedding'], emb, rtol=0, atol=TOL)
  # The statistics matter: the rows differ from each other, the model is not constant.
  assert np.ptp(probs, axis=0).max() > 1e-3 and np.ptp(emb, axis=0).max() > 1e-3


def test_any_batch_size_runs(exported):
  model, inputs, path, _ = exported
  sess = onnx_export.session(path)
  assert [(i.name, i.shape) for i in sess.get_inputs()] == [
      ('inputs', ['batch', *model.spec.input_shape])]
  assert [(o.name, o.shape) for o in sess.get_outputs()] == [
      ('probabilities', ['batch', len(GENRES)]), ('embedding', ['batch', model.embedding_dim])]
  whole = onnx_export.run(sess, inputs)
  assert all(v.shape[0] == 0 for v in onnx_export.run(sess, inputs[:0]).values())
  for rows in (inputs[3:4], inputs[:7]):
    got = onnx_export.run(sess, rows)
    start = 3 if len(rows) == 1 else 0
    for name in onnx_export.OUTPUTS:
      np.testing.assert_allclose(got[name], whole[name][start:start + len(rows)], atol=1e-6)


def test_graph_keeps_the_lstm_as_a_loop(exported):
  """The LSTM scan is converted (ONNX Loop inside the per-segment Loop), not unrolled."""
  import onnx  # pylint: disable=g-import-not-at-top
  graph = onnx.load(exported[2]).graph
  (outer,) = [n for n in graph.node if n.op_type == 'Loop']
  body = onnx.helper.get_attribute_value(outer.attribute[0])

  def ops(g):
    for n in g.node:
      yield n.op_type
      for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
          yield from ops(a.g)

  found = list(ops(body))
  if exported[0].config.model.get('name', 'crnn') == 'crnn':
    assert found.count('Loop') >= 4  # two LSTM layers per branch, each one loop
  assert 'Conv' in found
  if exported[0].config.model.name == 'vgg':  # pooled over (time, freq) only: onnxruntime runs it
    assert 'MaxPool' in found
  if exported[0].spec.takes_waves:
    assert 'DFT' in found  # the log-mel front end is in the graph


def test_input_of_the_wrong_shape_is_refused(exported):
  _, inputs, path, _ = exported
  with pytest.raises(Exception, match='(?i)dimension|shape'):
    onnx_export.run(onnx_export.session(path), inputs[:, :-1])


def test_per_segment_is_the_same_function(waves):
  fn = onnx_export.inference_outputs(_model(_config(), waves))
  for a, b in zip(jax.jit(onnx_export.per_segment(fn))(waves), jax.jit(fn)(waves)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_graph_that_differs_is_not_written(waves, tmp_path, monkeypatch):
  """A converter bug (here: the graph of other weights) raises and leaves no file."""
  model = _model(_config(), waves)
  other = _model(_config(), waves, seed=1)
  real_convert = onnx_export.convert
  monkeypatch.setattr(onnx_export, 'convert', lambda fn, *a, **k: real_convert(
      onnx_export.inference_outputs(other), *a, **k))
  path = tmp_path / onnx_export.ONNX_FILE
  with pytest.raises(onnx_export.OnnxMismatchError, match='differs'):
    onnx_export.write_onnx(onnx_export.inference_outputs(model), model.spec.input_shape,
                           str(path), inputs=waves)
  assert os.listdir(tmp_path) == []


def test_stack_and_time_pooling_convert(tmp_path):
  """musicnn's back end: max and mean over time interleaved with jnp.stack (jax's own primitive)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  w = np.random.default_rng(2).normal(size=(12, 5)).astype(np.float32)

  def fn(x):
    pooled = jnp.stack([x.max(axis=1), x.mean(axis=1)], axis=2).reshape(x.shape[0], -1)
    return jax.nn.sigmoid(pooled @ w), pooled

  x = np.random.default_rng(3).normal(size=(3, 7, 6)).astype(np.float32)
  info = onnx_export.write_onnx(fn, (7, 6), str(tmp_path / 'm.onnx'), inputs=x)
  assert max(info['max_abs_difference'].values()) <= 1e-6
  got = onnx_export.run(onnx_export.session(str(tmp_path / 'm.onnx')), x)
  first = np.stack([x[:, :, 0].max(1), x[:, :, 0].mean(1)], 1)  # band 0: max, then mean
  np.testing.assert_allclose(got['embedding'][:, :2], first, atol=1e-6)
