"""Distillation (train/distill.py): a teacher's per-song targets as an extra loss on the CRNN."""

import json
import os

import jax
import numpy as np
import optax
import pytest
import scipy.signal

from configs import tiny
from melgenre_jax import inference
from melgenre_jax import schedules
from melgenre_jax import steps
from melgenre_jax import train
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import ConfigError
from melgenre_jax.runtime import parallel
from melgenre_jax.train import distill


def _student_config(teacher: str, **overrides):
  config = tiny.get_config()
  config.distill.teacher = teacher
  config.model.distill_outputs = 2 * int(config.model.lstm_sizes[-1])  # the tiny teacher's embedding
  config.update_from_flattened_dict(overrides)
  return config


def test_check_refuses_bad_settings(tiny_run_dir):
  with pytest.raises(ConfigError, match='distill_outputs'):
    distill.check(_student_config(tiny_run_dir, **{'model.distill_outputs': 0}))
  with pytest.raises(ConfigError, match='distill.target'):
    distill.check(_student_config(tiny_run_dir, **{'distill.target': 'logits'}))
  with pytest.raises(ConfigError, match='distill.weight'):
    distill.check(_student_config(tiny_run_dir, **{'distill.weight': -1.0}))
  config = _student_config(tiny_run_dir)
  config.model.name = 'musicnn'
  with pytest.raises(ConfigError, match='model.name=crnn'):
    distill.check(config)
  distill.check(_student_config(tiny_run_dir))  # the good one passes


def test_targets_are_the_teachers_song_mean_embeddings_and_cached(tiny_run_dir, tmp_path):
  config = _student_config(tiny_run_dir)
  teacher = inference.load_for_inference(workdir_lib.load_workdir_config(tiny_run_dir),
                                         tiny_run_dir)
  rng = np.random.default_rng(0)
  spec = teacher.spec
  waves = [rng.standard_normal(n).astype(np.float32) * 0.1
           for n in (spec.segment_samples, 3 * spec.segment_samples)]
  rows = [distill.windows_of(teacher, w) for w in waves]
  assert [len(r) for r in rows] == [1, 3]
  song_of_row = np.repeat([0, 1], [1, 3])
  got = distill.targets_of(teacher, np.concatenate(rows), song_of_row, 2, 'embedding')
  want = np.stack([teacher.embed(r).mean(axis=0) for r in rows])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  from melgenre_jax.data.songs import Song  # pylint: disable=g-import-not-at-top
  songs = [Song(key=f'synthetic/rock/{i:04d}', path='', genre='rock') for i in range(3)]
  first = distill.song_targets(config, songs, str(tmp_path))
  path = distill.cache_path(str(tmp_path), config)
  with np.load(path) as f:
    assert sorted(f['keys'].tolist()) == sorted(s.key for s in songs)
  np.testing.assert_array_equal(distill.song_targets(config, songs[::-1], str(tmp_path)),
                                first[::-1])


def test_the_distill_loss_moves_the_student_towards_the_targets():
  """The same batch with and without targets: only the distill head's loss term differs."""
  config = _student_config('unused', **{'model.dropout': 0.0})
  mesh = parallel.create_mesh()
  tx = schedules.create_optimizer(config, schedules.create_learning_rate_schedule(
      config.schedule, steps_per_epoch=10))
  def fresh_state():  # the step donates its state: each use starts from an equal fresh one
    return steps.build_state(config, 4, mesh, tx, jax.random.PRNGKey(0))

  assert 'distill_head' in fresh_state().params
  step = steps.make_train_step(mesh, config, 4)
  samples = int(config.audio.segment_seconds * config.audio.sample_rate)
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.standard_normal((8, samples)).astype(np.float32) * 0.1,
           'label': (np.arange(8) % 4).astype(np.int32)}
  teacher = rng.standard_normal((8, config.model.distill_outputs)).astype(np.float32)
  _, plain = step(fresh_state(), parallel.global_batch(batch, mesh))
  losses = []
  s = fresh_state()
  for _ in range(8):
    s, m = step(s, parallel.global_batch({**batch, 'teacher': teacher}, mesh))
    losses.append(float(m['loss']))
  assert losses[0] > float(plain['loss']) + 0.5  # MSE to unit-variance targets adds ~1
  assert losses[-1] < losses[0]


@pytest.mark.slow
def test_a_distilled_run_trains_predicts_and_resumes_like_any_run(tiny_run_dir, tmp_path):
  workdir = str(tmp_path / 'student')
  config = _student_config(tiny_run_dir)
  train.train_and_evaluate(config, workdir)
  cache_dir = os.path.join(workdir, 'cache')
  cached = [f for f in os.listdir(cache_dir) if f.startswith('teacher_')]
  assert len(cached) == 1
  with open(workdir_lib.path(workdir, workdir_lib.DATASET)) as f:
    train_keys = json.load(f)['splits']['train']
  with np.load(os.path.join(cache_dir, cached[0])) as f:
    assert sorted(f['keys'].tolist()) == sorted(train_keys)  # training songs only
  model = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  assert 'distill_head' in model.variables.params
  rows = np.zeros((2,) + model.spec.input_shape, np.float32)
  probs = model.predict(rows)
  assert probs.shape == (2, len(model.genres))
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------
# A consistent teacher (config.distill.consistent): it runs in the train step.


