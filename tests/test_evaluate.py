"""--mode=eval on a trained tiny workdir: the report agrees with its own raw predictions."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from melgenre_jax import workdir as workdir_lib
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import evaluate



@pytest.fixture(scope='module')
def evaluated(tiny_run):
  """The shared tiny training run, evaluated through the CLI with the workdir's own config."""
  workdir = tiny_run
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    report = dispatch.run('eval', None, workdir)
  return workdir, report, out.getvalue()


# ---------------------------------------------------------------- pure parts


def test_build_report_by_hand():
  genres = ['a', 'b', 'c']
  # song 0 (a): segments say a, a, b -> mean a; song 1 (b): b, c -> mean c (0.55), vote b
  probs = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1],
                    [.1, .5, .4], [.1, .1, .8]])
  labels = np.array([0, 0, 0, 1, 1])
  song_index = np.array([0, 0, 0, 1, 1])
  r = evaluate.build_report(probs, labels, song_index, ['s0', 's1'], genres)
  assert r['segment']['accuracy'] == pytest.approx(3 / 5)
  assert r['song']['accuracy'] == pytest.approx(1 / 2)
  assert r['song']['vote_accuracy'] == pytest.approx(1.0)  # ties go to the lower class
  assert r['song']['confusion_matrix'] == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
  # Song level: a has F1 1, b has F1 0, c (predicted, no support) F1 0 -> 1/3.
  assert r['song']['macro_f1'] == pytest.approx(1 / 3)
  assert [s['predicted'] for s in r['songs']] == ['a', 'c']
  assert r['loss'] == pytest.approx(-np.mean(np.log([.8, .6, .2, .5, .1])))


def test_level_report_macro_f1_leaves_out_genres_absent_from_labels_and_predictions():
  r = evaluate.level_report(np.array([0, 0, 1]), np.array([0, 0, 1]), ['a', 'b', 'c'])
  assert r['macro_f1'] == pytest.approx(1.0)  # not 2/3: 'c' is neither label nor prediction
  assert r['per_genre']['c'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 0}
  assert r['confusion_matrix'] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_level_report_accuracy_interval_is_wilsons():
  labels = np.zeros(10, np.int64)
  predictions = np.r_[np.zeros(8, np.int64), np.ones(2, np.int64)]
  r = evaluate.level_report(labels, predictions, ['a', 'b'])
  assert r['accuracy'] == pytest.approx(0.8) and (r['correct'], r['total']) == (8, 10)
  lo, hi = r['accuracy_95ci']  # Wilson's 95% interval of 8/10, computed by hand
  assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)


def test_level_report_of_an_empty_level():
  r = evaluate.level_report(np.zeros(0, np.int64), np.zeros(0, np.int64), ['a', 'b'])
  assert (r['accuracy'], r['accuracy_95ci'], r['macro_f1'], r['total']) == (0.0, [0.0, 0.0], 0.0, 0)
  assert r['confusion_matrix'] == [[0, 0], [0, 0]]


# ---------------------------------------------------------------- the CLI run


@pytest.mark.slow
def test_report_numbers_match_a_recomputation_from_predictions(evaluated):
  workdir, report, _ = evaluated
  raw = np.load(os.path.join(workdir, 'eval', 'predictions.npz'))
  probs, labels, song_index = raw['segment_probs'], raw['labels'], raw['song_index']
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  assert list(raw['genres']) == report['genres']
  num_classes = len(report['genres'])

  seg_pred = probs.argmax(axis=1)
  assert report['segment']['accuracy'] == pytest.approx(skm.accuracy_score(labels, seg_pred))
  assert report['segment']['macro_f1'] == pytest.approx(
      skm.f1_score(labels, seg_pred, average='macro', zero_division=0))
  np.testing.assert_array_equal(
      report['segment']['confusion_matrix'],
      skm.confusion_matrix(labels, seg_pred, labels=range(num_classes)))

  songs = np.unique(song_index)
  song_probs = np.stack([probs[song_index == s].mean(axis=0) for s in songs])
  song_labels = np.array([labels[song_index == s][0] for s in songs])
  song_pred = song_probs.argmax(axis=1)
  assert report['song']['accuracy'] == pytest.approx(skm.accuracy_score(song_labels, song_pred))
  assert report['song']['macro_f1'] == pytest.approx(
      skm.f1_score(song_labels, song_pred, average='macro', zero_division=0))
  cm = np.asarray(report['song']['confusion_matrix'])
  assert cm.sum() == len(songs) == report['num_songs']
  assert np.sum(report['segment']['confusion_matrix']) == len(labels) == report['num_segments']
  np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(song_labels, minlength=num_classes))
  for g, sc in report['song']['per_genre'].items():
    i = report['genres'].index(g)
    assert sc['recall'] == pytest.approx(
        skm.recall_score(song_labels, song_pred, labels=[i], average='macro', zero_division=0))


@pytest.mark.slow
def test_evaluates_the_recorded_test_split_and_the_best_checkpoint(evaluated):
  workdir, report, _ = evaluated
  with open(os.path.join(workdir, 'dataset.json')) as f:
    recorded = json.load(f)['splits']
  raw = np.load(os.path.join(workdir, 'eval', 'predictions.npz'))
  assert report['split'] == 'test' and not report['warnings']
  assert sorted(raw['song_keys']) == sorted(recorded['test'])
  assert not set(raw['song_keys']) & set(recorded['train'])
  assert report['checkpoint']['is_best']
  assert int(raw['step']) == report['checkpoint']['step']


@pytest.mark.slow
def test_writes_readable_files_and_a_table(evaluated):
  workdir, report, stdout = evaluated
  out = os.path.join(workdir, 'eval')
  with open(os.path.join(out, 'report.json')) as f:
    assert json.load(f)['song']['accuracy'] == report['song']['accuracy']
  with open(os.path.join(out, 'report.md')) as f:
    md = f.read()
  assert f"{100 * report['song']['accuracy']:.1f}%" in md
  assert '## Confusion matrix (songs)' in md
  c = report['calibration']
  assert f"song ECE {c['song']['ece_before']:.3f} -> {c['song']['ece_after']:.3f}" in md
  for name in ('confusion_matrix.png', 'confusion_matrix_segments.png', 'reliability.png'):
    with open(os.path.join(out, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert 'song accuracy' in stdout and 'segment accuracy' in stdout
  for genre in report['genres']:
    assert genre in stdout


@pytest.mark.slow
def test_unknown_step_is_refused_with_the_available_ones(evaluated):
  workdir, report, _ = evaluated
  with pytest.raises(ValueError, match='available'):
    evaluate.evaluate_workdir(workdir_lib.load_workdir_config(workdir), workdir, step=999)
