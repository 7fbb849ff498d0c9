"""Temperature scaling: ECE against references, T recovery, accuracy untouched, the workdir flow."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from sklearn import calibration as skc
from sklearn import metrics as skm

from configs import tiny
from melgenre_jax import calibration
from melgenre_jax import inference
from melgenre_jax import metrics as metrics_lib
from melgenre_jax import train
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import input_pipeline
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import eval_format
from melgenre_jax.modes import evaluate
from melgenre_jax.modes import export


def _softmax(z: np.ndarray) -> np.ndarray:
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _overconfident(n: int, num_classes: int = 5, true_t: float = 3.0, seed: int = 0):
  """Labels drawn from softmax(z); the 'model' says softmax(true_t * z)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, num_classes)) * 1.5
  p = _softmax(z)
  labels = np.minimum((rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1), num_classes - 1)
  return _softmax(true_t * z), labels


def _ece_loop(probs, labels, num_bins):
  """Guo et al. (2017), written out: bins (lo, hi], sum of |acc - conf| weighted by share."""
  conf, pred = probs.max(axis=1), probs.argmax(axis=1)
  edges = np.linspace(0, 1, num_bins + 1)
  ece = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (conf > lo) & (conf <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean() - conf[in_bin].mean())
  return ece


# ---------------------------------------------------------------- pure parts


def test_ece_by_hand():
  # conf 0.9 (right, wrong) -> gap |0.5 - 0.9|; conf 0.6 (right, right) -> gap |1 - 0.6|.
  probs = np.array([[.9, .1], [.9, .1], [.4, .6], [.4, .6]])
  labels = np.array([0, 1, 1, 1])
  assert calibration.expected_calibration_error(probs, labels, num_bins=10) == pytest.approx(
      0.5 * 0.4 + 0.5 * 0.4)
  assert calibration.expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_ece_and_bins_match_a_loop_and_sklearn():
  rng = np.random.default_rng(1)
  probs = rng.dirichlet(np.full(4, 0.7), size=500)
  labels = rng.integers(0, 4, size=500)
  for bins in (5, 15):
    assert calibration.expected_calibration_error(probs, labels, bins) == pytest.approx(
        _ece_loop(probs, labels, bins), abs=1e-12)
    got = calibration.reliability_bins(probs, labels, bins)
    full = got['count'] > 0
    acc, conf = skc.calibration_curve(probs.argmax(axis=1) == labels, probs.max(axis=1),
                                      n_bins=bins, strategy='uniform')
    np.testing.assert_allclose(got['accuracy'][full], acc)
    np.testing.assert_allclose(got['confidence'][full], conf)
    assert got['count'].sum() == 500


def test_fit_recovers_the_temperature_of_overconfident_probabilities():
  probs, labels = _overconfident(20000)
  temperature = calibration.fit_temperature(probs, labels)
  assert temperature == pytest.approx(3.0, rel=0.05)
  assert calibration.fit_temperature(probs, labels) == temperature  # deterministic
  # Under-confident the other way round: softmax(z / 2) needs T = 1/2.
  under, labels2 = _overconfident(20000, true_t=0.5, seed=2)
  assert calibration.fit_temperature(under, labels2) == pytest.approx(0.5, rel=0.05)


def test_calibration_lowers_nll_and_ece_on_fitted_and_fresh_data():
  probs, labels = _overconfident(4000)
  temperature = calibration.fit_temperature(probs, labels)
  after = calibration.apply_temperature(probs, temperature)
  assert (calibration.negative_log_likelihood(after, labels)
          <= calibration.negative_log_likelihood(probs, labels))
  assert skm.log_loss(labels, after, labels=range(5)) == pytest.approx(
      calibration.negative_log_likelihood(after, labels))
  fresh, fresh_labels = _overconfident(4000, seed=5)
  before_ece = calibration.expected_calibration_error(fresh, fresh_labels)
  after_ece = calibration.expected_calibration_error(
      calibration.apply_temperature(fresh, temperature), fresh_labels)
  assert after_ece < 0.5 * before_ece


