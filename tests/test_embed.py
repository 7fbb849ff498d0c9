"""--mode=embed and the embedding API: the head's input, per song and per segment."""

import contextlib
import csv
import io
import os
import shlex
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from configs import tiny
from melgenre_jax import inference
from melgenre_jax import models
from melgenre_jax import steps
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import input_pipeline
from melgenre_jax.data import synthetic
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.models import crnn
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import embed
from melgenre_jax.modes import predict
from melgenre_jax.runtime import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_PREFIX = 'python main.py --workdir runs/synthetic --mode embed'
DIM = 2 * tiny.get_config().model.lstm_sizes[-1]


def _write_inputs(folder: str) -> dict[str, str]:
  """Two songs (other rates and formats) and two files that give no embedding."""
  os.makedirs(os.path.join(folder, 'sub'))
  paths = {name: os.path.join(folder, name) for name in
           ('song.wav', 'sub/clip.flac', 'corrupt.wav', 'empty.ogg')}
  sf.write(paths['song.wav'], synthetic.synthesize_song('synthetic/blues/0100', 22050, 3.5),
           22050)  # resampled to 8 kHz: 3 segments of 1 s
  sf.write(paths['sub/clip.flac'], synthetic.synthesize_song('synthetic/disco/0100', 8000, 0.7),
           8000)  # shorter than a segment: padded, 1 segment
  with open(paths['corrupt.wav'], 'wb') as f:
    f.write(b'RIFF\x10\x00\x00\x00WAVEgarbage' * 30)
  open(paths['empty.ogg'], 'wb').close()
  return paths


def _read_csv(path: str) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _config(workdir: str):
  config = workdir_lib.load_workdir_config(workdir)
  config.data.min_song_seconds = 0.5
  return config


@pytest.fixture(scope='module')
def embedded(tiny_run, tmp_path_factory):
  """The tiny run's embeddings of a folder, per segment too, through dispatch.run."""
  workdir = tiny_run
  folder = str(tmp_path_factory.mktemp('audio'))
  paths = _write_inputs(folder)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    summary = dispatch.run('embed', _config(workdir), workdir,
                           dispatch.RunOptions(audio=(folder,), per_segment=True))
  out_dir = os.path.join(workdir, 'embeddings')
  assert out.getvalue().strip() == out_dir
  return workdir, paths, summary, out_dir


# ----------------------------------------------------------------------------
# Fast: the model and the compiled step, no trained run needed.


def _tiny_variables(config, num_classes=4):
  spec = InputSpec.from_config(config)
  model = steps.create_model(config, num_classes)
  variables = jax.jit(lambda k: steps.init_variables(spec, model, k))(jax.random.PRNGKey(0))
  return spec, model, variables


def test_embedding_is_the_head_input_and_logits_are_unchanged():
  model = crnn.DualBranchCRNN(num_classes=4, conv_features=4, lstm_sizes=(8, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 32, 32))
  v = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  both, h = jax.jit(lambda v, x: model.apply(v, x, train=False, return_embedding=True))(v, x)
  assert h.shape == (3, 8) == (3, models.embedding_dim(tiny.get_config().model))
  np.testing.assert_array_equal(both, logits)
  head = v['params']['head']
  np.testing.assert_allclose(h @ head['kernel'] + head['bias'], logits, atol=1e-5)


def test_embed_step_is_the_same_on_one_and_two_devices():
  assert jax.device_count() >= 2  # conftest forces two CPU devices
  config = tiny.get_config()
  spec, model, variables = _tiny_variables(config)
  waves = 0.3 * np.random.default_rng(0).standard_normal((4, spec.segment_samples))
  out = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = parallel.create_mesh(devices)
    placed = jax.device_put(variables, parallel.replicated(mesh))
    step = steps.make_embed_step(mesh, model.apply, spec.device_preprocess(), microbatch=2)
    out.append(np.asarray(step(placed, parallel.global_batch(
        {'inputs': waves.astype(np.float32)}, mesh)['inputs'])))
  assert out[0].shape == (4, DIM) and out[0].dtype == np.float32
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_song_means_and_empty_songs():
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  means, counts = embed.song_means(x, np.array([0, 0, 2, 2]), 3)
  np.testing.assert_allclose(means, [x[:2].mean(0), np.zeros(3), x[2:].mean(0)])
  assert counts.tolist() == [2, 0, 2]


def test_embed_options_take_the_window_flags_and_ignore_the_answer_ones():
  """Built from the run's options in dispatch; --top_k/--min_confidence are predict's."""
  got = dispatch.embed_options(dispatch.RunOptions(
      audio=('a.wav', 'b/'), step=7, per_segment=True, embed_dir='e', hop_seconds=0.5,
      offset_seconds=2.0, max_seconds=9.0, top_k=0, min_confidence=2.0))
  assert got == embed.EmbedOptions(
      paths=('a.wav', 'b/'), step=7, per_segment=True, embed_dir='e',
      reading=predict.Options(hop_seconds=0.5, offset_seconds=2.0, max_seconds=9.0))
  run = dispatch.RunOptions(hop_seconds=0.5, top_k=2, min_confidence=0.4)
  assert dispatch.predict_options(run).reading == predict.Options(
      top_k=2, hop_seconds=0.5, min_confidence=0.4)


