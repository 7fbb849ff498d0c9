"""Fine-tuning the musicnn family (#31 item 4): frozen layers, pretrained specs in configs."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import default as default_config
from configs import musicnn_finetune
from melgenre_jax import config_checks
from melgenre_jax import models
from melgenre_jax import schedules
from melgenre_jax import steps
from melgenre_jax import train
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import ConfigError
from melgenre_jax.modes import import_pretrained
from melgenre_jax.pretrained import musicnn
from melgenre_jax.runtime import parallel

NUM_CLASSES = 4
FRONTEND = ('input_bn', 'timbral_74_conv', 'timbral_77_bn', 'temporal_128_conv', 'temporal_32_bn')


def _small(frozen: str) -> ml_collections.ConfigDict:
  """configs/musicnn_finetune.py with a narrow model, so a train step is cheap."""
  config = musicnn_finetune.get_config()
  config.init_from = ''
  config.model.frozen = frozen
  config.finetune.freeze_backbone_epochs = 0  # model.frozen alone decides what moves here
  config.model.frontend_filters = 0.1
  config.model.midend_filters = 8
  config.model.backend_units = 16
  config.model.dropout = 0.0
  config.optim.l2 = 1e-2  # a frozen kernel must not decay either
  return config


def _one_step(config):
  mesh = parallel.create_mesh()
  tx = schedules.create_optimizer(config, schedules.create_learning_rate_schedule(
      config.schedule, steps_per_epoch=10), steps_per_epoch=10)
  state = steps.build_state(config, NUM_CLASSES, mesh, tx, jax.random.PRNGKey(0))
  before = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  samples = int(round(config.audio.segment_seconds * config.audio.sample_rate))
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.standard_normal((4, samples)).astype(np.float32) * 0.1,
           'label': np.arange(4, dtype=np.int32)}
  step = steps.make_train_step(mesh, config, NUM_CLASSES)
  for _ in range(2):  # the schedule starts low: two steps move every trained weight
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    assert bool(metrics['finite'])
  after = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  return before, after


def _moved(before, after, collection: str, layer: str) -> bool:
  pairs = zip(jax.tree.leaves(before[collection][layer]), jax.tree.leaves(after[collection][layer]))
  return any(bool(np.any(a != b)) for a, b in pairs)


@pytest.mark.parametrize('frozen', ['frontend', 'backbone', '', 'input_bn'])
def test_frozen_layers_keep_weights_and_statistics(frozen):
  before, after = _one_step(_small(frozen))
  for layer in FRONTEND:
    collection = 'params' if layer.endswith('conv') else 'batch_stats'
    trains = frozen == '' or (frozen == 'input_bn' and layer != 'input_bn')
    assert _moved(before, after, collection, layer) == trains, (frozen, layer)
  assert _moved(before, after, 'params', 'input_bn') == (frozen == '')
  for layer in ('midend_1_conv', 'penultimate_dense'):
    assert _moved(before, after, 'params', layer) == (frozen != 'backbone'), (frozen, layer)
  assert _moved(before, after, 'batch_stats', 'penultimate_bn') == (frozen != 'backbone')
  assert _moved(before, after, 'params', 'head')


def test_head_on_the_pooled_features():
  """model.head_input='pooled': the head reads pool_bn's output, the penultimate layer is gone."""
  config = _small('frontend')
  config.model.head_input = 'pooled'
  width = models.embedding_dim(config.model)
  assert width == 2 * (2 * 12 + 3 * 3 + 3 * 8)  # max and mean of every mid-end output channel
  x = np.random.default_rng(0).standard_normal((2, 187, 96)).astype(np.float32)
  pooled = models.create_model(config.model, NUM_CLASSES)
  variables = pooled.init(jax.random.PRNGKey(0), x)
  assert 'penultimate_dense' not in variables['params']
  assert variables['params']['head']['kernel'].shape == (width, NUM_CLASSES)
  _, embedding = pooled.apply(variables, x, return_embedding=True)
  # The same layers in the original layout: the embedding is exactly its pool_bn output.
  config.model.head_input = 'penultimate'
  original = models.create_model(config.model, NUM_CLASSES)
  full = original.init(jax.random.PRNGKey(1), x)
  shared = {c: {**full[c], **{k: v for k, v in variables[c].items() if k != 'head'}}
            for c in ('params', 'batch_stats')}
  _, state = original.apply(shared, x, capture_intermediates=lambda m, _: m.name == 'pool_bn',
                            mutable=['intermediates'])
  np.testing.assert_array_equal(np.asarray(embedding),
                                np.asarray(state['intermediates']['pool_bn']['__call__'][0]))
  config.model.head_input = 'pooled'
  before, after = _one_step(config)
  assert _moved(before, after, 'params', 'midend_1_conv')
  assert _moved(before, after, 'batch_stats', 'pool_bn')
  assert not _moved(before, after, 'params', 'timbral_74_conv')
  config.model.head_input = 'dense'
  config.data.source = 'synthetic'
  with pytest.raises(ConfigError, match="head_input='dense'"):
    config_checks.validate(config)
  reference = default_config.get_config()
  reference.model.head_input = 'pooled'
  with pytest.raises(ConfigError, match='model.head_input'):
    config_checks.validate(reference)
  config.model.head_input = 'penultimate'  # configs/musicnn.py's value, kept when switching family
  config.model.name, config.model.frozen = 'vgg', ''
  config_checks.validate(config)


