"""Eval/predict throughput: 30 s songs classified per second (issue 8).

Run from the repository root:  python benchmarks/bench_predict.py

Rows:
- predict, WAV at 22.05 kHz / 44.1 kHz: ``predict.classify_files`` on files on
  disk, i.e. what ``--mode=predict`` does per song: decode (and resample 44.1k),
  cut into ten 3 s segments, log-mel + model on the device(s), aggregate. The
  decode share is timed apart (the same files through ``audio.load_audio``).
- evaluate from the cache: ``InferenceModel.predict`` over cached segments of
  the same songs, i.e. what ``--mode=eval`` and the per-epoch validation do.
The reference model is freshly initialised: throughput does not depend on the
weights. Median of --repeats runs after one warm-up run (which compiles).
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.peers import harness  # noqa: E402
from melgenre_jax import inference  # noqa: E402
from melgenre_jax.data import audio, synthetic  # noqa: E402
from melgenre_jax.modes import predict  # noqa: E402
from melgenre_jax.runtime import hostmem, parallel  # noqa: E402

_SONGS = flags.DEFINE_integer('songs', 20, 'Songs per timed run.')
_SECONDS = flags.DEFINE_float('song_seconds', 30.0, 'Song length.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per row; the median is reported.')

GENRES = list(synthetic.GENRES)


def write_songs(folder: str, sample_rate: int) -> list[str]:
  """Synthetic songs written as 16-bit WAV (what users' files mostly are)."""
  paths = []
  for i, song in enumerate(synthetic.list_synthetic_songs(-(-_SONGS.value // len(GENRES)))):
    if i == _SONGS.value:
      break
    wave = synthetic.synthesize_song(song.key, sample_rate, _SECONDS.value)
    path = os.path.join(folder, f'{song.key.replace("/", "_")}_{sample_rate}.wav')
    sf.write(path, wave, sample_rate, subtype='PCM_16')
    paths.append(path)
  return paths


def inference_model(config, mesh) -> inference.InferenceModel:
  variables = common.untrained_state(config, len(GENRES), mesh).variables()
  return inference.make_inference_model(config, GENRES, variables, mesh, step=0)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  hostmem.keep_freed_memory()  # as main.py: before JAX starts its backend
  config = common.reference_config()
  mesh = parallel.create_mesh()
  model = inference_model(config, mesh)
  sr = config.audio.sample_rate
  rows, files = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    for rate in (sr, 44100):
      paths = files[rate] = write_songs(tmp, rate)
      predict.classify_files(model, paths[:2])  # compiles

      def run_predict() -> int:
        results = predict.classify_files(model, paths)
        assert all(r['ok'] for r in results), results
        return len(paths)

      def run_decode() -> int:
        for p in paths:
          audio.load_audio(p, sr)
        return len(paths)

      songs_s, _ = common.median_rate(run_predict, _REPEATS.value)
      decode_s, _ = common.median_rate(run_decode, _REPEATS.value)
      rows.append((f'predict: WAV files at {rate} Hz', songs_s,
                   f'decode{" + resample" if rate != sr else ""} alone {decode_s:.1f} songs/s '
                   f'({100 * songs_s / decode_s:.0f}% of the time)'))
      print(f'{rows[-1][0]}: {songs_s:.2f} songs/s', flush=True)

    # The same songs as the eval path sees them: cached 3 s segments.
    waves = [predict.song_segments(p, model.spec)[0] for p in files[sr]]
    segs = np.concatenate(waves)
    batch = inference.inference_batch_size(config.eval_batch_size)
    model.predict(segs)  # compiled already

    def run_eval() -> int:
      model.predict(segs)
      return len(waves)

    songs_s, _ = common.median_rate(run_eval, _REPEATS.value)
    rows.append(('evaluate: cached segments (no decode)', songs_s,
                 f'{songs_s * len(segs) / len(waves):.1f} segments/s, eval batch {batch}'))

  print()
  print(f'Eval/predict throughput, reference model, {_SECONDS.value:.0f} s songs '
        f'({len(segs) // len(waves)} segments each), {_SONGS.value} songs per run, '
        f'median of {_REPEATS.value} runs, compile excluded')
  for line in harness.machine_lines():
    print(line)
  print(f'devices: {jax.device_count()} x {jax.devices()[0].device_kind}')
  print()
  print(f'| {"path":40s} | {"songs/s":>8s} | note |')
  print(f'|{"-" * 42}|{"-" * 10}|------|')
  for name, rate, note in rows:
    print(f'| {name:40s} | {rate:8.2f} | {note} |')
  print()
  print(f'SUMMARY: --mode=predict classifies {rows[0][1]:.2f} songs/s from 22.05 kHz WAV '
        f'({rows[1][1]:.2f} from 44.1 kHz); evaluation from the cache {rows[2][1]:.2f} songs/s.')


if __name__ == '__main__':
  app.run(main)