def test_fit_entry_nll_never_worse_than_raw():
  rng = np.random.default_rng(3)
  for _ in range(5):
    probs = rng.dirichlet(np.full(4, 0.3), size=30)
    labels = rng.integers(0, 4, size=30)
    song_index = np.repeat(np.arange(10), 3)
    entry = calibration.fit_entry(probs, labels, song_index, 10)
    assert entry['nll_after'] <= entry['nll_before'] + 1e-9
    assert entry['songs'] == 10 and entry['fitted_on'] == 'validation'


def _songs(n: int, true_t: float, seed: int, segments: int = 3):
  """``n`` songs of ``segments`` equal segment rows, over-confident by ``true_t``."""
  probs, labels = _overconfident(n, true_t=true_t, seed=seed)
  return (np.repeat(probs, segments, axis=0), np.repeat(labels, segments),
          np.repeat(np.arange(n), segments))


@pytest.mark.parametrize('n', [2, 4])
def test_too_few_songs_keep_temperature_one_and_say_why(n):
  probs, labels, song_index = _songs(n, true_t=6.0, seed=n)
  fitted = calibration.fit_temperature(*calibration.songs_of(probs, labels, song_index, n))
  assert fitted != pytest.approx(1.0, abs=0.05)  # a fit would move it
  entry = calibration.fit_entry(probs, labels, song_index, n)
  assert entry['temperature'] == 1.0 and not entry['applied']
  assert entry['fitted_temperature'] == pytest.approx(fitted)
  assert f'{n} validation songs' in entry['reason'] and 'min_songs = 20' in entry['reason']
  assert entry['nll_after'] == pytest.approx(entry['nll_before'])
  json.dumps(entry)  # recordable as it is


def test_fifty_miscalibrated_songs_get_their_temperature():
  probs, labels, song_index = _songs(50, true_t=4.0, seed=11)
  entry = calibration.fit_entry(probs, labels, song_index, 50)
  assert entry['applied'] and entry['reason'] == ''
  assert entry['temperature'] == entry['fitted_temperature'] > 2.0
  assert entry['cross_fitted_gain'] >= calibration.DEFAULT_MIN_NLL_GAIN
  assert entry['nll_after'] < entry['nll_before'] - 0.1
  # The same songs with a lower min_songs and an unreachable gain: T = 1, said why.
  strict = calibration.fit_entry(probs, labels, song_index, 50, min_songs=5, min_gain=10.0)
  assert strict['temperature'] == 1.0 and 'min_nll_gain = 10' in strict['reason']


def test_calibrated_songs_are_left_alone():
  # Labels drawn from the model's own probabilities: any fitted T is noise,
  # which the held-out songs expose.
  probs, labels, song_index = _songs(60, true_t=1.0, seed=12)
  entry = calibration.fit_entry(probs, labels, song_index, 60)
  assert entry['temperature'] == 1.0 and not entry['applied']
  assert entry['cross_fitted_gain'] < calibration.DEFAULT_MIN_NLL_GAIN
  assert 'cross-fitted' in entry['reason']


def test_cross_fitted_gain_scores_songs_the_fit_did_not_see():
  probs, labels = _overconfident(40, true_t=4.0, seed=13)
  raw = calibration.negative_log_likelihood(probs, labels)
  own = raw - calibration.negative_log_likelihood(
      calibration.apply_temperature(probs, calibration.fit_temperature(probs, labels)), labels)
  held_out = calibration.cross_fitted_gain(probs, labels)
  assert 0 < held_out < own  # a fit always looks better on its own songs
  # Leave-one-out by hand on a handful.
  few_p, few_y = probs[:6], labels[:6]
  loo = [calibration.apply_temperature(
      few_p[i:i + 1], calibration.fit_temperature(np.delete(few_p, i, 0), np.delete(few_y, i)))
         for i in range(6)]
  assert calibration.cross_fitted_gain(few_p, few_y) == pytest.approx(
      calibration.negative_log_likelihood(few_p, few_y)
      - calibration.negative_log_likelihood(np.concatenate(loo), few_y))
  assert calibration.cross_fitted_gain(probs[:1], labels[:1]) == 0.0


