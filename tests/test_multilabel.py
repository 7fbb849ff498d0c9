"""Multi-label tagging (config.task='multilabel'): tags in, sigmoids, ROC-AUC/PR-AUC out."""

import contextlib
import io
import json
import os

import jax
import numpy as np
import optax
import pytest
import soundfile as sf
from sklearn import metrics as sk_metrics

from configs import tiny
from melgenre_jax import config_checks
from melgenre_jax import metrics
from melgenre_jax import steps
from melgenre_jax import train
from melgenre_jax.data import input_pipeline
from melgenre_jax.data import sources
from melgenre_jax.data import synthetic
from melgenre_jax.data.synthetic import render
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import DataError
from melgenre_jax.modes import dispatch
from melgenre_jax.runtime import parallel

NUM_TAGS = 5


def _config(**overrides):
  config = tiny.get_config()
  config.task = 'multilabel'
  config.data.synthetic.tagged = True
  config.update_from_flattened_dict(overrides)
  return config


# --- Tagged manifests.


def _manifest(tmp_path, rows):
  csv = tmp_path / 'songs.csv'
  csv.write_text('path,label\n' + ''.join(f'{p},{l}\n' for p, l in rows))
  return str(csv)


def test_manifest_tags_parse(tmp_path):
  path = _manifest(tmp_path, [('a.wav', 'rock;guitar; fast'), ('b.wav', 'jazz'),
                              ('c.wav', '"rock;rock;slow"')])
  songs = {s.key: s for s in sources.read_manifest(path, task='multilabel')}
  assert songs['a.wav'].tags == ('rock', 'guitar', 'fast')
  assert songs['a.wav'].genre == 'rock'  # the first tag: what splits stratify on
  assert songs['b.wav'].tags == () and songs['b.wav'].genre == 'jazz'  # a single-tag song
  assert songs['c.wav'].tags == ('rock', 'slow')
  config = _config(**{'data.source': 'manifest'})
  assert sources.tag_names(config, list(songs.values())) == [
      'fast', 'guitar', 'jazz', 'rock', 'slow']


def test_genre_run_refuses_tagged_manifest(tmp_path):
  path = _manifest(tmp_path, [('a.wav', 'rock;guitar'), ('b.wav', 'jazz')])
  with pytest.raises(DataError, match='--config.task=multilabel'):
    sources.read_manifest(path)
  # Single-label manifests read exactly as before.
  plain = _manifest(tmp_path, [('a.wav', 'rock'), ('b.wav', 'jazz')])
  assert [s.tags for s in sources.read_manifest(plain)] == [(), ()]


def test_multi_hot_labels_and_summary():
  songs = [synthetic.list_synthetic_songs(1, 2, tagged=True)[i] for i in (0, 1)]
  index = {t: i for i, t in enumerate(['ambient', 'blues', 'bright', 'straight', 'swung'])}
  labels = input_pipeline.song_label_array(songs, index, multilabel=True)
  assert labels.dtype == np.float32 and labels.shape == (2, 5)
  for row, song in zip(labels, songs):
    assert {t for t, i in index.items() if row[i] == 1} == set(song.tags)
  genre = input_pipeline.song_label_array(songs, {'ambient': 0, 'blues': 1}, multilabel=False)
  np.testing.assert_array_equal(genre, [0, 1])


# --- Synthetic tags.


def test_synthetic_tags_follow_the_rendered_brightness():
  songs = synthetic.list_synthetic_songs(12, genres=('jazz', 'rock'), tagged=True)
  assert {s.genre for s in songs} == {'jazz', 'rock'}
  assert [s.key for s in songs][:1] == ['synthetic/jazz/0000']  # canonical order
  seen_bright = set()
  for s in songs:
    assert s.tags[0] == s.genre
    assert s.tags[1] == ('swung' if s.genre == 'jazz' else 'straight')
    # The renderer's own draw: synthesize_style builds its context from the first draw.
    captured = {}
    original = render.Ctx

    def spy(**kwargs):
      captured.update(kwargs)
      return original(**kwargs)

    render.Ctx = spy
    try:
      synthetic.synthesize_song(s.key, 4000, 0.2)
    finally:
      render.Ctx = original
    bright = captured['bright'] > render.BRIGHT_ABOVE
    assert ('bright' in s.tags) == bright, (s.key, captured['bright'])
    seen_bright.add(bright)
  assert seen_bright == {True, False}  # the tag varies from song to song
  again = synthetic.list_synthetic_songs(12, genres=('rock', 'jazz'), tagged=True)
  assert again == songs  # deterministic, whatever order the names come in
  assert all(s.tags == () for s in synthetic.list_synthetic_songs(2, 3))


