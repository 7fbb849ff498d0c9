"""Inference throughput of the ORIGINAL musicnn 0.1.0 (TensorFlow 1 graph), the #31 benchmark row's baseline.

The issue asks for the Flax port to run >= 1.5x the original implementation on
the same machine; this script measures the original side. It needs TensorFlow
and the musicnn package, so it runs in a side environment, never the
project's install (musicnn's declared deps cannot install on Python 3.11):

  python3 -m venv /work/tfenv
  /work/tfenv/bin/pip install 'tensorflow==2.21.*' tf-keras librosa soundfile
  /work/tfenv/bin/pip install --no-deps musicnn==0.1.0   # or the downloaded wheel
  TF_USE_LEGACY_KERAS=1 /work/tfenv/bin/python benchmarks/bench_musicnn_tf.py --out=/tmp/musicnn_tf.json

What is timed is musicnn.extractor's own path: the graph from
``musicnn.models.define_model`` under ``tf.compat.v1`` (a Session, default
threading), the wheel's checkpoint restored by ``Saver`` as the extractor does,
``is_training=False``, fetching the sigmoid taggram and the penultimate
embedding (what tagging and embedding need). Two inputs:

- ``logmel``: the model alone, fed a [batch, 187, 96] float32 log-mel batch
  (the fixture excerpt's 3 patches, tests/fixtures/musicnn/excerpt.flac,
  tiled to the batch size);
- ``waveform``: the extractor's whole path per batch: librosa mel of a
  16 kHz clip of ``batch * 187 * 256`` samples (the excerpt tiled), the
  float32 ``log10(10000 x + 1)`` (the extractor's float16 cast removed, as in
  tests/fixtures/musicnn/make_reference.py), 187-frame patches, the model.

Batch sizes 1 (what the extractor uses: configuration.BATCH_SIZE = 1) and 32.
Each row: --warmup untimed runs, then --rounds timed rounds of enough batches
to take about --round_seconds; the median segments/s is reported (a segment
is one 3 s, 187-frame patch). Rows alternate within each round so a shared
machine's drift hits all alike. --out writes the table as JSON; the keys the
JAX side should mirror are ``rows[*].{model, input, batch_size, segments_per_s}``
and the flat ``segments_per_s["<model>/<input>/b<batch>"]``.
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from musicnn import configuration as config  # noqa: E402
from musicnn import models  # noqa: E402

from benchmarks.peers import harness  # noqa: E402  (stdlib only)

tf.compat.v1.disable_eager_execution()

_MODELS = flags.DEFINE_list('models', ['MSD_musicnn'], 'musicnn models to time (MSD_musicnn, MTT_musicnn).')
_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '32'], 'Segments per session run.')
_INPUTS = flags.DEFINE_list('inputs', ['logmel', 'waveform'], 'logmel: model only; waveform: librosa + model.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds per row; the median is reported.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed runs per row before timing.')
_ROUND_SECONDS = flags.DEFINE_float('round_seconds', 2.0, 'Rough length of one timed round of one row.')
_OUT = flags.DEFINE_string('out', None, 'Write the results as JSON here.')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXCERPT = os.path.join(REPO_ROOT, 'tests', 'fixtures', 'musicnn', 'excerpt.flac')
N_FRAMES = 187  # 3 s at 16 kHz, hop 256
SEGMENT_SAMPLES = N_FRAMES * config.FFT_HOP  # one more patch per 187 hops of audio


def log_mel(audio: np.ndarray) -> np.ndarray:
  """The extractor's preprocessing in float32: [time, 96]."""
  mel = librosa.feature.melspectrogram(y=audio, sr=config.SR, hop_length=config.FFT_HOP,
                                       n_fft=config.FFT_SIZE, n_mels=config.N_MELS).T
  return np.log10(10000 * mel + 1)


def patches(audio_rep: np.ndarray) -> np.ndarray:
  """The extractor's non-overlapping 187-frame patches: [segments, 187, 96]."""
  starts = range(0, audio_rep.shape[0] - N_FRAMES + 1, N_FRAMES)
  return np.stack([audio_rep[t:t + N_FRAMES] for t in starts])