def test_thresholds_come_from_the_config_or_default_for_old_configs():
  config = tiny.get_config()
  assert calibration.thresholds(config) == (20, 0.01)
  config.calibration.min_songs = 3
  assert calibration.thresholds(config)[0] == 3
  del config['calibration']  # a config.json written before the field existed
  assert calibration.thresholds(config) == (calibration.DEFAULT_MIN_SONGS,
                                            calibration.DEFAULT_MIN_NLL_GAIN)


def test_temperature_keeps_every_argmax_at_segment_and_song_level():
  rng = np.random.default_rng(4)
  probs = rng.dirichlet(np.full(6, 0.5), size=200).astype(np.float32)
  song_index = rng.integers(0, 40, size=200)
  labels = rng.integers(0, 6, size=200)
  raw_songs = metrics_lib.song_probabilities(probs, song_index, 40)
  present = np.bincount(song_index, minlength=40) > 0
  for t in (0.05, 0.3, 1.0, 2.5, 20.0):
    np.testing.assert_array_equal(
        calibration.apply_temperature(probs, t).argmax(axis=1), probs.argmax(axis=1))
    np.testing.assert_allclose(calibration.apply_temperature(probs, t).sum(axis=1), 1.0)
    for s in np.flatnonzero(present):
      calibrated = calibration.song_probabilities(probs[song_index == s], t)
      assert calibrated.argmax() == raw_songs[s].argmax()
  np.testing.assert_allclose(calibration.apply_temperature(probs, 1.0), probs, atol=1e-6)
  report = evaluate.calibration_report(probs, labels, song_index, 40, 2.5, None)
  assert report['song']['ece_before'] == pytest.approx(calibration.expected_calibration_error(
      raw_songs[present], metrics_lib.song_labels(labels, song_index, 40)[present]))
  with pytest.raises(ValueError, match='temperature'):
    calibration.apply_temperature(probs, 0.0)


def test_export_helper_is_the_same_song_calibration():
  rng = np.random.default_rng(6)
  segments = rng.dirichlet(np.ones(4), size=7)
  contract = {'genres': list('abcd'), 'calibration': {'temperature': 1.7}}
  np.testing.assert_allclose(export.song_probabilities(segments, contract),
                             calibration.song_probabilities(segments, 1.7), atol=1e-12)
  np.testing.assert_allclose(export.song_probabilities(segments, {'genres': list('abcd')}),
                             segments.mean(axis=0), atol=1e-12)


def test_storage_round_trip_and_missing_steps(tmp_path):
  workdir = str(tmp_path)
  assert calibration.temperature_for(workdir, 8) == 1.0
  calibration.record(workdir, 8, {'temperature': 1.5, 'fitted_on': 'validation'})
  calibration.record(workdir, 4, {'temperature': 0.7, 'fitted_on': 'validation'})
  with open(os.path.join(workdir, 'calibration.json')) as f:
    assert list(json.load(f)) == ['4', '8']
  assert calibration.temperature_for(workdir, 8) == 1.5
  assert calibration.temperature_for(workdir, 12) == 1.0
  assert not os.path.exists(os.path.join(workdir, 'calibration.json.tmp'))
  with open(os.path.join(workdir, 'calibration.json'), 'w') as f:
    f.write('{"8": {"temp')  # truncated by hand
  assert calibration.temperature_for(workdir, 8) == 1.0


