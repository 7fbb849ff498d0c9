"""The compiled data-parallel train step and the whole training run, on tiny shapes."""

import json
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs import tiny
from melgenre_jax import inference
from melgenre_jax import schedules
from melgenre_jax import steps
from melgenre_jax import train
from melgenre_jax.runtime import parallel

NUM_CLASSES = 4


def _config(**overrides):
  config = tiny.get_config()
  config.update_from_flattened_dict(overrides)
  return config


def _state_and_step(config, mesh, tx=None):
  tx = tx or schedules.create_optimizer(config, schedules.create_learning_rate_schedule(
      config.schedule, steps_per_epoch=10))
  state = steps.build_state(config, NUM_CLASSES, mesh, tx, jax.random.PRNGKey(0))
  return state, steps.make_train_step(mesh, config, NUM_CLASSES)


def _batch(config, n=8, seed=0):
  rng = np.random.default_rng(seed)
  samples = int(config.audio.segment_seconds * config.audio.sample_rate)
  labels = np.arange(n) % NUM_CLASSES
  # Each class a different tone, so a few steps can learn something.
  t = np.arange(samples) / config.audio.sample_rate
  waves = np.stack([np.sin(2 * np.pi * (200 + 700 * l) * t) * 0.5
                    + 0.05 * rng.standard_normal(samples) for l in labels])
  return {'inputs': waves.astype(np.float32), 'label': labels.astype(np.int32)}


def test_loss_falls_on_a_fixed_batch():
  config = _config(**{'model.dropout': 0.0, 'schedule.stage_start_lrs': (1e-2, 1e-2),
                      'schedule.stage_end_lrs': (1e-2, 1e-2)})
  mesh = parallel.create_mesh()
  state, step = _state_and_step(config, mesh)
  batch = parallel.global_batch(_batch(config), mesh)
  losses = []
  for _ in range(12):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
    assert bool(m['finite'])
  assert losses[-1] < 0.7 * losses[0], losses
  assert int(state.step) == 12


def _two_sgd_steps_on_one_and_two_devices(config):
  """The state after the same two SGD steps on a 1-device and a 2-device mesh."""
  out = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.create_mesh(devices)
    state, step = _state_and_step(config, mesh, tx=optax.sgd(0.05))
    for i in range(2):
      state, _ = step(state, parallel.global_batch(_batch(config, seed=i), mesh))
    out.append(state)
  return out


def test_one_and_two_devices_give_the_same_update():
  """Plain SGD, because Adam would hide a gradient scaled by the device count
  (e.g. a pmean on top of shard_map's own psum): its update is scale-free."""
  assert jax.device_count() >= 2, 'conftest forces 2 CPU devices'
  config = _config(**{'model.dropout': 0.0})
  params = [jax.tree.map(np.asarray, (state.params, state.batch_stats))
            for state in _two_sgd_steps_on_one_and_two_devices(config)]
  flat1, flat2 = jax.tree.leaves(params[0]), jax.tree.leaves(params[1])
  for a, b in zip(flat1, flat2):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('rows', [16, 12])
def test_microbatched_prediction_equals_the_whole_batch(rows):
  """eval_microbatch only changes how many rows go through the model at a time."""
  from melgenre_jax.input_spec import InputSpec  # pylint: disable=g-import-not-at-top
  config = _config()
  mesh = parallel.create_mesh()
  state, _ = _state_and_step(config, mesh)
  inputs = parallel.global_batch(_batch(config, n=rows), mesh)['inputs']
  pre = InputSpec.from_config(config).device_preprocess()
  whole = steps.make_predict_step(mesh, state.apply_fn, pre, microbatch=0)
  micro = steps.make_predict_step(mesh, state.apply_fn, pre, microbatch=4)
  expected = np.asarray(whole(state.variables(), inputs))
  np.testing.assert_allclose(np.asarray(micro(state.variables(), inputs)), expected,
                             rtol=1e-5, atol=1e-6)
  assert expected.shape == (rows, NUM_CLASSES)


def test_microbatch_auto_is_cpu_only():
  assert steps.resolve_microbatch(-1, 'cpu') == 8
  assert steps.resolve_microbatch(-1, 'gpu') == 0
  assert steps.resolve_microbatch(-1, 'tpu') == 0
  assert steps.resolve_microbatch(3, 'gpu') == 3


