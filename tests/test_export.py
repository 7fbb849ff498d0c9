"""--mode=export: the serialized function reproduces the live model without the training code."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import tiny
from melgenre_jax import calibration
from melgenre_jax import errors
from melgenre_jax import inference
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import audio
from melgenre_jax.data import synthetic
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import export
from melgenre_jax.modes import exported_model
from melgenre_jax.modes import onnx_export
from melgenre_jax.runtime import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



EXCERPT = os.path.join(ROOT, 'tests', 'fixtures', 'musicnn', 'excerpt.flac')  # CC BY-SA rock


@pytest.fixture(scope='module')
def exported(tiny_run):
  """The tiny run evaluated (so the card has test metrics), then exported."""
  workdir = tiny_run
  with contextlib.redirect_stdout(io.StringIO()):
    dispatch.run('eval', None, workdir)
    contract = dispatch.run('export', None, workdir)
  return workdir, contract


def _real_segments(sample_rate: int, samples: int) -> np.ndarray:
  """Segments of a real recording and of synthetic songs, and silence."""
  songs = [audio.load_audio(EXCERPT, sample_rate)] + [
      synthetic.synthesize_song(f'synthetic/{g}/0100', sample_rate, 2 * samples / sample_rate)
      for g in ('ambient', 'disco')]
  rows = [s[i:i + samples] for s in songs for i in range(0, len(s) - samples + 1, samples)]
  return np.stack(rows + [np.zeros(samples)]).astype(np.float32)


@pytest.mark.slow
def test_contract_describes_the_function(exported):
  workdir, contract = exported
  with open(os.path.join(workdir, 'export', 'contract.json')) as f:
    saved = json.load(f)
  config = tiny.get_config()
  assert saved['genres'] == workdir_lib.load_genres(workdir)
  assert saved['sample_rate'] == config.audio.sample_rate
  assert saved['segment_samples'] == saved['segment_hop_samples'] == 8000
  assert saved['input'] == {**saved['input'], 'shape': ['b', 8000], 'dtype': 'float32',
                            'kind': 'waveform'}
  assert saved['output']['shape'] == ['b', len(saved['genres'])]
  assert 'cpu' in saved['platforms']
  assert saved['jax_version'] == jax.__version__
  assert saved['checkpoint_step'] == contract['checkpoint_step'] > 0
  entry = calibration.read_calibrations(workdir)[str(saved['checkpoint_step'])]
  assert saved['calibration']['temperature'] == entry['temperature']
  assert saved['calibration']['calibrated'] and saved['calibration']['fitted_on'] == 'validation'
  assert os.path.getsize(os.path.join(workdir, 'export', 'model.stablehlo')) > 0


@pytest.mark.slow
def test_exported_matches_live_model_in_a_process_without_training_code(exported, tmp_path):
  workdir, contract = exported
  rng = np.random.default_rng(0)
  songs = [synthetic.synthesize_song(f'synthetic/{g}/0100', 8000, 1.0)
           for g in ('ambient', 'blues', 'classical')]
  waves = np.stack(songs + [0.3 * rng.standard_normal(8000)]).astype(np.float32)
  np.save(tmp_path / 'waves.npy', waves)
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from melgenre_jax.modes.export import load_exported, song_probabilities
      predict, contract = load_exported({os.path.join(workdir, 'export')!r})
      waves = np.load({str(tmp_path / 'waves.npy')!r})
      np.save({str(tmp_path / 'batch.npy')!r}, predict(waves))
      np.save({str(tmp_path / 'single.npy')!r}, predict(waves[2]))  # batch of one
      np.save({str(tmp_path / 'song.npy')!r}, song_probabilities(predict(waves), contract))
      loaded = sorted(m for m in sys.modules if m.startswith('melgenre_jax'))
      print(loaded, 'flax' in sys.modules, 'optax' in sys.modules)
  """)
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)  # a plain one-device machine
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "['melgenre_jax', 'melgenre_jax.modes', 'melgenre_jax.modes.export'] False False"

  model = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  live = np.asarray(model.p_predict(
      model.variables, parallel.global_batch({'inputs': waves}, model.mesh)['inputs']))
  batch = np.load(tmp_path / 'batch.npy')
  assert batch.shape == (4, len(contract['genres']))
  np.testing.assert_allclose(batch, live, atol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / 'single.npy'), live[2:3], atol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / 'song.npy'),
                             model.song_probabilities(live), atol=1e-5)
  assert model.temperature == contract['calibration']['temperature']


@pytest.mark.slow
def test_loader_refuses_a_wrong_input_shape(exported):
  workdir, _ = exported
  predict, _ = export.load_exported(os.path.join(workdir, 'export'))
  with pytest.raises(ValueError, match='expected'):
    predict(np.zeros((2, 100), np.float32))


