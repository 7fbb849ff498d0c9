"""--mode=export: the serialized function reproduces the live model without the training code."""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import tiny
from melgenre_jax import calibration
from melgenre_jax import inference
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import synthetic
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import export
from melgenre_jax.runtime import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@pytest.fixture(scope='module')
def exported(tiny_run):
  workdir = tiny_run
  with contextlib.redirect_stdout(io.StringIO()):
    contract = dispatch.run('export', None, workdir)
  return workdir, contract


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