def test_frozen_is_checked():
  config = default_config.get_config()
  config.model.frozen = 'frontend'  # the reference trains every layer
  with pytest.raises(ConfigError, match='model.frozen'):
    config_checks.validate(config)
  config = _small('midend')
  config.data.source = 'synthetic'
  with pytest.raises(ConfigError, match="'frontend'"):
    config_checks.validate(config)


def test_frozen_mask_names_the_frontend_only():
  config = _small('frontend')
  params = {'input_bn': {'scale': 0}, 'timbral_74_conv': {'kernel': 0},
            'midend_1_conv': {'kernel': 0}, 'head': {'kernel': 0}}
  mask = models.frozen_mask(config.model, params)
  assert mask == {'input_bn': {'scale': True}, 'timbral_74_conv': {'kernel': True},
                  'midend_1_conv': {'kernel': False}, 'head': {'kernel': False}}
  assert not models.family_freezes(default_config.get_config().model)


def test_specs_in_a_config_become_the_imported_workdir(tmp_path, monkeypatch):
  """init_from / distill.teacher = musicnn:MODEL -> one import into $MELGENRE_CACHE, reused."""
  calls = []

  def fake_import(spec, workdir, base):
    calls.append(spec)
    os.makedirs(workdir)
    with open(os.path.join(workdir, workdir_lib.CONFIG), 'w') as f:
      f.write('{}')
    return workdir

  monkeypatch.setenv(musicnn.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(musicnn, 'import_to_workdir', fake_import)
  config = musicnn_finetune.get_config()
  config.distill.teacher = 'musicnn:MSD_musicnn'
  resolved = import_pretrained.resolve_specs(config)
  expected = os.path.join(str(tmp_path), 'imported', 'MSD_musicnn')
  assert resolved.init_from == expected and resolved.distill.teacher == expected
  assert calls == ['musicnn:MSD_musicnn']  # imported once, then reused
  assert config.init_from == 'musicnn:MSD_musicnn'  # the caller's config is left alone
  config.init_from = 'musicnn:MSD_musicnn_big'
  with pytest.raises(ConfigError, match='unknown musicnn model'):
    import_pretrained.resolve_specs(config)


@pytest.mark.slow
def test_finetune_from_the_real_msd_weights(tmp_path, monkeypatch):
  """configs/musicnn_finetune.py on a few synthetic songs: imported weights in, genre head out."""
  wheel = musicnn.fetch_wheel()
  monkeypatch.setenv(musicnn.CACHE_ENV, os.path.dirname(os.path.dirname(wheel)))
  config = musicnn_finetune.get_config()
  config.data.source = 'synthetic'
  config.data.synthetic.songs_per_genre = 4
  config.data.synthetic.num_genres = 4
  config.data.synthetic.song_seconds = 3.0
  config.batch_size = 8
  config.num_epochs = 2
  config.finetune.freeze_backbone_epochs = 1  # the head alone, then the mid end joins
  config.schedule.stage_ends = (1, 2)
  config.schedule.stage_start_lrs = (1e-3, 1e-3)
  config.schedule.stage_end_lrs = (1e-3, 1e-3)
  config = import_pretrained.resolve_specs(config)
  workdir = str(tmp_path / 'ft')
  train.train_and_evaluate(config, workdir)
  from melgenre_jax import inference  # pylint: disable=g-import-not-at-top
  tuned = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  source = inference.load_for_inference(workdir_lib.load_workdir_config(config.init_from),
                                        config.init_from)
  assert len(tuned.genres) == 4 and len(source.genres) == 50
  np.testing.assert_array_equal(  # the frozen front end is the imported one
      np.asarray(tuned.variables.params['timbral_74_conv']['kernel']),
      np.asarray(source.variables.params['timbral_74_conv']['kernel']))
  assert np.any(np.asarray(tuned.variables.params['midend_1_conv']['kernel'])
                != np.asarray(source.variables.params['midend_1_conv']['kernel']))