@pytest.mark.slow
def test_exported_embed_matches_inference_embed(exported):
  workdir, contract = exported
  entry = contract['functions']['embed']
  assert entry['file'] == 'embed.stablehlo' and entry['output']['shape'] == ['b', entry['dim']]
  assert contract['functions']['predict']['output'] == contract['output']
  embed_fn, _ = export.load_exported(os.path.join(workdir, 'export'), function='embed')
  model = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  waves = 0.3 * np.random.default_rng(1).standard_normal((3, 8000)).astype(np.float32)
  got = embed_fn(waves)
  assert got.shape == (3, entry['dim']) and entry['dim'] == model.embedding_dim
  np.testing.assert_allclose(got, model.embed(waves), atol=1e-5)
  np.testing.assert_allclose(embed_fn(waves[1]), got[1:2], atol=1e-5)  # one segment


@pytest.mark.slow
def test_an_export_without_embed_still_predicts(exported, tmp_path):
  workdir, _ = exported
  old = tmp_path / 'old_export'
  os.makedirs(old)
  with open(os.path.join(workdir, 'export', 'contract.json')) as f:
    contract = json.load(f)
  contract.pop('functions')
  contract['contract_version'] = 1
  with open(old / 'contract.json', 'w') as f:
    json.dump(contract, f)
  with open(os.path.join(workdir, 'export', 'model.stablehlo'), 'rb') as src:
    (old / 'model.stablehlo').write_bytes(src.read())
  predict, _ = export.load_exported(str(old))
  assert predict(np.zeros((2, 8000), np.float32)).shape == (2, len(contract['genres']))
  with pytest.raises(ValueError, match='Export the workdir again'):
    export.load_exported(str(old), function='embed')
  with pytest.raises(ValueError, match='allowed values'):
    export.load_exported(str(old), function='logits')


@pytest.mark.slow
def test_export_writes_onnx_equal_to_jax_on_real_audio(exported):
  workdir, contract = exported
  entry = contract['functions']['onnx']
  assert entry['file'] == 'model.onnx' and entry['tolerance'] == onnx_export.TOLERANCE
  assert "segments of the run's data cache" in entry['checked_on']
  assert max(entry['max_abs_difference'].values()) <= onnx_export.TOLERANCE
  model = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  waves = _real_segments(contract['sample_rate'], contract['segment_samples'])
  assert len(waves) >= 9  # 9 s of the recording at least
  got = onnx_export.run(onnx_export.session(os.path.join(workdir, 'export', 'model.onnx')),
                        waves)
  probs, emb = model.predict(waves), model.embed(waves)
  assert np.abs(got['probabilities'] - probs).max() <= onnx_export.TOLERANCE
  assert np.abs(got['embedding'] - emb).max() <= onnx_export.TOLERANCE
  assert np.ptp(probs, axis=0).max() > 1e-4  # rows differ: the comparison means something


@pytest.mark.slow
def test_model_card_is_written_from_the_run(exported):
  workdir, contract = exported
  with open(os.path.join(workdir, 'export', 'MODEL_CARD.md')) as f:
    card = f.read()
  with open(os.path.join(workdir, 'eval', 'report.json')) as f:
    report = json.load(f)
  with open(os.path.join(workdir, 'data_summary.json')) as f:
    summary = json.load(f)
  for title in ('## Task', '## Labels', '## Input format', '## Training data', '## Test metrics',
                '## Calibration', '## Pretrained weights', '## Known limits',
                '## How it was made', '## Config'):
    assert title in card
  assert ', '.join(contract['genres']) in card and '8000 Hz' in card
  song, segment = report['song'], report['segment']
  assert (f"| song | accuracy | {100 * song['accuracy']:.1f}% (95% CI "
          f"{100 * song['accuracy_95ci'][0]:.1f}% to {100 * song['accuracy_95ci'][1]:.1f}%) "
          f"({song['correct']}/{song['total']}) |") in card
  assert f"({segment['correct']}/{segment['total']})" in card
  assert f"{summary['num_songs']} songs found" in card
  assert f"stratified (seed {summary['split']['seed']}" in card
  cal = contract['calibration']
  assert f"temperature {cal['temperature']:.4g}" in card
  assert f"{cal['song_ece_before']:.4f} before, {cal['song_ece_after']:.4f} after" in card
  assert f"{report['calibration']['song']['ece_before']:.4f}" in card
  assert 'synthetic songs' in card and 'None: trained from random initialisation' in card
  with open(os.path.join(workdir, 'export', 'config.json')) as f:
    assert json.load(f) == workdir_lib.read_config_dict(workdir)