def test_reliability_plot_is_a_png(tmp_path):
  probs, labels = _overconfident(300)
  path = str(tmp_path / 'r.png')
  calibration.plot_reliability(
      [('songs', labels, probs, calibration.apply_temperature(probs, 3.0))], 3.0, path)
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_end_of_training_skips_stopped_runs_and_runs_without_validation(tmp_path):
  empty = input_pipeline.SegmentSet(inputs=np.zeros((0, 8)), labels=np.zeros(0, np.int32),
                                    song_index=np.zeros(0, np.int32), songs=[])
  config = tiny.get_config()
  # Neither needs (or looks for) a checkpoint: there is none in tmp_path.
  assert train.calibrate_after_training(config, str(tmp_path), empty, None) is None
  assert train.calibrate_after_training(config, str(tmp_path), None, None) is None
  one = input_pipeline.SegmentSet(inputs=np.zeros((1, 8)), labels=np.zeros(1, np.int32),
                                  song_index=np.zeros(1, np.int32), songs=[])
  assert train.calibrate_after_training(config, str(tmp_path), one, 'SIGTERM') is None
  # No checkpoint at all: a warning, not a failed training run.
  assert train.calibrate_after_training(config, str(tmp_path), one, None) is None
  assert not os.path.exists(tmp_path / 'calibration.json')


# ---------------------------------------------------------------- a trained workdir


def _run(mode, workdir, **kwargs):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = dispatch.run(mode, None, workdir, dispatch.RunOptions(**kwargs))
  return result, out.getvalue()


@pytest.mark.slow
def test_training_calibrates_and_calibrate_mode_refits_the_same(tiny_run):
  workdir = tiny_run
  with open(os.path.join(workdir, 'dataset.json')) as f:
    validation = json.load(f)['splits']['validation']
  step = inference.checkpoint_step(workdir)
  trained = calibration.read_calibrations(workdir)
  assert list(trained) == [str(step)]  # written by the end of training
  entry = trained[str(step)]
  assert entry['fitted_on'] == 'validation' and entry['songs'] == len(validation)
  # tiny's 4 validation songs cannot pin a temperature down: T = 1, said why.
  assert len(validation) < 20 and not entry['applied'] and entry['temperature'] == 1.0
  assert 'min_songs' in entry['reason']
  assert entry['nll_after'] <= entry['nll_before'] + 1e-9
  # A rerun of the finished run finds the step calibrated and rewrites nothing.
  path = os.path.join(workdir, 'calibration.json')
  written = os.stat(path).st_mtime_ns
  assert train.calibrate_after_training(
      workdir_lib.load_workdir_config(workdir), workdir, None, None) is None  # no validation
  fake_validation = input_pipeline.SegmentSet(np.zeros((1, 8)), np.zeros(1, np.int32),
                                              np.zeros(1, np.int32), [])
  assert train.calibrate_after_training(
      workdir_lib.load_workdir_config(workdir), workdir, fake_validation, None) == entry
  assert os.stat(path).st_mtime_ns == written

  os.remove(os.path.join(workdir, 'calibration.json'))
  result, stdout = _run('calibrate', workdir)
  assert result['step'] == step
  again = calibration.read_calibrations(workdir)[str(step)]
  assert again['temperature'] == pytest.approx(entry['temperature'], rel=1e-6)
  for key in ('song_ece_before', 'song_ece_after', 'nll_before', 'nll_after'):
    assert again[key] == pytest.approx(entry[key], abs=1e-6)
  assert f"{again['temperature']:.4f}" in stdout and 'ECE' in stdout
  assert os.path.exists(workdir_lib.path(workdir, workdir_lib.CALIBRATION_PLOT))

  assert 'Not applied (temperature 1)' in stdout
  calibration.record(workdir, step, {**again, 'temperature': 1.7, 'applied': True})
  model = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  calibration.record(workdir, step, again)  # the module's later tests see the fitted entry
  assert model.temperature == pytest.approx(1.7)
  segments = np.random.default_rng(0).dirichlet(np.ones(len(model.genres)), size=3)
  np.testing.assert_allclose(model.song_probabilities(segments),
                             calibration.apply_temperature(segments.mean(axis=0),
                                                           model.temperature))