# ----------------------------------------------------------------------------
# On the shared tiny run (trains once per session: slow lane).


@pytest.mark.slow
def test_files_rows_and_columns(embedded):
  _, paths, summary, out_dir = embedded
  songs = np.load(os.path.join(out_dir, 'embeddings.npy'))
  rows = _read_csv(os.path.join(out_dir, 'embeddings.csv'))
  assert songs.shape == (2, DIM) and songs.dtype == np.float32
  assert list(rows[0]) == ['path', 'duration', 'segments', 'row']
  assert [r['path'] for r in rows] == [paths['song.wav'], paths['sub/clip.flac']]
  assert [int(r['row']) for r in rows] == [0, 1]
  assert [int(r['segments']) for r in rows] == [3, 1]
  assert float(rows[0]['duration']) == pytest.approx(3.5, abs=1e-3)
  np.testing.assert_array_equal(songs, summary['embeddings'])
  assert summary['checkpoint_step'] == inference.checkpoint_step(embedded[0])


@pytest.mark.slow
def test_unreadable_files_are_skipped_with_a_reason(embedded):
  _, paths, summary, out_dir = embedded
  skipped = {r['path']: r['reason'] for r in _read_csv(os.path.join(out_dir, 'skipped.csv'))}
  assert sorted(skipped) == sorted([paths['corrupt.wav'], paths['empty.ogg']])
  assert 'not a readable audio file' in skipped[paths['corrupt.wav']]
  assert 'empty file' in skipped[paths['empty.ogg']]
  assert sum(not r['ok'] for r in summary['results']) == 2


@pytest.mark.slow
def test_song_row_is_the_mean_of_its_segment_rows(embedded):
  _, paths, _, out_dir = embedded
  songs = np.load(os.path.join(out_dir, 'embeddings.npy'))
  segments = np.load(os.path.join(out_dir, 'segment_embeddings.npy'))
  rows = _read_csv(os.path.join(out_dir, 'segment_embeddings.csv'))
  assert list(rows[0]) == ['path', 'segment', 'start_seconds', 'row']
  assert segments.shape == (4, DIM) and [int(r['row']) for r in rows] == [0, 1, 2, 3]
  assert [(r['path'], int(r['segment']), float(r['start_seconds'])) for r in rows] == [
      (paths['song.wav'], 0, 0.0), (paths['song.wav'], 1, 1.0), (paths['song.wav'], 2, 2.0),
      (paths['sub/clip.flac'], 0, 0.0)]
  np.testing.assert_allclose(songs[0], segments[:3].mean(0), atol=1e-6)
  np.testing.assert_allclose(songs[1], segments[3], atol=1e-6)


@pytest.mark.slow
def test_the_head_reads_the_embedding_with_the_restored_params(embedded):
  workdir, paths, _, out_dir = embedded
  model = inference.load_for_inference(_config(workdir), workdir)
  x, _ = predict.song_segments(paths['song.wav'], model.spec)
  h = model.embed(x)
  assert h.shape == (3, model.embedding_dim) == (3, DIM)
  head = jax.device_get(model.variables.params['head'])
  logits = h @ head['kernel'] + head['bias']
  probs = np.exp(logits - logits.max(1, keepdims=True))
  np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), model.predict(x), atol=1e-5)
  # The streamed mode's rows are the whole-file path's (within resampling rounding).
  np.testing.assert_allclose(np.load(os.path.join(out_dir, 'segment_embeddings.npy'))[:3], h,
                             atol=1e-4)
  assert model.embed(x[:0]).shape == (0, DIM)


@pytest.mark.slow
def test_embed_songs_takes_waves_and_paths(embedded):
  workdir, paths, _, out_dir = embedded
  model = inference.load_for_inference(_config(workdir), workdir)
  wave = synthetic.synthesize_song('synthetic/ambient/0100', 8000, 2.0)
  vectors, rows = embed.embed_songs(
      model, [wave, paths['song.wav'], np.zeros((2, 2)), paths['corrupt.wav']],
      per_segment=True)
  assert vectors.shape == (2, DIM)
  assert [r['row'] for r in rows] == [0, 1, None, None]
  assert rows[0]['path'] == '<array 0>' and rows[0]['segments'] == 2
  np.testing.assert_allclose(vectors[0], model.embed(wave.reshape(2, 8000)).mean(0),
                             atol=1e-6)
  np.testing.assert_allclose(vectors[1], np.load(os.path.join(out_dir, 'embeddings.npy'))[0],
                             atol=1e-6)
  assert 'mono' in rows[2]['reason'] and rows[3]['reason']
  assert rows[1]['segment_embeddings'].shape == (3, DIM)


