"""--mode=predict on a trained tiny workdir: good files answered, bad ones explained."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import soundfile as sf

from melgenre_jax import calibration
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import synthetic
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import predict

CAN_WRITE_MP3 = 'MP3' in sf.available_formats()


def _write_inputs(folder: str) -> dict[str, str]:
  """Songs at other sample rates and formats, plus every kind of bad file."""
  os.makedirs(os.path.join(folder, 'sub'))
  paths = {name: os.path.join(folder, name) for name in
           ('song.wav', 'clip.flac', 'short.wav', 'corrupt.wav', 'empty.ogg')}
  sf.write(paths['song.wav'], synthetic.synthesize_song('synthetic/blues/0100', 22050, 3.5),
           22050)  # resampled to 8 kHz: 3 segments of 1 s
  clip = synthetic.synthesize_song('synthetic/disco/0100', 8000, 0.7)
  sf.write(paths['clip.flac'], clip, 8000)  # shorter than a segment: padded
  sf.write(paths['short.wav'], clip[:1600], 8000)  # 0.2 s < min_song_seconds
  with open(paths['corrupt.wav'], 'wb') as f:
    f.write(b'RIFF\x10\x00\x00\x00WAVEgarbage' * 30)
  open(paths['empty.ogg'], 'wb').close()
  with open(os.path.join(folder, 'sub', 'notes.txt'), 'w') as f:
    f.write('not audio, and not an audio extension: ignored')
  if CAN_WRITE_MP3:
    paths['song.mp3'] = os.path.join(folder, 'sub', 'song.mp3')
    sf.write(paths['song.mp3'],
             synthetic.synthesize_song('synthetic/ambient/0100', 16000, 2.3), 16000,
             format='MP3')
  return paths


@pytest.fixture(scope='module')
def predicted(tiny_run, tmp_path_factory):
  """The shared tiny run; predict a folder plus a missing path, JSON output and plots on."""
  workdir = tiny_run
  # tiny's 4 validation songs keep T = 1 (calibration.py): record a fitted T so
  # the tests below see predict apply it.
  for step in calibration.read_calibrations(workdir):
    calibration.record(workdir, int(step), {'temperature': 1.7, 'fitted_on': 'validation'})
  folder = str(tmp_path_factory.mktemp('audio'))
  paths = _write_inputs(folder)
  paths['missing.wav'] = os.path.join(folder, 'missing.wav')
  config = workdir_lib.load_workdir_config(workdir)  # as a CPU-only user machine would
  config.data.min_song_seconds = 0.5
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = dispatch.run('predict', config, workdir,
                           dispatch.RunOptions(audio=(folder, paths['missing.wav']),
                                               output='json', plot=True))
  by_name = {os.path.basename(r['path']): r for r in results}
  return workdir, paths, results, by_name, out.getvalue()


def test_expand_paths_recurses_and_names_empty_folders(tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'a' / 'x.WAV').write_bytes(b'')
  (tmp_path / 'a' / 'y.txt').write_text('')
  (tmp_path / 'b').mkdir()
  got = predict.expand_paths([str(tmp_path / 'a'), str(tmp_path / 'b'), str(tmp_path / 'zz')])
  assert got[0] == (str(tmp_path / 'a' / 'x.WAV'), None)
  assert 'no audio files' in got[1][1] and got[2][1] == 'file not found'
  assert len(got) == 3


def test_expand_paths_follows_linked_folders_and_reads_a_loop_once(tmp_path, caplog):
  library = tmp_path / 'library'
  (library / 'own').mkdir(parents=True)
  (library / 'own' / 'a.flac').write_bytes(b'')
  (tmp_path / 'elsewhere').mkdir()
  (tmp_path / 'elsewhere' / 'b.mp3').write_bytes(b'')
  os.symlink(tmp_path / 'elsewhere', library / 'linked')  # skipped without a word before
  os.symlink(library, library / 'own' / 'loop')  # a folder linking to its ancestor
  got = predict.expand_paths([str(library)])
  assert got == [(str(library / 'linked' / 'b.mp3'), None), (str(library / 'own' / 'a.flac'), None)]
  said = [r.getMessage() for r in caplog.records if 'symlink loop' in r.getMessage()]
  assert len(said) == 1 and str(library / 'own' / 'loop') in said[0], said


@pytest.mark.slow
def test_readable_files_are_answered_and_the_rest_explained(predicted):
  _, paths, results, by_name, _ = predicted
  good = ['song.wav', 'clip.flac'] + (['song.mp3'] if CAN_WRITE_MP3 else [])
  assert sorted(by_name) == sorted(paths)  # notes.txt was not picked up
  assert all(by_name[n]['ok'] for n in good)
  reasons = {n: by_name[n]['reason'] for n in by_name if not by_name[n]['ok']}
  assert 'too short' in reasons['short.wav']
  assert 'not a readable audio file' in reasons['corrupt.wav']
  assert 'empty file' in reasons['empty.ogg']
  assert reasons['missing.wav'] == 'file not found'
  assert len(results) == len(paths)


@pytest.mark.slow
def test_probabilities_top_k_and_timeline(predicted):
  workdir, _, _, by_name, _ = predicted
  with open(os.path.join(workdir, 'predictions', 'predictions.json')) as f:
    saved = json.load(f)
  temperature = saved['temperature']
  assert temperature == calibration.temperature_for(workdir, saved['checkpoint_step']) != 1.0
  expected_segments = {'song.wav': 3, 'clip.flac': 1, 'song.mp3': 2}
  for name, r in by_name.items():
    if not r['ok']:
      continue
    assert sum(r['probabilities'].values()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.sum(r['segment_probabilities'], axis=1), 1.0, atol=1e-5)
    assert r['num_segments'] == expected_segments[name] == len(r['timeline'])
    assert [t['start_seconds'] for t in r['timeline']] == [float(i) for i in range(r['num_segments'])]
    top = [t['probability'] for t in r['top_k']]
    assert len(top) == 3 and top == sorted(top, reverse=True)
    assert r['genre'] == r['top_k'][0]['genre']
    # Calibrated: softmax(log(mean of the raw segment probabilities) / T), same argmax.
    mean = np.mean(r['segment_probabilities'], axis=0)
    song = calibration.song_probabilities(r['segment_probabilities'], temperature)
    assert max(song) == pytest.approx(top[0], abs=1e-6)
    assert r['top_k'][0]['genre'] == list(r['probabilities'])[int(np.argmax(mean))]
    assert r['status'] == 'ok' and r['size_bytes'] == str(os.path.getsize(r['path']))
  assert by_name['clip.flac']['padded'] and not by_name['song.wav']['padded']
  assert by_name['song.wav']['duration_seconds'] == pytest.approx(3.5, abs=1e-3)


@pytest.mark.slow
def test_json_output_and_plots(predicted):
  workdir, _, results, by_name, stdout = predicted
  path = os.path.join(workdir, 'predictions', 'predictions.json')
  assert stdout.strip() == path
  with open(path) as f:
    saved = json.load(f)
  assert saved['genres'] == workdir_lib.load_genres(workdir)
  assert saved['results'] == json.loads(json.dumps(results))
  for r in by_name.values():
    if r['ok']:
      assert os.path.dirname(r['plot']) == os.path.join(workdir, 'predictions')
      with open(r['plot'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  plots = [r['plot'] for r in by_name.values() if r['ok']]
  assert len(set(plots)) == len(plots)  # song.wav and song.mp3 do not collide


@pytest.mark.slow
def test_text_output(predicted):
  _, _, results, by_name, _ = predicted
  text = predict.format_text(results)
  assert f"1. {by_name['song.wav']['genre']}" in text
  assert 'timeline: 0:00 ' in text
  assert 'short.wav: SKIPPED - too short' in text
  ok = sum(r['ok'] for r in results)
  assert f'{ok} of {len(results)} file(s) classified.' in text


@pytest.mark.slow
def test_nothing_classifiable_raises_with_every_reason(predicted):
  workdir, paths, _, _, _ = predicted
  with contextlib.redirect_stdout(io.StringIO()):
    with pytest.raises(predict.NothingClassifiedError) as e:
      predict.predict_paths(workdir_lib.load_workdir_config(workdir), workdir,
                            predict.PredictOptions(paths=(paths['corrupt.wav'],
                                                          paths['short.wav'])))
  assert 'corrupt.wav' in str(e.value) and 'too short' in str(e.value)
