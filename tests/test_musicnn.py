"""musicnn taggers (#31): the bundle reader, the name mapping, and the port against the original.

The reference outputs in tests/fixtures/musicnn/ were made by musicnn 0.1.0
itself (TensorFlow, its own extractor; make_reference.py and README.md there).
The real weights come from the musicnn wheel, fetched with ``pip download
--no-deps`` into the cache like the import does (CI reaches PyPI).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types

import jax
import librosa
import ml_collections
import numpy as np
import pytest

from configs import default as default_config
from configs import musicnn as musicnn_config
from melgenre_jax import inference
from melgenre_jax import models
from melgenre_jax.data import features
from melgenre_jax.errors import UserError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.modes import import_pretrained
from melgenre_jax.pretrained import musicnn
from melgenre_jax.pretrained import tf_checkpoint
from melgenre_jax.train import transfer

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'musicnn')
EXCERPT = os.path.join(FIXTURE, 'excerpt.flac')
FRAMES = 187
# Measured: the librosa host path equals the original's log-mel bit for bit
# (same librosa calls, float32); the in-graph front end differs by 1.0e-6 (its
# float32 FFT is not numpy's; values reach 5.6). The imported models' outputs:
# probabilities within 6e-7, embeddings within 3.5e-6 (musicnn) / 5.8e-6 (vgg's
# last pool) of TensorFlow's.
HOST_LOGMEL_ATOL = 1e-6
DEVICE_LOGMEL_ATOL = 1e-5
OUTPUT_ATOL = 1e-4


def _config(family: str = 'musicnn') -> ml_collections.ConfigDict:
  return musicnn.family_config(musicnn_config.get_config(), family)


def _one_line(e: pytest.ExceptionInfo) -> str:
  message = str(e.value)
  assert '\n' not in message and message
  return message


# ---------------------------------------------------------------- (a) bundle reader

def _tensors() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {'conv2d/kernel': rng.normal(size=(7, 3, 1, 4)).astype(np.float32),
          'conv2d/bias': rng.normal(size=(4,)).astype(np.float32),
          'conv2d_1/kernel': rng.normal(size=(2, 2)).astype(np.float32),
          'dense/kernel/Adam': np.arange(6, dtype=np.float32).reshape(3, 2),
          'global_step': np.array(1234, np.int64),
          'half': np.array([1.5, -2.0], np.float16)}


def test_crc32c_known_value_and_vectorised_path():
  assert tf_checkpoint.crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value
  data = np.random.default_rng(1).integers(0, 256, 300_003, dtype=np.uint8).tobytes()
  serial = tf_checkpoint._crc_raw_serial(data, 0xffffffff) ^ 0xffffffff
  assert tf_checkpoint.crc32c(data) == serial


def test_bundle_round_trip(tmp_path):
  prefix = str(tmp_path / 'model.ckpt')
  tensors = _tensors()
  tf_checkpoint.write_bundle(prefix, tensors, restart_interval=2)
  read = tf_checkpoint.read_bundle(prefix)
  assert sorted(read) == sorted(tensors)
  for name, value in tensors.items():
    assert read[name].dtype == value.dtype and read[name].shape == value.shape
    np.testing.assert_array_equal(read[name], value)


def test_truncated_data_is_refused(tmp_path):
  prefix = str(tmp_path / 'model.ckpt')
  tf_checkpoint.write_bundle(prefix, _tensors())
  data = prefix + '.data-00000-of-00001'
  with open(data, 'rb') as f:
    raw = f.read()
  with open(data, 'wb') as f:
    f.write(raw[:-10])
  with pytest.raises(tf_checkpoint.CheckpointError) as e:
    tf_checkpoint.read_bundle(prefix)
  assert 'does not fit' in _one_line(e)


def test_flipped_byte_fails_crc(tmp_path):
  prefix = str(tmp_path / 'model.ckpt')
  tf_checkpoint.write_bundle(prefix, _tensors())
  data = prefix + '.data-00000-of-00001'
  raw = bytearray(open(data, 'rb').read())
  raw[5] ^= 0x40
  open(data, 'wb').write(bytes(raw))
  with pytest.raises(UserError) as e:
    tf_checkpoint.read_bundle(prefix)
  assert 'crc32c' in _one_line(e)


def test_foreign_files_are_refused(tmp_path):
  prefix = str(tmp_path / 'foreign')
  with open(prefix + '.index', 'wb') as f:
    f.write(b'{"not": "a checkpoint"}' * 4)
  with pytest.raises(tf_checkpoint.CheckpointError) as e:
    tf_checkpoint.read_index(prefix)
  assert 'magic' in _one_line(e)
  with pytest.raises(tf_checkpoint.CheckpointError) as e:
    tf_checkpoint.read_index(str(tmp_path / 'missing'))
  _one_line(e)


def test_snappy_block_is_refused(tmp_path):
  prefix = str(tmp_path / 'model.ckpt')
  tf_checkpoint.write_bundle(prefix, _tensors())
  raw = bytearray(open(prefix + '.index', 'rb').read())
  footer = bytes(raw[-48:])
  _, pos = tf_checkpoint._varint(footer, 0)
  _, pos = tf_checkpoint._varint(footer, pos)
  index_offset, pos = tf_checkpoint._varint(footer, pos)
  index_size, _ = tf_checkpoint._varint(footer, pos)
  index = tf_checkpoint._block_entries(bytes(raw[index_offset:index_offset + index_size]))
  offset, p = tf_checkpoint._varint(index[0][1], 0)
  size, _ = tf_checkpoint._varint(index[0][1], p)
  raw[offset + size] = 1  # the data block's compression byte: snappy
  open(prefix + '.index', 'wb').write(bytes(raw))
  with pytest.raises(tf_checkpoint.CheckpointError) as e:
    tf_checkpoint.read_index(prefix)
  assert 'snappy' in _one_line(e)


# ---------------------------------------------------------------- (b) mapping

def _fake_checkpoint(target: dict, family: str = 'musicnn') -> dict[str, np.ndarray]:
  """TF-named arrays for every Flax leaf, by the inverse of the mapping, plus Adam slots."""
  out = {'beta1_power': np.float32(0.9), 'beta2_power': np.float32(0.999)}
  for tf_layer, flax_name, kind in musicnn.layer_names(family):
    for tf_var, collection, flax_var in musicnn._VARIABLES[kind]:
      shape = target[collection][flax_name][flax_var].shape
      value = np.full(shape, hash((flax_name, flax_var)) % 97, np.float32)
      out[f'{tf_layer}/{tf_var}'] = value
      if collection == 'params':
        out[f'{tf_layer}/{tf_var}/Adam'] = value
        out[f'{tf_layer}/{tf_var}/Adam_1'] = value
  return out


@pytest.mark.parametrize('family', ['musicnn', 'vgg'])
def test_mapping_uses_every_variable_once(family):
  target = musicnn.flax_target(_config(family), 50)
  names = musicnn.layer_names(family)
  assert len({n[0] for n in names}) == len({n[1] for n in names}) == len(names)
  leaves = {(c, m, v) for c, mods in target.items() for m, vs in mods.items() for v in vs}
  mapped = {(c, f, v) for _, f, kind in names for _, c, v in musicnn._VARIABLES[kind]}
  assert mapped == leaves
  tensors = _fake_checkpoint(target, family)
  out = musicnn.map_variables(tensors, target, family)
  for tf_layer, flax_name, kind in names:
    for tf_var, collection, flax_var in musicnn._VARIABLES[kind]:
      np.testing.assert_array_equal(out[collection][flax_name][flax_var],
                                    tensors[f'{tf_layer}/{tf_var}'])


@pytest.mark.parametrize('change', ['extra', 'missing', 'shape'])
def test_mapping_errors_name_the_variable(change):
  target = musicnn.flax_target(_config(), 50)
  tensors = _fake_checkpoint(target)
  if change == 'extra':
    tensors['conv2d_8/kernel'] = np.zeros((3,), np.float32)
  elif change == 'missing':
    del tensors['conv2d_8/kernel'.replace('8', '3')]
  else:
    tensors['conv2d_3/kernel'] = np.zeros((63, 1, 1, 51), np.float32)
  with pytest.raises(musicnn.PretrainedError) as e:
    musicnn.map_variables(tensors, target)
  assert ('conv2d_8/kernel' if change == 'extra' else 'conv2d_3/kernel') in _one_line(e)


def test_family_config_matches_configs_musicnn():
  """configs/musicnn.py spells out what the import sets on any base config."""
  recipe = musicnn_config.get_config()
  from_default = musicnn.family_config(default_config.get_config())
  for dotted, value in musicnn.FAMILY_FIELDS:
    node_a, node_b = recipe, from_default
    for part in dotted.split('.'):
      node_a, node_b = node_a[part], node_b[part]
    assert node_a == value == node_b, dotted
  assert InputSpec.from_config(recipe).input_shape == (47616,)
  assert features.num_frames(47616, 256) == FRAMES


def test_compression_default_is_db():
  assert features.compression_of(types.SimpleNamespace()) == 'db'
  assert default_config.get_config().features.get('compression', 'db') == 'db'
  with pytest.raises(ValueError):
    features.compression_of(types.SimpleNamespace(compression='log'))


@pytest.mark.parametrize('family', ['musicnn', 'vgg'])
def test_model_shapes_and_train_mode(family):
  config = _config(family)
  model = models.create_model(config.model, 50)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, FRAMES, 96))
  variables = model.init(jax.random.PRNGKey(1), x)
  logits, emb = model.apply(variables, x, return_embedding=True)
  assert logits.shape == (2, 50) and emb.shape == (2, models.embedding_dim(config.model))
  probs = jax.nn.sigmoid(logits)
  assert np.all((probs >= 0) & (probs <= 1))
  out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.PRNGKey(2)})
  assert out.shape == (2, 50)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), updates['batch_stats'],
                         variables['batch_stats'])
  assert all(jax.tree.leaves(changed))


# --------------------------------------------------- (c) the original's outputs

def _reference(model: str) -> dict[str, np.ndarray]:
  return dict(np.load(os.path.join(FIXTURE, f'reference_{model}.npz')))


@pytest.fixture(scope='module')
def wheel() -> str:
  return musicnn.fetch_wheel()  # downloads once into the cache (CI reaches PyPI)


@pytest.fixture(scope='module')
def audio() -> np.ndarray:
  y, _ = librosa.load(EXCERPT, sr=16000)  # as the original's batch_data
  return y


def _patches(logmel: np.ndarray, count: int) -> np.ndarray:
  return np.stack([logmel[i * FRAMES:(i + 1) * FRAMES] for i in range(count)])


def _feature_cfgs():
  config = _config()
  return types.SimpleNamespace(sample_rate=16000), types.SimpleNamespace(
      **config.features.to_dict())


def test_host_logmel_equals_original(audio):
  ref = _reference('MSD_musicnn')['logmel']
  host = features.librosa_log_mel(audio, *_feature_cfgs())
  diff = np.abs(_patches(host, len(ref)) - ref).max()
  assert diff <= HOST_LOGMEL_ATOL, diff


def test_device_logmel_matches_original(audio):
  ref = _reference('MSD_musicnn')['logmel']
  device = np.asarray(features.make_frontend(*_feature_cfgs())(audio[None]))[0]
  diff = np.abs(_patches(device, len(ref)) - ref).max()
  assert diff <= DEVICE_LOGMEL_ATOL, diff


@pytest.mark.parametrize('name', musicnn.MODELS)
def test_probabilities_and_embedding_equal_original(wheel, audio, name):
  ref = _reference(name)
  family = musicnn.family_of(name)
  # The vgg files keep the log-mel once (in the musicnn file) and the flattenable last pool.
  logmel = _reference(name.replace('_vgg', '_musicnn'))['logmel']
  ref_emb = ref['pool5'].reshape(len(logmel), -1) if family == 'vgg' else ref['penultimate']
  ckpt, tensors = musicnn.load(f'{wheel}:{name}')
  assert list(ckpt.labels) == [str(t) for t in ref['tags']]
  config = _config(family)
  variables = musicnn.map_variables(
      tensors, musicnn.flax_target(config, len(ckpt.labels)), family)
  model = models.create_model(config.model, len(ckpt.labels))
  device = np.asarray(features.make_frontend(*_feature_cfgs())(audio[None]))[0]
  for x in (logmel, _patches(device, len(logmel))):
    logits, emb = model.apply(variables, x, return_embedding=True)
    assert emb.shape[1] == models.embedding_dim(config.model)
    prob_diff = np.abs(np.asarray(jax.nn.sigmoid(logits)) - ref['taggram']).max()
    emb_diff = np.abs(np.asarray(emb) - ref_emb).max()
    assert prob_diff <= OUTPUT_ATOL and emb_diff <= OUTPUT_ATOL, (prob_diff, emb_diff)


def test_import_writes_an_ordinary_workdir(wheel, tmp_path, caplog):
  workdir = import_pretrained.import_workdir(musicnn_config.get_config(), str(tmp_path / 'msd'),
                                             f'{wheel}:MSD_musicnn')
  with open(os.path.join(workdir, 'dataset.json')) as f:
    info = json.load(f)
  ref = _reference('MSD_musicnn')
  assert info['task'] == 'multilabel' and info['genres'] == [str(t) for t in ref['tags']]
  config = musicnn.family_config(musicnn_config.get_config())
  with caplog.at_level(logging.INFO):
    model = inference.load_for_inference(config, workdir)
  # Tags are never calibrated: no "uncalibrated ... run --mode=calibrate" advice for them.
  assert not [r for r in caplog.records if 'calibrat' in r.getMessage()]
  ckpt, tensors = musicnn.load(f'{wheel}:MSD_musicnn')
  mapped = musicnn.map_variables(tensors, musicnn.flax_target(config, 50))
  restored = {'params': model.variables.params, 'batch_stats': model.variables.batch_stats}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), mapped)
  with pytest.raises(UserError) as e:  # the reference's inputs are not musicnn's
    transfer.check_front_end(transfer.resolve_source(workdir), default_config.get_config())
  assert 'features.compression' in str(e.value)
  with pytest.raises(UserError) as e:  # never over an existing run
    import_pretrained.import_workdir(musicnn_config.get_config(), workdir, f'{wheel}:MSD_musicnn')
  _one_line(e)


def test_bad_specs_are_one_line(tmp_path):
  for spec in ('musicnn:MSD_musicnn_big', str(tmp_path / 'nowhere.whl'), str(tmp_path / 'nothing')):
    with pytest.raises(UserError) as e:
      musicnn.load(spec)
    _one_line(e)
  with pytest.raises(UserError) as e:
    import_pretrained.import_workdir(musicnn_config.get_config(), str(tmp_path / 'w'), '')
  _one_line(e)


@pytest.mark.slow
def test_cli_import_then_predict_prints_tags(wheel, tmp_path):
  """The issue's command, then predict on the imported workdir (two processes, as a user would)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = str(tmp_path / 'msd')
  env = dict(os.environ, MELGENRE_CACHE=os.path.dirname(os.path.dirname(wheel)))
  subprocess.run([sys.executable, 'main.py', '--mode=import', '--import_from=musicnn:MSD_musicnn',
                  f'--workdir={workdir}'], cwd=root, env=env, check=True, capture_output=True)
  out = subprocess.run([sys.executable, 'main.py', f'--workdir={workdir}', '--mode=predict',
                        EXCERPT], cwd=root, env=env, check=True, capture_output=True, text=True)
  assert 'tags (p >= 0.5): metal' in out.stdout, out.stdout