@pytest.mark.slow
def test_without_per_segment_and_nothing_embeddable(embedded, tmp_path):
  workdir, paths, _, _ = embedded
  out_dir = str(tmp_path / 'emb')
  os.makedirs(out_dir)
  for name in ('segment_embeddings.npy', 'segment_embeddings.csv'):  # a stale earlier run's
    (tmp_path / 'emb' / name).write_text('stale')
  with contextlib.redirect_stdout(io.StringIO()):
    dispatch.run('embed', _config(workdir), workdir,
                 dispatch.RunOptions(audio=(paths['song.wav'],), embed_dir=out_dir))
  assert sorted(os.listdir(out_dir)) == ['embeddings.csv', 'embeddings.json', 'embeddings.npy',
                                         'skipped.csv']
  assert np.load(os.path.join(out_dir, 'embeddings.npy')).shape == (1, DIM)
  with contextlib.redirect_stdout(io.StringIO()):
    with pytest.raises(predict.NothingClassifiedError, match='corrupt.wav'):
      dispatch.run('embed', _config(workdir), workdir,
                   dispatch.RunOptions(audio=(paths['corrupt.wav'],), embed_dir=out_dir))
  assert len(_read_csv(os.path.join(out_dir, 'skipped.csv'))) == 1


@pytest.mark.slow
def test_dataset_split_embeddings_for_a_linear_probe(embedded):
  workdir = embedded[0]
  config = workdir_lib.load_workdir_config(workdir)
  model = inference.load_for_inference(config, workdir)
  dataset = input_pipeline.load_dataset(config, workdir)
  x, y = embed.embed_dataset_split(model, dataset.train)
  assert x.shape == (len(dataset.train.songs), DIM) and x.dtype == np.float32
  assert y.tolist() == [dataset.genres.index(s.genre) for s in dataset.train.songs]
  first = dataset.train.song_index == 0
  np.testing.assert_allclose(x[0], model.embed(dataset.train.inputs[first]).mean(0), atol=1e-6)
  splits = embed.embed_workdir_splits(config, workdir)
  assert sorted(splits) == ['test', 'train', 'validation']
  np.testing.assert_allclose(splits['train'][0], x, atol=1e-6)
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  probe = LogisticRegression(max_iter=200).fit(*splits['train'])
  assert 0.0 <= probe.score(*splits['test']) <= 1.0


def _readme_embed_commands() -> list[str]:
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    found = [line.split('  #')[0].strip() for line in f if line.startswith(README_PREFIX)]
  return found or [f'{README_PREFIX} song.mp3 my_folder/ --per_segment']


# Flags of main.py that take the next argument as their value (the rest name audio).
_VALUE_FLAGS = ('--workdir', '--mode', '--step', '--embed_dir', '--offset_seconds',
                '--max_seconds', '--hop_seconds', '--audio')


def _named_inputs(args: list[str]) -> list[str]:
  """The audio a command line names (positional paths and --audio values)."""
  out, flag = [], None
  for a in args:
    if flag is not None:
      out.extend(a.split(',') if flag == '--audio' else [])
      flag = None
    elif a in _VALUE_FLAGS:
      flag = a
    elif not a.startswith('-'):
      out.append(a)
  return out


@pytest.mark.slow
@pytest.mark.parametrize('command', _readme_embed_commands())
def test_command_line_runs_verbatim(command, tiny_run, tmp_path):
  """The README's embed lines (or a default one) with the tiny run as runs/synthetic.

  Each audio path the line names is made: a folder (ending in '/') with one
  song in it, else one song file.
  """
  shutil.copytree(tiny_run, tmp_path / 'runs' / 'synthetic')
  argv = shlex.split(command)
  named = _named_inputs(argv[2:])
  for name in named:
    path = tmp_path / name / 'a.wav' if name.endswith('/') else tmp_path / name
    os.makedirs(path.parent, exist_ok=True)
    wave = synthetic.synthesize_song('synthetic/blues/0100', 22050, 3.0)
    sf.write(str(path), np.asarray(wave, np.float32), 22050)
  argv = [sys.executable, os.path.join(ROOT, 'main.py')] + argv[2:]
  proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  out_dir = tmp_path / 'runs' / 'synthetic' / 'embeddings'
  rows = _read_csv(str(out_dir / 'embeddings.csv'))
  assert len(rows) == len(named) and np.load(out_dir / 'embeddings.npy').shape == (len(named), DIM)
  assert _read_csv(str(out_dir / 'skipped.csv')) == []
  if '--per_segment' in argv:
    assert np.load(out_dir / 'segment_embeddings.npy').shape[1] == DIM
