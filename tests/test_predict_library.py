"""Predict on a whole library: resumable CSV, streamed long files, calibrated answers, tags."""

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC

from melgenre_jax import calibration
from melgenre_jax import inference
from melgenre_jax import steps
from melgenre_jax.data import audio
from melgenre_jax.data import synthetic
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import UserError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import predict
from melgenre_jax.modes.predict import classify
from melgenre_jax.modes.predict import output
from melgenre_jax.modes.predict import stream
from melgenre_jax.runtime import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENRES = ['ambient', 'blues', 'classical', 'disco']


def _tiny_config():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  return tiny.get_config()


def _csv_rows(path: str) -> list[dict[str, str]]:
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


# ----------------------------------------------------------------------------
# Fast: the CSV log, the flags, batching and decoding ahead, without a model.


def _row(path: str, status: str = 'ok', mtime: str = 't0') -> list[str]:
  result = {'path': path, 'ok': status != 'skipped', 'status': status, 'reason': None,
            'duration_seconds': 2.0, 'num_segments': 2, 'size_bytes': '10', 'mtime': mtime,
            'top_k': [{'genre': 'blues', 'probability': 0.5}]}
  return output.csv_row(result, 2, output.run_settings(8, 0.0, None, 1.0))


def test_csv_log_drops_a_torn_last_row_and_the_newest_row_of_a_path_wins(tmp_path):
  path = str(tmp_path / 'p.csv')
  header = output.csv_header(2)
  with output.CsvLog(path, header) as log:
    log.append(_row('/a.wav', mtime='t0'))
    log.append(_row('/b.wav'))
    log.append(_row('/a.wav', mtime='t1'))  # a.wav changed and was classified again
    log.append(_row('/c.wav'))
  with open(path, 'rb') as f:
    text = f.read()
  os.truncate(path, text.rindex(b'\n', 0, -1) + 1 + 25)  # killed mid-write of c.wav's row
  rows, count = output.open_csv_log(path, header)
  assert count == 3
  assert {key[0]: key[-1] for key in rows} == {'/a.wav': 't1', '/b.wav': 't0'}
  with open(path, encoding='utf-8') as f:
    text = f.read()
  assert text.endswith('\n') and '/c.wav' not in text and text.count('\n') == 4
  with output.CsvLog(path, header) as log:  # appends after the repaired file
    log.append(_row('/c.wav'))
  assert [r['path'] for r in _csv_rows(path)] == ['/a.wav', '/b.wav', '/a.wav', '/c.wav']


def test_csv_of_another_top_k_is_refused_with_the_fix(tmp_path):
  path = str(tmp_path / 'p.csv')
  with output.CsvLog(path, output.csv_header(2)) as log:
    log.append(_row('/a.wav'))
  with pytest.raises(ConfigError, match='--top_k'):
    output.open_csv_log(path, output.csv_header(3))


def test_a_killed_header_is_rewritten(tmp_path):
  path = str(tmp_path / 'p.csv')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('path,status,rea')
  assert output.open_csv_log(path, output.csv_header(1)) == ({}, 0)
  with output.CsvLog(path, output.csv_header(1)) as log:
    log.append(output.csv_row({'path': '/x', 'ok': False, 'status': 'skipped',
                               'reason': 'r', 'size_bytes': '', 'mtime': ''}, 1,
                              output.run_settings(1, 0.0, None, 3.0)))
  assert [r['status'] for r in _csv_rows(path)] == ['skipped']


@pytest.mark.parametrize('flags,match', [
    ({'hop_seconds': 0.0}, '--hop_seconds'), ({'hop_seconds': float('nan')}, '--hop_seconds'),
    ({'offset_seconds': -1.0}, '--offset_seconds'), ({'max_seconds': 0.5}, '--max_seconds'),
    ({'min_confidence': 1.5}, '--min_confidence'), ({'top_k': 0}, '--top_k')])
def test_bad_flag_values_name_the_flag(flags, match):
  config = _tiny_config()
  with pytest.raises(ConfigError, match=match):
    stream.check_options(stream.Options(**flags), config)
  stream.check_options(stream.Options(hop_seconds=0.25, offset_seconds=3.0,
                                      max_seconds=1.0, min_confidence=1.0), config)