@pytest.mark.parametrize('genres,match', [(('jazz', 'polka'), 'polka'), (('jazz',), 'at least 2'),
                                          (('jazz', 'jazz'), 'at least 2')])
def test_synthetic_genre_names_are_checked(genres, match):
  with pytest.raises(ConfigError, match=match):
    synthetic.list_synthetic_songs(2, genres=genres)


def test_discover_passes_synthetic_fields():
  config = _config(**{'data.synthetic.genres': ('metal', 'funk', 'ambient')})
  songs = sources.discover_songs(config)
  assert sources.genre_names(config, songs) == ['ambient', 'funk', 'metal']
  tags = sources.tag_names(config, songs)
  assert tags[:3] == ['ambient', 'funk', 'metal']
  assert set(tags[3:]) <= {'bright', 'straight', 'swung'} and tags[3:] == sorted(tags[3:])


# --- Metrics equal scikit-learn's.


def test_tag_scores_equal_sklearn_with_ties():
  rng = np.random.default_rng(0)
  for trial in range(20):
    n, k = int(rng.integers(5, 80)), 6
    labels = (rng.random((n, k)) < rng.uniform(0.1, 0.6, k)).astype(np.int32)
    labels[:, 0] = 1  # one tag everywhere: not scorable
    scores = np.round(rng.random((n, k)), int(rng.integers(1, 3)))  # many ties
    if trial % 2:
      scores[:, 2] = 0.5  # a constant column: every pair tied
    got = metrics.tag_scores(labels, scores)
    assert np.isnan(got['roc_auc'][0]) and np.isnan(got['pr_auc'][0])
    ok = [j for j in range(k) if 0 < labels[:, j].sum() < n]
    for j in ok:
      np.testing.assert_allclose(
          got['roc_auc'][j], sk_metrics.roc_auc_score(labels[:, j], scores[:, j]), rtol=1e-12)
      np.testing.assert_allclose(
          got['pr_auc'][j], sk_metrics.average_precision_score(labels[:, j], scores[:, j]),
          rtol=1e-12)
    np.testing.assert_allclose(got['roc_auc_macro'], sk_metrics.roc_auc_score(
        labels[:, ok], scores[:, ok], average='macro'), rtol=1e-12)
    np.testing.assert_allclose(got['pr_auc_macro'], sk_metrics.average_precision_score(
        labels[:, ok], scores[:, ok], average='macro'), rtol=1e-12)
    assert got['num_scored'] == len(ok)


# --- The train step.


def _batch(config, n=8, seed=0):
  rng = np.random.default_rng(seed)
  samples = int(config.audio.segment_seconds * config.audio.sample_rate)
  labels = (rng.random((n, NUM_TAGS)) < 0.4).astype(np.float32)
  t = np.arange(samples) / config.audio.sample_rate
  waves = np.stack([sum(np.sin(2 * np.pi * (200 + 500 * j) * t) * 0.3 * y[j]
                        for j in range(NUM_TAGS)) + 0.05 * rng.standard_normal(samples)
                    for y in labels])
  return {'inputs': waves.astype(np.float32), 'label': labels}


def test_multilabel_one_and_two_devices_give_the_same_update():
  """As tests/test_train.py's genre test: plain SGD shows a gradient scaled by the device count."""
  assert jax.device_count() >= 2, 'conftest forces 2 CPU devices'
  config = _config(**{'model.dropout': 0.0})
  params, metric_values = [], []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.create_mesh(devices)
    state = steps.build_state(config, NUM_TAGS, mesh, optax.sgd(0.05), jax.random.PRNGKey(0))
    step = steps.compile_ahead(
        'train', steps.make_train_step(mesh, config, NUM_TAGS), state,
        {'inputs': (8, int(config.audio.segment_seconds * config.audio.sample_rate)),
         'label': (8, NUM_TAGS)}, mesh)
    for i in range(2):
      state, m = step(state, parallel.global_batch(_batch(config, seed=i), mesh))
      assert bool(m['finite'])
    params.append(jax.tree.map(np.asarray, (state.params, state.batch_stats)))
    metric_values.append((float(m['loss']), float(m['accuracy'])))
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(metric_values[0], metric_values[1], rtol=1e-4)


