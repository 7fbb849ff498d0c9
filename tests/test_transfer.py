"""Starting a run from another run (config.init_from) and fine-tuning it (config.finetune)."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from melgenre_jax import checkpointing
from melgenre_jax import inference
from melgenre_jax import schedules
from melgenre_jax import steps
from melgenre_jax import train
from melgenre_jax.errors import ConfigError
from melgenre_jax.runtime import parallel
from melgenre_jax.train import transfer


def _config(**overrides):
  config = tiny.get_config()
  config.update_from_flattened_dict(overrides)
  return config


def _flat(tree):
  return {'/'.join(k): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


# ----------------------------------------------------------------------------
# Finding and checking the source.


def test_source_is_a_workdir_or_a_checkpoint_folder(tiny_run_dir):
  source = transfer.resolve_source(tiny_run_dir)
  assert source.workdir == os.path.abspath(tiny_run_dir) and source.step is None
  step = checkpointing.complete_steps(tiny_run_dir)[-1]
  folder = os.path.join(tiny_run_dir, 'checkpoints', str(step))
  source = transfer.resolve_source(folder)
  assert source.workdir == os.path.abspath(tiny_run_dir) and source.step == step


@pytest.mark.parametrize('where', ['missing', 'not_a_run'])
def test_bad_source_names_what_to_give(tmp_path, where):
  path = str(tmp_path / 'nothing') if where == 'missing' else str(tmp_path)
  with pytest.raises(ConfigError, match='init_from.*checkpoint'):
    transfer.resolve_source(path)


def test_other_front_end_is_refused_naming_each_field(tiny_run_dir, tmp_path):
  config = _config(**{'init_from': tiny_run_dir, 'audio.sample_rate': 16000,
                      'features.n_mels': 40})
  with pytest.raises(ConfigError) as e:
    transfer.check_before_training(config, str(tmp_path))
  message = str(e.value)
  assert 'audio.sample_rate: source has 8000, this run has 16000' in message
  assert 'features.n_mels: source has 32, this run has 40' in message
  assert 'features.n_fft' not in message


@pytest.mark.parametrize('field,value', [('freeze_backbone_epochs', -2),
                                         ('backbone_lr_multiplier', float('nan')),
                                         ('backbone_lr_multiplier', -0.1)])
def test_bad_finetune_values_are_refused(field, value, tmp_path):
  config = _config()
  config.finetune[field] = value
  with pytest.raises(ConfigError, match=f'finetune.{field}'):
    transfer.check_before_training(config, str(tmp_path))


# ----------------------------------------------------------------------------
# The merge.


def test_merge_loads_matching_paths_and_shapes_only():
  fresh = {'params': {'conv': {'kernel': np.zeros((3, 3)), 'bias': np.zeros(3)},
                      'wide': {'kernel': np.zeros((4, 2))},
                      'head': {'kernel': np.zeros((2, 3)), 'bias': np.zeros(3)}}}
  source = {'params': {'conv': {'kernel': np.ones((3, 3)), 'bias': np.ones(3)},
                       'wide': {'kernel': np.ones((4, 5))},
                       'head': {'kernel': np.arange(6.).reshape(2, 3), 'bias': np.arange(3.)}}}
  report = transfer.MergeReport()
  out = transfer.merge(fresh, source, None, report)
  np.testing.assert_array_equal(out['params']['conv']['kernel'], np.ones((3, 3)))
  np.testing.assert_array_equal(out['params']['wide']['kernel'], np.zeros((4, 2)))
  np.testing.assert_array_equal(out['params']['head']['bias'], np.zeros(3))
  assert sorted(report.loaded) == ['params/conv/bias', 'params/conv/kernel']
  assert report.skipped == ['params/wide/kernel (source (4, 5), this run (4, 2))']
  assert sorted(report.reinitialized) == ['params/head/bias', 'params/head/kernel']

  # Same labels in another order: the head is kept, its columns follow the labels.
  perm = transfer.head_permutation(['a', 'b', 'c'], ['c', 'a', 'b'])
  np.testing.assert_array_equal(perm, [2, 0, 1])
  out = transfer.merge(fresh, source, perm, transfer.MergeReport())
  np.testing.assert_array_equal(out['params']['head']['bias'], [2., 0., 1.])
  np.testing.assert_array_equal(out['params']['head']['kernel'][:, 0], [2., 5.])
  assert transfer.head_permutation(['a', 'b'], ['a', 'c']) is None


# ----------------------------------------------------------------------------
# The fine-tuning optimizer.


def _two_part_params():
  return {'head': {'kernel': jnp.ones((2, 2))}, 'branch': {'kernel': jnp.ones((2, 2))}}


def _updates_per_step(finetune, steps_per_epoch=2, n=4):
  tx = schedules.with_finetune(finetune, optax.sgd, optax.constant_schedule(0.1), steps_per_epoch)
  params = _two_part_params()
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = tx.init(params)
  out = []
  for _ in range(n):
    updates, opt_state = tx.update(grads, opt_state, params)
    out.append(jax.tree.map(lambda u: float(u[0, 0]), updates))
  return out


def test_backbone_frozen_for_an_epoch_then_trains():
  config = _config(**{'finetune.freeze_backbone_epochs': 1})
  updates = _updates_per_step(config.finetune)
  assert [u['branch']['kernel'] for u in updates] == pytest.approx([0, 0, -0.1, -0.1])
  assert [u['head']['kernel'] for u in updates] == pytest.approx([-0.1] * 4)


def test_backbone_learning_rate_multiplier_and_whole_run_freeze():
  config = _config(**{'finetune.backbone_lr_multiplier': 0.25})
  updates = _updates_per_step(config.finetune)
  assert [u['branch']['kernel'] for u in updates] == pytest.approx([-0.025] * 4)
  config = _config(**{'finetune.freeze_backbone_epochs': -1})
  updates = _updates_per_step(config.finetune)
  assert [u['branch']['kernel'] for u in updates] == pytest.approx([0] * 4)
  assert [u['head']['kernel'] for u in updates] == pytest.approx([-0.1] * 4)


def test_fine_tuning_step_one_and_two_devices_give_the_same_update():
  """As test_train's genre-step test: plain SGD (scale-sensitive), here split in two groups."""
  from tests.test_train import _batch  # pylint: disable=g-import-not-at-top
  config = _config(**{'model.dropout': 0.0, 'finetune.backbone_lr_multiplier': 0.5})
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.create_mesh(devices)
    tx = schedules.with_finetune(config.finetune, optax.sgd, optax.constant_schedule(0.05))
    state = steps.build_state(config, 4, mesh, tx, jax.random.PRNGKey(0))
    step = steps.make_train_step(mesh, config, 4)
    for i in range(2):
      state, _ = step(state, parallel.global_batch(_batch(config, seed=i), mesh))
    results.append(jax.tree.map(np.asarray, (state.params, state.batch_stats)))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Whole runs.