def test_output_file_and_write_tags_values_are_checked_first():
  with pytest.raises(ConfigError, match='--output_file'):
    predict.predict_paths(_tiny_config(), '/nonexistent',
                          predict.PredictOptions(paths=('a.wav',), output_file='a.txt'))
  with pytest.raises(ConfigError, match='--write_tags'):
    predict.predict_paths(_tiny_config(), '/nonexistent',
                          predict.PredictOptions(paths=('a.wav',), write_tags='yes'))


def test_bare_write_tags_means_dry_run():
  import main  # pylint: disable=g-import-not-at-top
  assert main.bare_write_tags(['m', '--write_tags', 'song.mp3', '--output', 'csv']) == [
      'm', '--write_tags=dry_run', 'song.mp3', '--output', 'csv']
  assert main.bare_write_tags(['m', '--write_tags', 'keep', 'a.mp3']) == [
      'm', '--write_tags', 'keep', 'a.mp3']
  assert main.bare_write_tags(['m', '--write_tags', 'apply', '--nowrite_tags', '--',
                               '--write_tags']) == [
      'm', '--write_tags', 'apply', '--write_tags=off', '--', '--write_tags']
  # main.py spells the allowed values out (importing predict would slow every start).
  assert main.FLAGS['write_tags'].parser.enum_values == list(predict.WRITE_TAGS)
  assert main.FLAGS['output'].parser.enum_values == list(predict.OUTPUTS)


def test_batcher_sends_whole_batches_and_returns_every_song_its_rows():
  calls = []

  def fake_predict(rows):
    calls.append(len(rows))
    return np.stack([rows[:, 0], -rows[:, 0]], axis=1)  # one row per input, traceable

  batcher = stream.RowBatcher(fake_predict, 4, stream.keep_rows)
  songs = [stream.Song(None) for _ in range(4)]
  sizes = [3, 1, 6, 2]
  for i, (song, n) in enumerate(zip(songs, sizes)):
    batcher.add(song, np.full((n, 5), i, np.float32) + np.arange(n)[:, None] / 10)
  batcher.flush()
  assert calls == [4, 4, 4]  # 12 rows: no partial batch before the last flush
  for i, (song, n) in enumerate(zip(songs, sizes)):
    got = np.asarray(song.rows)[:, 0]
    np.testing.assert_allclose(got, i + np.arange(n) / 10, rtol=1e-6)
    assert song.rows_in == song.rows_out == n


@pytest.mark.parametrize('workers', [0, 1, 3])
def test_decoding_ahead_keeps_input_order_and_a_bounded_window(workers):
  started, lock = [], threading.Lock()
  consumed = []

  def events(i):
    with lock:
      started.append(i)
    time.sleep(0.001 * ((7 * i) % 5))  # later files often finish first
    for k in range(3):
      yield 'chunk', np.full(2, i), True
    yield 'end', i, False

  ahead = workers + 1
  for i, evs in stream.in_order(range(12), events, workers, ahead):
    with lock:
      assert len(started) <= i + 1 + ahead  # never more than `ahead` files beyond this one
    got = list(evs)
    assert [e[1][0] for e in got[:3]] == [i] * 3 and got[-1] == ('end', i, False)
    consumed.append(i)
  assert consumed == list(range(12))


def test_a_consumer_that_stops_early_stops_the_decoding_threads():
  def events(i):
    for _ in range(100):
      yield 'chunk', np.zeros(2), True
    yield 'end', 0, False

  before = threading.active_count()
  gen = stream.in_order(range(50), events, workers=2, files_ahead=3)
  _, evs = next(gen)
  next(evs)
  gen.close()
  deadline = time.monotonic() + 5
  while threading.active_count() > before and time.monotonic() < deadline:
    time.sleep(0.05)
  assert threading.active_count() == before


# ----------------------------------------------------------------------------
# Fast: predict_paths with a stand-in model (Ctrl-C, --write_tags=keep).