def test_multilabel_loss_is_binary_cross_entropy_and_predict_is_sigmoid():
  config = _config(**{'model.dropout': 0.0})
  mesh = parallel.create_mesh()
  state = steps.build_state(config, NUM_TAGS, mesh, optax.sgd(0.0), jax.random.PRNGKey(1))
  batch = _batch(config)
  from melgenre_jax.input_spec import InputSpec  # pylint: disable=g-import-not-at-top
  pre = InputSpec.from_config(config).device_preprocess()
  p_predict = steps.make_predict_step(mesh, state.apply_fn, pre, multilabel=True)
  probs = np.asarray(p_predict(state.variables(),
                               parallel.global_batch(batch, mesh)['inputs']))
  assert probs.shape == (8, NUM_TAGS)
  assert not np.allclose(probs.sum(axis=1), 1.0)  # independent sigmoids, not a softmax
  # The train step's metrics, in train mode (batch statistics), compared loosely in
  # kind: BCE of probabilities in (0, 1) and a per-tag accuracy in [0, 1].
  step = steps.make_train_step(mesh, config, NUM_TAGS)
  _, m = step(state, parallel.global_batch(batch, mesh))
  assert 0 < float(m['loss']) < 5 and 0 <= float(m['accuracy']) <= 1


# --- Config checks.


def test_config_checks():
  config = _config()
  config_checks.validate(config)
  config.task = 'tags'
  with pytest.raises(ConfigError, match='config.task'):
    config_checks.validate(config)
  config = _config(**{'multilabel.threshold': 1.0})
  with pytest.raises(ConfigError, match='multilabel.threshold'):
    config_checks.validate(config)
  assert 'task' in config_checks.ARCHITECTURE_FIELDS


def test_cv_refuses_multilabel(tmp_path):
  with pytest.raises(ConfigError, match='multilabel'):
    dispatch.run('cv', _config(), str(tmp_path))


def test_selection_score_uses_song_roc_auc():
  history = train.RunHistory()
  history.append({'epoch': 1, 'val_song_roc_auc': 0.7}, evaluated=True)
  history.append({'epoch': 2, 'val_song_roc_auc': float('nan')}, evaluated=True)
  history.append({'epoch': 3, 'val_song_roc_auc': 0.8}, evaluated=True)
  assert [r['best'] for r in history.rows] == [True, False, True]
  assert history.best()['epoch'] == 3


# --- End to end: train, eval, predict.


@pytest.fixture(scope='module')
def tagged_run(tmp_path_factory):
  config = _config(**{'data.synthetic.songs_per_genre': 6})
  workdir = str(tmp_path_factory.mktemp('multilabel_run'))
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