def test_non_finite_step_is_not_applied():
  config = _config()
  mesh = parallel.create_mesh()
  state, step = _state_and_step(config, mesh)
  batch = parallel.global_batch(_batch(config), mesh)
  state, m = step(state, batch)
  assert bool(m['finite'])
  before = jax.tree.map(np.asarray, state.params)
  poisoned = _batch(config)
  poisoned['inputs'][3] = np.nan  # one NaN clip poisons the loss and every gradient
  state, m = step(state, parallel.global_batch(poisoned, mesh))
  assert not bool(m['finite'])
  after = jax.tree.map(np.asarray, state.params)
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_indivisible_batch_names_both_numbers():
  with pytest.raises(ValueError, match=r'batch_size=7 .*\(2\)'):
    parallel.check_batch_divisible(7)


def test_kernel_mask_selects_kernels_only():
  params = {'Conv_0': {'kernel': 1, 'bias': 2}, 'BatchNorm_0': {'scale': 3, 'bias': 4},
            'cell': {'ii': {'kernel': 5}}}
  mask = schedules.kernel_mask(params)
  assert mask == {'Conv_0': {'kernel': True, 'bias': False},
                  'BatchNorm_0': {'scale': False, 'bias': False},
                  'cell': {'ii': {'kernel': True}}}


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  result = train.train_and_evaluate(_config(**{'features.normalize': True}), workdir)
  return workdir, result


@pytest.mark.slow
def test_training_run_leaves_checkpoints_metrics_and_plots(trained_workdir):
  workdir, result = trained_workdir
  for name in ('learning_rate.png', 'training_curves.png', 'metrics.json',
               'metrics.csv', 'config.json', 'dataset.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  history = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert [r['epoch'] for r in history] == [1, 2]
  for row in history:
    assert 0 <= row['val_song_accuracy'] <= 1 and np.isfinite(row['train_loss'])
  assert result['final_step'] == history[-1]['step']
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                 if d.isdigit())
  assert steps[-1] == result['final_step']
  # Per-band statistics of the training split were computed and checkpointed.
  variables = inference.load_for_inference(_config(**{'features.normalize': True}),
                                           workdir).variables
  assert np.asarray(variables.feature_mean).std() > 0 and (np.asarray(variables.feature_std) > 0).all()


@pytest.mark.slow
def test_rerun_resumes_instead_of_restarting(trained_workdir):
  workdir, result = trained_workdir
  again = train.train_and_evaluate(_config(**{'features.normalize': True}), workdir)
  assert again['final_step'] == result['final_step']
  history = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert len(history) == 2  # nothing retrained


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_predictions(trained_workdir, tmp_path):
  workdir, _ = trained_workdir
  config = _config(**{'num_epochs': 3, 'schedule.stage_ends': (1, 3),
                      'features.normalize': True})
  # A run that restores the checkpoint and trains one more epoch twice from the
  # same state must land on identical parameters: restore is exact.
  import shutil
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  shutil.copytree(workdir, a)
  shutil.copytree(workdir, b)
  ra = train.train_and_evaluate(config, a)
  rb = train.train_and_evaluate(config, b)
  assert ra['final_step'] == rb['final_step'] > 0
  assert ra['val_loss'] == rb['val_loss']


def _train_mode_probabilities(config, model, inputs):
  """Predictions with BatchNorm on the batch's own statistics (training mode, no dropout)."""
  from melgenre_jax import models  # pylint: disable=g-import-not-at-top
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  model_config.dropout = 0.0
  net = models.create_model(model_config, len(model.genres))
  v = jax.device_get(model.variables)
  spec = model.spec.device_preprocess()(inputs, v.feature_mean, v.feature_std)
  logits, _ = net.apply({'params': v.params, 'batch_stats': v.batch_stats}, spec, train=True,
                        mutable=['batch_stats'])
  return np.asarray(jax.nn.softmax(logits, -1))


@pytest.mark.slow
@pytest.mark.parametrize('recompute', [16, 0])
def test_small_set_validation_reads_the_model_from_epoch_one(tmp_path, recompute):
  """~10 steps an epoch at BatchNorm momentum 0.99: recomputed statistics make
  evaluation agree with the model's own (training-mode) predictions; the stale
  running averages (recompute 0, the control) do not."""
  from melgenre_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = _config(**{'data.synthetic.songs_per_genre': 12, 'num_epochs': 1,
                      'schedule.stage_ends': (1,), 'schedule.stage_start_lrs': (3e-3,),
                      'schedule.stage_end_lrs': (3e-3,), 'bn_recompute_batches': recompute})
  assert config.model.batchnorm_momentum == 0.99
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  dataset = input_pipeline.load_dataset(config, workdir)
  assert 8 <= input_pipeline.steps_per_epoch(len(dataset.train), config.batch_size) <= 12
  model = inference.load_for_inference(config, workdir)
  segments = dataset.validation
  evaluated = model.predict(np.asarray(segments.inputs))
  own = _train_mode_probabilities(config, model, np.asarray(segments.inputs))
  agreement = float(np.mean(evaluated.argmax(-1) == own.argmax(-1)))
  gap = float(np.abs(evaluated - own).sum(-1).mean() / 2)  # mean total-variation distance
  labels = np.asarray(segments.labels)
  acc_eval = float(np.mean(evaluated.argmax(-1) == labels))
  acc_own = float(np.mean(own.argmax(-1) == labels))
  print(f'recompute={recompute}: agreement {agreement:.2f}, TV {gap:.3f}, '
        f'accuracy eval {acc_eval:.2f} vs training-mode {acc_own:.2f}')
  if recompute:
    assert agreement >= 0.8 and gap < 0.1 and abs(acc_eval - acc_own) <= 0.15
  else:
    assert agreement < 0.8 or gap > 0.2


