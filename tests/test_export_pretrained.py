"""--mode=export of imported musicnn taggers (#31, #32): ONNX equal to JAX on a real recording.

The real MSD_musicnn and MSD_vgg weights come from the musicnn wheel, fetched
into the cache like the import does (tests/test_musicnn.py's ``wheel``; CI
reaches PyPI). Each imported workdir is exported as a user would; the ONNX
graph is then run by onnxruntime on segments of a real song and compared with
the restored JAX model, and the card must name the weights' source and licence.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

from configs import musicnn as musicnn_config
from melgenre_jax import inference
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import audio
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import import_pretrained
from melgenre_jax.modes import onnx_export
from melgenre_jax.pretrained import musicnn

EXCERPT = os.path.join(os.path.dirname(__file__), 'fixtures', 'musicnn', 'excerpt.flac')


@pytest.fixture(scope='module')
def wheel() -> str:
  return musicnn.fetch_wheel()  # downloads once into the cache (CI reaches PyPI)


@pytest.fixture(scope='module', params=['MSD_musicnn', 'MSD_vgg'])
def exported(request, wheel, tmp_path_factory):
  """(workdir, contract) of an imported tagger, exported."""
  workdir = str(tmp_path_factory.mktemp('imported') / request.param)
  with contextlib.redirect_stdout(io.StringIO()):
    import_pretrained.import_workdir(musicnn_config.get_config(), workdir,
                                     f'{wheel}:{request.param}')
    contract = dispatch.run('export', None, workdir)
  return workdir, contract


@pytest.mark.slow
def test_onnx_equals_the_imported_model_on_a_real_song(exported):
  workdir, contract = exported
  model = inference.load_for_inference(workdir_lib.load_workdir_config(workdir), workdir)
  samples = contract['segment_samples']
  song = audio.load_audio(EXCERPT, contract['sample_rate'])
  waves = np.stack([song[i:i + samples] for i in range(0, len(song) - samples + 1, samples // 2)])
  got = onnx_export.run(onnx_export.session(os.path.join(workdir, 'export', 'model.onnx')),
                        waves.astype(np.float32))
  probs, emb = model.predict(waves), model.embed(waves)
  assert len(waves) >= 4 and probs.shape[1] == 50
  assert np.abs(got['probabilities'] - probs).max() <= onnx_export.TOLERANCE
  assert np.abs(got['embedding'] - emb).max() <= onnx_export.TOLERANCE
  assert contract['genres'][int(probs.mean(0).argmax())] in ('rock', 'metal', 'hard rock')


@pytest.mark.slow
def test_card_names_the_weights_source_and_licence(exported):
  workdir, contract = exported
  with open(os.path.join(workdir, 'export', 'MODEL_CARD.md')) as f:
    card = f.read()
  assert contract['task'] == 'multilabel' and '(50 tags)' in card
  assert 'ISC' in card and 'Pons' in card and 'musicnn 0.1.0 wheel' in card
  assert 'Million Song Dataset' in card
  assert 'Not evaluated: run --mode=eval' in card
  assert 'noise segments' in contract['functions']['onnx']['checked_on']  # no data cache