def _audio_files(folder) -> list[str]:
  """A real recording and two synthetic songs, as files predict reads."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  paths = [EXCERPT]
  for g in ('blues', 'classical'):
    path = str(folder / f'{g}.wav')
    sf.write(path, synthetic.synthesize_song(f'synthetic/{g}/0100', 8000, 2.5), 8000)
    paths.append(path)
  return paths


@pytest.mark.slow
def test_predict_from_the_export_folder_alone_equals_predict_on_the_workdir(exported, tmp_path):
  workdir, _ = exported
  alone = shutil.copytree(os.path.join(workdir, 'export'), str(tmp_path / 'model'))
  paths = _audio_files(tmp_path)
  with contextlib.redirect_stdout(io.StringIO()) as on_workdir:
    want = dispatch.run('predict', None, workdir, dispatch.RunOptions(audio=tuple(paths)))
  with contextlib.redirect_stdout(io.StringIO()) as on_folder:
    got = dispatch.run('predict', None, None, dispatch.RunOptions(audio=tuple(paths),
                                                                   model=alone))
  assert [r['genre'] for r in got] == [r['genre'] for r in want] and all(r['ok'] for r in got)
  for a, b in zip(got, want):
    assert a['num_segments'] == b['num_segments'] and len(a['timeline']) == len(b['timeline'])
    np.testing.assert_allclose(list(a['probabilities'].values()),
                               list(b['probabilities'].values()), atol=1e-4)
    np.testing.assert_allclose(a['segment_probabilities'], b['segment_probabilities'], atol=1e-4)
  assert on_folder.getvalue() == on_workdir.getvalue()  # the same printed answer


@pytest.mark.slow
def test_onnx_runtime_model_predicts_like_the_workdir(exported):
  workdir, contract = exported
  live = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  waves = _real_segments(contract['sample_rate'], contract['segment_samples'])
  for runtime in exported_model.RUNTIMES:
    model = exported_model.load_model_for_inference(os.path.join(workdir, 'export'),
                                                    runtime=runtime)
    assert isinstance(model, exported_model.ExportedModel) and model.runtime == runtime
    assert (model.genres, model.step, model.temperature, model.multilabel) == (
        live.genres, live.step, live.temperature, live.multilabel)
    assert model.spec == live.spec
    probs = model.predict(waves, batch_size=3)
    np.testing.assert_allclose(probs, live.predict(waves), atol=1e-4)
    np.testing.assert_allclose(model.song_probabilities(probs), live.song_probabilities(probs),
                               atol=1e-6)
  assert isinstance(exported_model.load_model_for_inference(workdir), inference.InferenceModel)


@pytest.mark.slow
def test_cli_predict_with_model_and_no_workdir(exported, tmp_path):
  """The issue's command, in a process started without --workdir, from a copied folder."""
  workdir, _ = exported
  alone = shutil.copytree(os.path.join(workdir, 'export'), str(tmp_path / 'model'))
  with contextlib.redirect_stdout(io.StringIO()) as on_workdir:
    dispatch.run('predict', None, workdir, dispatch.RunOptions(audio=(EXCERPT,)))
  env = {**os.environ, 'PYTHONPATH': ROOT}
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--mode=predict',
                         '--model', alone, EXCERPT], capture_output=True, text=True,
                        cwd=str(tmp_path), env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout == on_workdir.getvalue()


def test_model_flag_is_refused_where_it_cannot_work(tmp_path):
  folder = tmp_path / 'export'
  folder.mkdir()
  (folder / 'contract.json').write_text('{}')
  options = dispatch.RunOptions(model=str(folder), audio=('song.mp3',))
  with pytest.raises(errors.ConfigError, match='--model is for --mode=predict'):
    dispatch.run('eval', None, None, options)
  with pytest.raises(errors.ConfigError, match='drop --config'):
    dispatch.run('predict', tiny.get_config(), None, options)
  with pytest.raises(errors.ConfigError, match='drop --step'):
    dispatch.run('predict', None, None, dispatch.RunOptions(model=str(folder), step=4))
  with pytest.raises(errors.WorkdirError, match='not an export folder'):
    dispatch.run('predict', None, None, dispatch.RunOptions(model=str(tmp_path)))


def test_an_export_folder_without_config_is_refused_with_the_fix(tmp_path):
  (tmp_path / 'contract.json').write_text('{}')
  with pytest.raises(errors.WorkdirError, match='export the workdir again'):
    exported_model.load_export_dir(str(tmp_path))
  with pytest.raises(errors.ConfigError, match='allowed values'):
    exported_model.load_export_dir(str(tmp_path), runtime='tflite')