def test_pooled_batch_statistics_are_those_of_all_rows():
  rng = np.random.default_rng(0)
  rows = [rng.normal(3.0, 2.0, (8, 5)), rng.normal(-1.0, 0.5, (8, 5))]
  per_batch = [{'block': {'BatchNorm_0': {'mean': r.mean(0), 'var': r.var(0)}}} for r in rows]
  pooled = steps.pool_batch_stats(per_batch)['block']['BatchNorm_0']
  both = np.concatenate(rows)
  np.testing.assert_allclose(pooled['mean'], both.mean(0), rtol=1e-5)
  np.testing.assert_allclose(pooled['var'], both.var(0), rtol=1e-5)


def test_ema_follows_the_weights_and_is_what_variables_give():
  config = _config(**{'model.dropout': 0.0, 'ema_decay': 0.9})
  mesh = parallel.create_mesh()
  state, step = _state_and_step(config, mesh, tx=optax.sgd(0.05))
  start = jax.tree.map(np.asarray, state.params)
  jax.tree.map(np.testing.assert_array_equal, start, jax.device_get(state.ema_params))
  ema = start
  for i in range(3):
    d = min(0.9, (1 + i) / (10 + i))
    state, _ = step(state, parallel.global_batch(_batch(config, seed=i), mesh))
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema,  # noqa: B023
                       jax.device_get(state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(state.ema_params), ema)
  assert not np.allclose(jax.tree.leaves(ema)[0], jax.tree.leaves(jax.device_get(state.params))[0])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.variables().params),
               jax.device_get(state.ema_params))
  plain, _ = _state_and_step(_config(), mesh)
  assert plain.ema_params is None


def test_ema_one_and_two_devices_give_the_same_average():
  config = _config(**{'model.dropout': 0.0, 'ema_decay': 0.5})
  out = [jax.tree.leaves(jax.device_get(state.ema_params))
         for state in _two_sgd_steps_on_one_and_two_devices(config)]
  for a, b in zip(*out):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('smoothing', [0.0, 0.2])
def test_label_smoothing_gives_the_smoothed_cross_entropy(smoothing):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from melgenre_jax import models  # pylint: disable=g-import-not-at-top
  from melgenre_jax.input_spec import InputSpec  # pylint: disable=g-import-not-at-top
  config = _config(**{'model.dropout': 0.0, 'optim.label_smoothing': smoothing})
  mesh = parallel.create_mesh(jax.devices()[:1])
  state, step = _state_and_step(config, mesh, tx=optax.sgd(0.0))
  batch = _batch(config)
  spec = InputSpec.from_config(config).device_preprocess()(
      jnp.asarray(batch['inputs']), state.feature_mean, state.feature_std)
  logits, _ = models.create_model(config.model, NUM_CLASSES).apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, spec, train=True,
      mutable=['batch_stats'])
  logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
  hit = logp[np.arange(len(logp)), batch['label']]
  expected = -np.mean((1 - smoothing) * hit + smoothing * logp.mean(-1))
  _, m = step(state, parallel.global_batch(batch, mesh))  # donates state
  np.testing.assert_allclose(float(m['loss']), expected, rtol=1e-4)


@pytest.mark.slow
def test_ema_run_restores_the_average_for_inference(tmp_path):
  config = _config(**{'ema_decay': 0.8})
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  model = inference.load_for_inference(config, workdir)
  from melgenre_jax import checkpointing  # pylint: disable=g-import-not-at-top
  manager = checkpointing.create_manager(workdir, read_only=True)
  step = inference.checkpoint_step(workdir)
  saved = checkpointing.restore_parts(manager, step, {
      'params': jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                             model.variables.params),
      'ema_params': jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 model.variables.params)})
  manager.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(model.variables.params),
               saved['ema_params'])
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(saved['params']), jax.tree.leaves(saved['ema_params'])))