def _consistent_config(teacher: str, **overrides):
  """A student at another sample rate than the tiny teacher (8 kHz): the step resamples."""
  config = _student_config(teacher, **{'distill.consistent': True, 'distill.target': 'tags',
                                       'model.dropout': 0.0, 'audio.sample_rate': 11025})
  config.model.distill_outputs = len(distill.teacher_model(config).genres)
  config.update_from_flattened_dict(overrides)
  return config


def _waves(config, n=8, seed=0):
  samples = int(config.audio.segment_seconds * config.audio.sample_rate)
  t = np.arange(samples) / config.audio.sample_rate
  rng = np.random.default_rng(seed)
  tones = np.sin(2 * np.pi * rng.uniform(100, 2000, (n, 1)) * t)
  return (0.3 * tones + 0.05 * rng.standard_normal((n, samples))).astype(np.float32)


def test_consistent_needs_the_tags_target(tiny_run_dir):
  config = _student_config(tiny_run_dir, **{'distill.consistent': True})
  with pytest.raises(ConfigError, match='distill.target=tags'):
    distill.check(config)
  with pytest.raises(ConfigError, match='features.where=device'):
    distill.check(_consistent_config(tiny_run_dir, **{'features.where': 'host'}))
  config = _consistent_config(tiny_run_dir)
  with pytest.raises(ConfigError, match='distill_outputs='):
    distill.step_teacher(_consistent_config(
        tiny_run_dir, **{'model.distill_outputs': config.model.distill_outputs + 1}))
  distill.check(config)  # the good one passes
  assert distill.train_targets(config, [], 'unused') is None  # nothing cached per song


def test_the_step_teacher_hears_the_students_audio_resampled(tiny_run_dir):
  """In-step outputs = the teacher's own predictions on scipy-resampled audio."""
  config = _consistent_config(tiny_run_dir)
  teacher = distill.step_teacher(config)
  model = distill.teacher_model(config)
  waves = _waves(config)
  got = np.asarray(jax.jit(steps.teacher_outputs, static_argnums=2)(
      teacher, waves, config.audio.sample_rate))
  resampled = scipy.signal.resample(waves.astype(np.float64), model.spec.segment_samples, axis=-1)
  np.testing.assert_allclose(got, model.predict(resampled.astype(np.float32)), atol=2e-5)
  assert got.shape == (8, config.model.distill_outputs)


def _step_and_state(config, mesh, teacher):
  tx = optax.sgd(0.05)
  state = steps.build_state(config, 4, mesh, tx, jax.random.PRNGKey(0))
  return state, steps.make_train_step(mesh, config, 4, teacher=teacher)


def test_the_consistent_step_is_the_fixed_step_with_the_teachers_outputs(tiny_run_dir):
  """Without mixup, the in-step targets are exactly the teacher's outputs on the batch."""
  config = _consistent_config(tiny_run_dir)
  teacher = distill.step_teacher(config)
  waves = _waves(config)
  batch = {'inputs': waves, 'label': (np.arange(8) % 4).astype(np.int32)}
  soft = np.asarray(steps.teacher_outputs(teacher, waves, config.audio.sample_rate))
  mesh = parallel.create_mesh()
  state, step = _step_and_state(config, mesh, teacher)
  _, consistent = step(state, parallel.global_batch(batch, mesh))
  state, step = _step_and_state(config, mesh, None)
  _, fixed = step(state, parallel.global_batch({**batch, 'teacher': soft}, mesh))
  np.testing.assert_allclose(float(consistent['loss']), float(fixed['loss']), rtol=1e-5)
  state, step = _step_and_state(config, mesh, None)
  _, plain = step(state, parallel.global_batch(batch, mesh))
  assert float(consistent['loss']) > float(plain['loss']) + 0.1  # the distill term is there


def test_the_consistent_step_is_the_same_on_one_and_two_devices(tiny_run_dir):
  config = _consistent_config(tiny_run_dir)
  teacher = distill.step_teacher(config)
  out = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.create_mesh(devices)
    state, step = _step_and_state(config, mesh, teacher)
    for i in range(2):
      batch = {'inputs': _waves(config, seed=i), 'label': (np.arange(8) % 4).astype(np.int32)}
      state, _ = step(state, parallel.global_batch(batch, mesh))
    out.append(jax.tree.leaves(jax.tree.map(np.asarray, (state.params, state.batch_stats))))
  for a, b in zip(*out):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_consistent_distilled_run_with_mixup_trains_and_predicts(tiny_run_dir, tmp_path):
  workdir = str(tmp_path / 'student')
  config = _consistent_config(tiny_run_dir, **{'augment.mixup_alpha': 0.3})
  train.train_and_evaluate(config, workdir)
  cache_dir = os.path.join(workdir, 'cache')
  assert not [f for f in os.listdir(cache_dir) if f.startswith('teacher_')]  # nothing cached
  model = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  assert 'distill_head' in model.variables.params
  probs = model.predict(np.zeros((2,) + model.spec.input_shape, np.float32))
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