def tiled(x: np.ndarray, n: int) -> np.ndarray:
  """x repeated along axis 0 to exactly n rows."""
  return np.concatenate([x] * (-(-n // len(x))))[:n]


class Tagger:
  """The extractor's graph and session for one model, kept open across runs."""

  def __init__(self, model: str):
    num_classes = len(config.MSD_LABELS if 'MSD' in model else config.MTT_LABELS)
    self.graph = tf.Graph()
    with self.graph.as_default(), tf.name_scope('model'):
      self.x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, config.N_MELS])
      self.is_training = tf.compat.v1.placeholder(tf.bool)
      outputs = models.define_model(self.x, self.is_training, model, num_classes)
      self.fetch = [tf.nn.sigmoid(outputs[0]), outputs[-1]]  # taggram, penultimate
      saver = tf.compat.v1.train.Saver()
    self.sess = tf.compat.v1.Session(graph=self.graph)
    saver.restore(self.sess, os.path.join(os.path.dirname(models.__file__), model) + '/')

  def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
    return self.sess.run(self.fetch, feed_dict={self.x: batch, self.is_training: False})


def make_row(tagger: Tagger, kind: str, batch_size: int, audio: np.ndarray):
  """A callable doing one batch of ``batch_size`` segments the ``kind`` way."""
  if kind == 'logmel':
    batch = tiled(patches(log_mel(audio)), batch_size).astype(np.float32)
    return lambda: tagger(batch)
  if kind == 'waveform':
    clip = tiled(audio, batch_size * SEGMENT_SAMPLES)

    def run():
      batch = patches(log_mel(clip))
      assert batch.shape[0] == batch_size, batch.shape
      return tagger(batch)
    return run
  raise app.UsageError(f'--inputs: unknown input {kind!r}; use logmel and/or waveform')


def timed_round(fn, n: int) -> float:
  start = time.perf_counter()
  for _ in range(n):
    fn()
  return time.perf_counter() - start


def main(argv: list[str]) -> None:
  del argv
  audio, _ = librosa.load(EXCERPT, sr=config.SR)
  rows = []
  for model in _MODELS.value:
    tagger = Tagger(model)
    for kind in _INPUTS.value:
      for b in map(int, _BATCHES.value):
        fn = make_row(tagger, kind, b, audio)
        for _ in range(_WARMUP.value):
          fn()
        probe = timed_round(fn, 1)
        n = max(1, int(_ROUND_SECONDS.value / max(probe, 1e-6)))
        rows.append({'model': model, 'input': kind, 'batch_size': b, 'batches_per_round': n,
                     'fn': fn, 'rates': []})
  for _ in range(_ROUNDS.value):
    for row in rows:
      seconds = timed_round(row['fn'], row['batches_per_round'])
      row['rates'].append(row['batches_per_round'] * row['batch_size'] / seconds)
  machine = harness.machine_lines()
  print('\n'.join(machine))
  print(f'musicnn 0.1.0 original (TF {tf.__version__}, tf.compat.v1 Session), '
        f'median of {_ROUNDS.value} rounds, segment = 187 frames = 3 s at 16 kHz')
  print(f'{"model":<13} {"input":<9} {"batch":>5} {"segments/s":>11} {"ms/batch":>9}  rounds (segments/s)')
  result = {'implementation': 'musicnn 0.1.0 original, TensorFlow tf.compat.v1 Session',
            'versions': {'tensorflow': tf.__version__, 'librosa': librosa.__version__,
                         'numpy': np.__version__, 'soundfile': soundfile.__version__},
            'machine': machine, 'input_audio': 'tests/fixtures/musicnn/excerpt.flac tiled',
            'fetched': ['taggram (sigmoid, 50)', 'penultimate (200)'],
            'rounds': _ROUNDS.value, 'warmup': _WARMUP.value, 'rows': [], 'segments_per_s': {}}
  for row in rows:
    med = statistics.median(row['rates'])
    print(f'{row["model"]:<13} {row["input"]:<9} {row["batch_size"]:>5} {med:>11.1f} '
          f'{1000 * row["batch_size"] / med:>9.1f}  ' + ' '.join(f'{r:.1f}' for r in row['rates']))
    result['rows'].append({'model': row['model'], 'input': row['input'], 'batch_size': row['batch_size'],
                           'segments_per_s': med, 'segments_per_s_rounds': row['rates'],
                           'batches_per_round': row['batches_per_round']})
    result['segments_per_s'][f'{row["model"]}/{row["input"]}/b{row["batch_size"]}'] = med
  print('SUMMARY ' + ', '.join(f'{k}: {v:.1f} seg/s' for k, v in result['segments_per_s'].items()))
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=1)
      f.write('\n')


if __name__ == '__main__':
  app.run(main)
