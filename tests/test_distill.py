"""Distillation (train/distill.py): a teacher's per-song targets as an extra loss on the CRNN."""

import json
import os

import jax
import numpy as np
import pytest

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