@pytest.mark.slow
def test_tiny_multilabel_run_trains_evaluates_and_predicts(tagged_run, tmp_path):
  config, workdir, result = tagged_run
  assert result['final_step'] > 0 and result['best_val_song_roc_auc'] is not None
  rows = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert {'val_song_roc_auc', 'val_song_pr_auc', 'val_loss'} <= set(rows[-1])
  assert os.path.exists(os.path.join(workdir, 'training_curves.png'))
  info = json.load(open(os.path.join(workdir, 'dataset.json')))
  assert info['task'] == 'multilabel'
  assert info['genres'][:4] == list(synthetic.GENRES[:4])
  assert set(info['genres'][4:]) <= {'bright', 'straight', 'swung'}
  assert not os.path.exists(os.path.join(workdir, 'calibration.json'))

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    report = dispatch.run('eval', None, workdir)
  assert 'ROC-AUC' in out.getvalue()
  saved = json.load(open(os.path.join(workdir, 'eval', 'report.json')))
  assert 'PR-AUC' in open(os.path.join(workdir, 'eval', 'report.md')).read()
  pred = np.load(os.path.join(workdir, 'eval', 'predictions.npz'))
  probs, labels, song_index = pred['segment_probs'], pred['labels'], pred['song_index']
  tags = list(pred['genres'])
  assert labels.shape == probs.shape and tags == info['genres']
  num_songs = len(pred['song_keys'])
  song_probs = np.stack([probs[song_index == i].mean(axis=0) for i in range(num_songs)])
  song_labels = np.stack([labels[song_index == i][0] for i in range(num_songs)])
  for level, (y, p) in {'segment': (labels, probs), 'song': (song_labels, song_probs)}.items():
    scored = [j for j in range(len(tags)) if 0 < y[:, j].sum() < len(y)]
    assert scored, level
    for j, tag in enumerate(tags):
      entry = saved[level]['per_tag'][tag]
      if j in scored:
        np.testing.assert_allclose(entry['roc_auc'], sk_metrics.roc_auc_score(y[:, j], p[:, j]),
                                   rtol=1e-6)
        np.testing.assert_allclose(entry['pr_auc'],
                                   sk_metrics.average_precision_score(y[:, j], p[:, j]),
                                   rtol=1e-6)
      else:
        assert entry['roc_auc'] is None
    np.testing.assert_allclose(saved[level]['roc_auc_macro'], sk_metrics.roc_auc_score(
        y[:, scored], p[:, scored], average='macro'), rtol=1e-6)
    np.testing.assert_allclose(saved[level]['pr_auc_macro'], sk_metrics.average_precision_score(
        y[:, scored], p[:, scored], average='macro'), rtol=1e-6)
  assert report['song']['roc_auc_macro'] == saved['song']['roc_auc_macro']

  wav = str(tmp_path / 'song.wav')
  sf.write(wav, synthetic.synthesize_song('synthetic/jazz/0100', 8000, 3.0), 8000)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = dispatch.run('predict', None, workdir, dispatch.RunOptions(audio=(wav,), top_k=3))
  text = out.getvalue()
  assert 'tags (p >= 0.5):' in text, text
  r = results[0]
  assert r['ok'] and r['status'] == 'ok' and len(r['top_k']) == 3
  song = np.mean(np.asarray(r['segment_probabilities']), axis=0)
  assert r['tags'] == [tags[i] for i in np.argsort(-song, kind='stable') if song[i] >= 0.5]
  np.testing.assert_allclose([t['probability'] for t in r['top_k']], np.sort(song)[::-1][:3],
                             rtol=1e-6)
  csv_path = str(tmp_path / 'p.csv')
  with contextlib.redirect_stdout(io.StringIO()):
    dispatch.run('predict', None, workdir,
                 dispatch.RunOptions(audio=(wav,), output='csv', output_file=csv_path))
  header, row = open(csv_path).read().splitlines()[:2]
  assert header.startswith('path,status,reason,duration_seconds,segments,genre_1,probability_1')
  assert row.split(',')[1] == 'ok' and row.split(',')[5] == r['top_k'][0]['genre']
  for flag in ({'write_tags': 'dry_run'}, {'min_confidence': 0.3}):
    with pytest.raises(ConfigError, match='multilabel'):
      dispatch.run('predict', None, workdir, dispatch.RunOptions(audio=(wav,), **flag))
  with pytest.raises(ConfigError, match='multilabel'):
    dispatch.run('calibrate', None, workdir)

  # The exported function gives the same sigmoid tag scores as the live model.
  from melgenre_jax import inference  # pylint: disable=g-import-not-at-top
  from melgenre_jax.modes import export  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(io.StringIO()):
    export.export_workdir(config, workdir, platforms=('cpu',))
  exported, contract = export.load_exported(os.path.join(workdir, 'export'))
  assert contract['task'] == 'multilabel'
  model = inference.load_for_inference(config, workdir)
  waves = np.stack([synthetic.synthesize_song(f'synthetic/jazz/{i:04d}', 8000, 1.0)
                    for i in (100, 101, 102)])
  np.testing.assert_allclose(exported(waves), model.predict(waves), atol=1e-5)
  assert not np.allclose(model.predict(waves).sum(axis=1), 1.0)  # sigmoids, not a softmax
  np.testing.assert_allclose(export.song_probabilities(exported(waves), contract),
                             model.predict(waves).mean(axis=0), atol=1e-5)