@pytest.mark.slow
def test_eval_reports_ece_and_keeps_the_accuracy(tiny_run):
  workdir = tiny_run
  report, stdout = _run('eval', workdir)
  step = report['checkpoint']['step']
  temperature = calibration.read_calibrations(workdir)[str(step)]['temperature']
  c = report['calibration']
  assert c['temperature'] == pytest.approx(temperature) and c['calibrated']
  assert c['fitted_on'] == 'validation' and report['split'] == 'test'

  raw = np.load(os.path.join(workdir, 'eval', 'predictions.npz'))
  probs, labels, song_index = raw['segment_probs'], raw['labels'], raw['song_index']
  songs = np.unique(song_index)
  q = np.stack([probs[song_index == s].mean(axis=0) for s in songs])
  y = np.array([labels[song_index == s][0] for s in songs])
  q_cal = calibration.apply_temperature(q, temperature)
  seg_cal = calibration.apply_temperature(probs, temperature)
  assert c['song']['ece_before'] == pytest.approx(_ece_loop(q, y, 15), abs=1e-6)
  assert c['song']['ece_after'] == pytest.approx(_ece_loop(q_cal, y, 15), abs=1e-6)
  assert c['segment']['ece_before'] == pytest.approx(_ece_loop(probs, labels, 15), abs=1e-6)
  assert c['segment']['ece_after'] == pytest.approx(_ece_loop(seg_cal, labels, 15), abs=1e-6)
  # Same accuracy as without calibration, at both levels.
  assert report['song']['accuracy'] == pytest.approx(skm.accuracy_score(y, q.argmax(axis=1)))
  assert report['song']['accuracy'] == pytest.approx(skm.accuracy_score(y, q_cal.argmax(axis=1)))
  assert report['segment']['accuracy'] == pytest.approx(
      skm.accuracy_score(labels, seg_cal.argmax(axis=1)))

  with open(os.path.join(workdir, 'eval', 'report.json')) as f:
    assert json.load(f)['calibration']['song']['ece_after'] == c['song']['ece_after']
  with open(os.path.join(workdir, 'eval', 'report.md')) as f:
    assert 'Calibration (temperature' in f.read()
  with open(os.path.join(workdir, 'eval', 'reliability.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert 'song ECE' in stdout


@pytest.mark.slow
def test_eval_fits_a_missing_temperature_on_validation_not_test(tiny_run):
  workdir = tiny_run
  before = calibration.read_calibrations(workdir)
  os.remove(os.path.join(workdir, 'calibration.json'))
  report, _ = _run('eval', workdir)
  step = str(report['checkpoint']['step'])
  refit = calibration.read_calibrations(workdir)[step]
  assert refit['fitted_on'] == 'validation'
  assert refit['temperature'] == pytest.approx(before[step]['temperature'], rel=1e-6)
  assert report['calibration']['temperature'] == pytest.approx(refit['temperature'])


def test_eval_report_says_why_a_fitted_temperature_was_not_applied():
  probs, labels, song_index = _songs(4, true_t=6.0, seed=4)
  entry = calibration.fit_entry(probs, labels, song_index, 4)
  report = evaluate.calibration_report(probs, labels, song_index, 4, entry['temperature'], entry)
  assert report['not_applied_reason'] == entry['reason'] != ''
  line = eval_format._calibration_line(report)
  assert 'T 1, a fitted T not applied (4 validation songs' in line
  assert 'not applied (4 validation songs' in eval_format._md_calibration(report)[0]
  applied = calibration.fit_entry(*_songs(50, true_t=4.0, seed=11), 50)
  assert evaluate.calibration_report(probs, labels, song_index, 4, applied['temperature'],
                                     applied)['not_applied_reason'] == ''