def test_run_on_other_genres_starts_from_the_source_backbone(tiny_run_dir, tmp_path):
  """3 of the source's 4 genres: head re-initialised, backbone loaded (and kept frozen)."""
  config = _config(**{'init_from': tiny_run_dir, 'data.synthetic.num_genres': 3,
                      'finetune.freeze_backbone_epochs': -1})
  workdir = str(tmp_path / 'finetuned')
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'init_from.json')) as f:
    record = json.load(f)
  assert record['head'].startswith('re-initialised')
  assert record['source_workdir'] == os.path.abspath(tiny_run_dir)
  assert 'params/branch_a/ConvBlock_0/Conv_0/kernel' in record['loaded']
  assert 'params/head/kernel' in record['reinitialized'] and not record['skipped']

  source = inference.load_for_inference(tiny.get_config(), tiny_run_dir)
  tuned = inference.load_for_inference(config, workdir)
  theirs, ours = _flat(source.variables.params), _flat(tuned.variables.params)
  assert ours['head/kernel'].shape == (theirs['head/kernel'].shape[0], 3)
  for name, value in theirs.items():
    if not name.startswith('head/'):
      np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_weight_average_starts_from_the_source_weights(tiny_run_dir, tmp_path):
  """With config.ema_decay the average is its own copy of the loaded weights (the step donates both)."""
  config = _config(**{'init_from': tiny_run_dir, 'data.synthetic.num_genres': 3,
                      'finetune.freeze_backbone_epochs': -1, 'ema_decay': 0.9})
  workdir = str(tmp_path / 'averaged')
  train.train_and_evaluate(config, workdir)
  source = inference.load_for_inference(tiny.get_config(), tiny_run_dir)
  averaged = inference.load_for_inference(config, workdir)  # inference reads the average
  theirs, ours = _flat(source.variables.params), _flat(averaged.variables.params)
  for name, value in theirs.items():
    if not name.startswith('head/'):  # a frozen backbone's average is the source's weights
      np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_fine_tuning_resume_is_bit_exact(tiny_run_dir, tmp_path):
  """Stopped at the epoch where the backbone unfreezes, resumed: same weights as straight."""
  overrides = {'init_from': tiny_run_dir, 'data.synthetic.num_genres': 3,
               'finetune.freeze_backbone_epochs': 1, 'finetune.backbone_lr_multiplier': 0.5,
               'num_epochs': 2}
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(_config(**overrides), straight)
  resumed = str(tmp_path / 'resumed')
  steps_per_epoch = checkpointing.complete_steps(straight)[0]
  train.train_and_evaluate(_config(**overrides, **{'debug.max_steps': steps_per_epoch}), resumed)
  assert checkpointing.complete_steps(resumed) == [steps_per_epoch]
  train.train_and_evaluate(_config(**overrides), resumed)
  a = inference.load_for_inference(_config(**overrides), straight, step=2 * steps_per_epoch)
  b = inference.load_for_inference(_config(**overrides), resumed, step=2 * steps_per_epoch)
  for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