class _StandInModel:
  """What predict_paths reads of a model besides its answers (iter_results is replaced)."""

  step, genres, temperature, multilabel = 7, GENRES, 1.0, False


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
  """``run(paths, stop_after=k, **PredictOptions fields)``: predict with a model that answers
  file i with genre i % 4, and Ctrl-C (KeyboardInterrupt) after k files when given."""
  from melgenre_jax import config_checks  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(config_checks, 'check_workdir_compatible', lambda *args: None)
  monkeypatch.setattr(inference, 'load_for_inference', lambda *a, **k: _StandInModel())

  def run(paths, stop_after=None, **options):
    def iter_results(model, jobs, reading, decode_workers):
      for i, job in enumerate(jobs):
        if i == stop_after:
          raise KeyboardInterrupt
        probs = np.full((1, 4), 0.1, np.float32)
        probs[0, i % 4] = 0.7
        yield classify.song_result(job, probs, 8000, False, False, GENRES, 1.0, reading,
                                   8000, 8000)

    monkeypatch.setattr(classify, 'iter_results', iter_results)
    return predict.predict_paths(_tiny_config(), str(tmp_path / 'work'),
                                 predict.PredictOptions(paths=tuple(paths), **options))

  return run


def _files(folder, count: int) -> list[str]:
  os.makedirs(folder, exist_ok=True)
  paths = [os.path.join(folder, f'song_{i}.flac') for i in range(count)]
  for path in paths:
    sf.write(path, np.zeros(800, np.float32), 8000)
  return paths


def test_ctrl_c_keeps_the_csv_rows_and_the_same_command_continues(stand_in, tmp_path):
  paths = _files(tmp_path / 'music', 6)
  out = str(tmp_path / 'p.csv')
  with contextlib.redirect_stdout(io.StringIO()):
    with pytest.raises(predict.Interrupted) as e:
      stand_in(paths, stop_after=2, output='csv', output_file=out)
  assert isinstance(e.value, UserError)  # main.py: one line, exit status 1
  assert str(e.value) == (f'2 of 6 file(s) classified, their rows are in {out}; run the same '
                          'command again to continue (the files already in it are skipped).')
  assert [r['path'] for r in _csv_rows(out)] == paths[:2]
  with contextlib.redirect_stdout(io.StringIO()):
    rest = stand_in(paths, output='csv', output_file=out)
  assert [r['path'] for r in rest] == paths[2:]
  assert [r['path'] for r in _csv_rows(out)] == paths


def test_ctrl_c_writes_the_json_report_of_the_files_done(stand_in, tmp_path):
  paths = _files(tmp_path / 'music', 5)
  out = str(tmp_path / 'p.json')
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    with pytest.raises(predict.Interrupted, match=rf'^3 of 5 file\(s\) classified, their '
                       rf'results are in {out}; run the same command again'):
      stand_in(paths, stop_after=3, output='json', output_file=out)
  with open(out, encoding='utf-8') as f:
    report = json.load(f)
  assert report['interrupted'] is True and report['checkpoint_step'] == 7
  assert [r['path'] for r in report['results']] == paths[:3]
  assert [r['genre'] for r in report['results']] == GENRES[:3]
  assert printed.getvalue() == ''  # the one line says where the report is


def test_ctrl_c_prints_the_text_of_the_files_done(stand_in, tmp_path):
  paths = _files(tmp_path / 'music', 4)
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    with pytest.raises(predict.Interrupted, match=r'^2 of 4 file\(s\) classified \(printed '):
      stand_in(paths, stop_after=2)
  text = printed.getvalue()
  assert paths[0] in text and paths[1] in text and paths[2] not in text
  assert '2 of 2 file(s) classified.' in text


def test_ctrl_c_before_the_first_file_says_nothing_was_written(stand_in, tmp_path, monkeypatch):
  def interrupted_load(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(inference, 'load_for_inference', interrupted_load)
  out = tmp_path / 'p.csv'
  with pytest.raises(predict.Interrupted, match='before any file was classified; nothing was '
                     'written: run the same command again.'):
    stand_in(_files(tmp_path / 'music', 2), output='csv', output_file=str(out))
  assert not out.exists()


def test_write_tags_keep_leaves_a_genre_a_person_set(stand_in, tmp_path):
  paths = _files(tmp_path / 'music', 4)  # the stand-in answers ambient, blues, classical, disco
  for path, genre in ((paths[1], 'Jazz'), (paths[2], 'Classical')):
    f = FLAC(path)
    f['genre'] = [genre]
    f.save()
  person_set = open(paths[1], 'rb').read()
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    results = stand_in(paths, write_tags='keep')
  assert [FLAC(p).get('genre') for p in paths] == [['ambient'], ['Jazz'], ['Classical'],
                                                   ['disco']]
  assert open(paths[1], 'rb').read() == person_set
  assert [r['tag']['action'] for r in results] == ['write', 'kept', 'unchanged', 'write']
  listing = printed.getvalue()
  assert f"{paths[1]}: kept 'Jazz' (predicted 'blues')" in listing
  assert '2 written, 1 unchanged, 1 kept, 0 not tagged.' in listing
  # apply, by contrast, replaces it.
  with contextlib.redirect_stdout(io.StringIO()):
    stand_in(paths, write_tags='apply')
  assert FLAC(paths[1]).get('genre') == ['blues']


# ----------------------------------------------------------------------------
# Slow: a fresh (untrained) model; streaming against the whole-file path.


@pytest.fixture(scope='module')
def fresh_model():
  config = _tiny_config()
  mesh = parallel.create_mesh()
  spec = InputSpec.from_config(config)
  module = steps.create_model(config, len(GENRES))
  variables = jax.jit(lambda rng: steps.init_variables(spec, module, rng),
                      out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
  return inference.make_inference_model(config, GENRES, variables, mesh, step=0,
                                        temperature=1.7)


@pytest.fixture(scope='module')
def long_song(tmp_path_factory):
  """A 3-minute stereo song at 44.1 kHz (resampled and downmixed block by block)."""
  path = str(tmp_path_factory.mktemp('long') / 'long.wav')
  sr = 44100
  wave = synthetic.synthesize_song('synthetic/disco/0007', sr, 180.0)
  stereo = np.stack([wave, 0.5 * np.roll(wave, 100)], axis=1)
  sf.write(path, stereo, sr, subtype='PCM_16')
  return path


def _whole_file_probs(model, path, hop_seconds=None, offset=0.0, max_seconds=None):
  spec = model.spec
  wave = audio.load_audio(path, spec.sample_rate)
  start = int(round(offset * spec.sample_rate))
  stop = None if max_seconds is None else start + int(round(max_seconds * spec.sample_rate))
  hop = spec.hop_samples if hop_seconds is None else int(round(hop_seconds * spec.sample_rate))
  segments = audio.segment_audio(wave[start:stop], spec.segment_samples, hop,
                                 spec.min_samples)
  return model.predict(spec.host_inputs(segments))


@pytest.mark.slow
def test_streaming_matches_the_whole_file_path(fresh_model, long_song):
  model = fresh_model
  [r] = predict.classify_files(model, [long_song])
  expected = _whole_file_probs(model, long_song)
  got = np.asarray(r['segment_probabilities'])
  assert r['ok'] and r['num_segments'] == len(expected) == 180
  np.testing.assert_allclose(got, expected, atol=2e-5)
  assert r['duration_seconds'] == pytest.approx(180.0, abs=1e-3)
  song = calibration.song_probabilities(expected, model.temperature)
  assert r['top_k'][0]['probability'] == pytest.approx(song.max(), abs=2e-5)
  assert [t['start_seconds'] for t in r['timeline'][:3]] == [0.0, 1.0, 2.0]
  # Decoding in the calling thread gives the same answers.
  [seq] = predict.classify_files(model, [long_song], decode_workers=0)
  np.testing.assert_array_equal(seq['segment_probabilities'], r['segment_probabilities'])


@pytest.mark.slow
def test_offset_max_seconds_and_hop_pick_the_windows(fresh_model, long_song):
  model = fresh_model
  options = stream.Options(hop_seconds=0.25, offset_seconds=30.0, max_seconds=20.0)
  [r] = predict.classify_files(model, [long_song], options)
  assert r['num_segments'] == 1 + int((20.0 - 1.0) / 0.25)  # 77 windows in 20 s
  assert r['duration_seconds'] == pytest.approx(20.0)
  starts = [t['start_seconds'] for t in r['timeline']]
  assert starts[:3] == [30.0, 30.25, 30.5] and starts[-1] == pytest.approx(49.0)
  expected = _whole_file_probs(model, long_song, 0.25, 30.0, 20.0)
  np.testing.assert_allclose(r['segment_probabilities'], expected, atol=2e-5)
  [past] = predict.classify_files(model, [long_song], stream.Options(offset_seconds=400.0))
  assert not past['ok'] and 'beyond the end' in past['reason']


@pytest.mark.slow
def test_silence_warning_is_accumulated_over_chunks(fresh_model, tmp_path):
  sr = 8000
  quiet = np.zeros(sr * 40, np.float32)
  sf.write(tmp_path / 'silent.wav', quiet, sr)
  late = quiet.copy()
  late[-sr:] = synthetic.synthesize_song('synthetic/blues/0001', sr, 1.0)  # last chunk only
  sf.write(tmp_path / 'late.wav', late, sr)
  by_name = {os.path.basename(r['path']): r for r in predict.classify_files(
      fresh_model, [str(tmp_path / 'silent.wav'), str(tmp_path / 'late.wav')])}
  assert by_name['silent.wav']['warning'] == classify.SILENCE_WARNING
  assert 'warning' not in by_name['late.wav']  # 40 windows: five chunks of 8


@pytest.mark.slow
def test_a_high_min_confidence_makes_songs_uncertain_with_the_same_top_k(fresh_model,
                                                                       long_song):
  [sure] = predict.classify_files(fresh_model, [long_song], stream.Options(max_seconds=10))
  [unsure] = predict.classify_files(fresh_model, [long_song],
                                    stream.Options(max_seconds=10, min_confidence=0.99))
  assert sure['status'] == 'ok' and sure['genre'] == sure['top_k'][0]['genre']
  assert unsure['status'] == 'uncertain' and unsure['genre'] is None
  assert unsure['top_k'] == sure['top_k']
  assert '< --min_confidence 0.99' in unsure['reason']
  text = output.format_text([unsure])
  assert 'UNCERTAIN' in text and f"1. {sure['top_k'][0]['genre']}" in text
  row = output.csv_row(unsure, 3, output.run_settings(0, 0.0, 10.0, 1.0))
  assert row[1] == 'uncertain' and row[5] == sure['top_k'][0]['genre']


# ----------------------------------------------------------------------------
# Slow: the shared tiny run: a 200-file library killed half-way and resumed; tags.

_CHILD = '''
import os, signal, sys
sys.path.insert(0, {root!r})
from melgenre_jax.modes import dispatch
from melgenre_jax.modes.predict import output
lines = [0]
write_line = output.CsvLog._write_line

def dying_write_line(self, line):
  if lines[0] == 1 + {rows}:  # the header, then {rows} rows: this one is cut by the kill
    self._file.write(line[:len(line) // 2])
    self._file.flush()
    os.kill(os.getpid(), signal.SIGKILL)
  write_line(self, line)
  lines[0] += 1

output.CsvLog._write_line = dying_write_line
dispatch.run('predict', None, {workdir!r},
             dispatch.RunOptions(audio=({folder!r},), output='csv'))
'''


def _library(folder, count: int, seconds: float = 1.5, sample_rate: int = 8000) -> list[str]:
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i in range(count):
    path = os.path.join(folder, f'song_{i:03d}.flac')
    wave = synthetic.synthesize_song(f'synthetic/{GENRES[i % 4]}/{i:04d}', sample_rate, seconds)
    sf.write(path, wave, sample_rate)
    paths.append(path)
  return paths


@pytest.mark.slow
def test_a_library_killed_half_way_resumes_with_only_the_rest(tiny_run, tmp_path, caplog):
  folder = str(tmp_path / 'library')
  paths = _library(folder, 200)
  csv_path = os.path.join(tiny_run, 'predictions', 'predictions.csv')
  script = tmp_path / 'child.py'
  script.write_text(_CHILD.format(root=ROOT, rows=90, workdir=tiny_run, folder=folder))
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  with open(csv_path, encoding='utf-8') as f:
    killed = f.read()
  assert not killed.endswith('\n')  # the row in flight was torn by the kill
  first = {r[0] for r in csv.reader(io.StringIO(killed[:killed.rfind('\n') + 1]))} - {'path'}
  assert len(first) == 90

  caplog.set_level('INFO')
  with contextlib.redirect_stdout(io.StringIO()):
    second = dispatch.run('predict', None, tiny_run,
                          dispatch.RunOptions(audio=(folder,), output='csv'))
  assert sorted(os.path.abspath(r['path']) for r in second) == sorted(
      set(map(os.path.abspath, paths)) - first)
  assert 'skipping 90 of 200 file(s) already in it' in caplog.text
  assert 'dropped 1 half-written row' in caplog.text
  rows = _csv_rows(csv_path)
  assert sorted(r['path'] for r in rows) == sorted(map(os.path.abspath, paths))  # once each
  assert {r['status'] for r in rows} <= {'ok', 'uncertain'}
  assert 'timeline' not in second[0]  # a library's timelines are not kept in memory

  # A changed file is classified again; its newer row is the one that counts.
  sf.write(paths[7], synthetic.synthesize_song('synthetic/blues/0999', 8000, 2.5), 8000)
  with contextlib.redirect_stdout(io.StringIO()):
    third = dispatch.run('predict', None, tiny_run,
                         dispatch.RunOptions(audio=(folder,), output='csv'))
  assert [r['path'] for r in third] == [paths[7]]
  rows = _csv_rows(csv_path)
  assert len(rows) == 201 and [r['path'] for r in rows].count(os.path.abspath(paths[7])) == 2
  assert rows[-1]['size_bytes'] == str(os.path.getsize(paths[7]))


@pytest.mark.slow
def test_ctrl_c_through_main_ends_in_one_line_and_keeps_the_rows(tiny_run, tmp_path):
  folder = str(tmp_path / 'library')
  paths = _library(folder, 150)
  csv_path = str(tmp_path / 'ctrl_c.csv')
  proc = subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, os.path.join(ROOT, 'main.py'), '--workdir', tiny_run, '--mode',
       'predict', '--output', 'csv', '--output_file', csv_path, '--hop_seconds', '0.05',
       folder],  # 11 windows a file: long enough for Ctrl-C to land mid-run
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.exists(csv_path) and len(_csv_rows(csv_path)) >= 5:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 1, stderr[-3000:]
  assert 'Traceback' not in stderr and 'KeyboardInterrupt' not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if 'Interrupted' in line]
  assert len(lines) == 1, stderr[-3000:]
  rows = _csv_rows(csv_path)
  assert f'Interrupted: {len(rows)} of 150 file(s) classified, their rows are in {csv_path}' \
      in lines[0]
  assert 5 <= len(rows) < 150
  with contextlib.redirect_stdout(io.StringIO()):
    rest = dispatch.run('predict', None, tiny_run, dispatch.RunOptions(
        audio=(folder,), output='csv', output_file=csv_path, hop_seconds=0.05))
  assert len(rest) == 150 - len(rows)
  assert sorted(r['path'] for r in _csv_rows(csv_path)) == sorted(paths)


@pytest.mark.slow
def test_write_tags_dry_run_then_apply_skips_uncertain_and_skipped_files(tiny_run, tmp_path):
  folder = str(tmp_path / 'tagged')
  paths = _library(folder, 6, seconds=3.0)
  broken = os.path.join(folder, 'broken.flac')
  with open(broken, 'wb') as f:
    f.write(b'fLaC' + b'\0' * 64)
  with contextlib.redirect_stdout(io.StringIO()):
    probe = dispatch.run('predict', None, tiny_run,
                         dispatch.RunOptions(audio=(folder,), output='json'))
  top = sorted(r['top_k'][0]['probability'] for r in probe if r['ok'])
  threshold = (top[2] + top[3]) / 2  # three certain songs, three uncertain
  before = {p: open(p, 'rb').read() for p in paths + [broken]}

  # A bare --write_tags, through main.py as a user types it: a dry run.
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'), '--workdir', tiny_run, '--mode',
       'predict', '--write_tags', folder, '--min_confidence', str(threshold)],
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Genre tags (dry run, no file changed):' in proc.stdout
  assert proc.stdout.count('would write') == 3, proc.stdout
  assert all(open(p, 'rb').read() == b for p, b in before.items())

  with contextlib.redirect_stdout(io.StringIO()) as out:
    results = dispatch.run('predict', None, tiny_run,
                           dispatch.RunOptions(audio=(folder,), output='csv',
                                               output_file=str(tmp_path / 'tags.csv'),
                                               min_confidence=threshold, write_tags='apply'))
  assert '3 written' in out.getvalue()
  for r in results:
    tag = FLAC(r['path']).get('genre') if r['ok'] else None
    if r['status'] == 'ok':
      assert tag == [r['genre']] and r['tag']['action'] == 'write'
    else:
      assert open(r['path'], 'rb').read() == before[r['path']] and not tag
  # The CSV holds the tagged files' new stamps: a re-run finds nothing to do.
  with contextlib.redirect_stdout(io.StringIO()):
    again = dispatch.run('predict', None, tiny_run,
                         dispatch.RunOptions(audio=(folder,), output='csv',
                                             output_file=str(tmp_path / 'tags.csv'),
                                             min_confidence=threshold))
  assert again == []
