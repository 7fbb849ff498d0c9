"""Eval/predict throughput: songs classified per second (issue 8), a library (issue 15).

Run from the repository root:  python benchmarks/bench_predict.py

Rows:
- predict, WAV at 22.05 kHz / 44.1 kHz: ``predict.classify_files`` on files on
  disk, i.e. what ``--mode=predict`` does per song: decode (and resample 44.1k),
  cut into ten 3 s segments, log-mel + model on the device(s), aggregate. The
  decode share is timed apart (the same files through ``audio.load_audio``).
- evaluate from the cache: ``InferenceModel.predict`` over cached segments of
  the same songs, i.e. what ``--mode=eval`` and the per-epoch validation do.
- a library: a folder of --library_files songs of 10-30 s (44.1 kHz stereo
  WAV, as ripped CDs are) through ``predict.classify_files``, decoding in the
  calling thread (``decode_workers=0``) vs. in threads ahead of the model (the
  default), files/s. The two rows alternate within each round, so the drift
  of a shared machine hits both alike.
The reference model is freshly initialised: throughput does not depend on the
weights. Median of --repeats runs after one warm-up run (which compiles).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

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
from melgenre_jax.runtime import cpu_devices, hostmem, parallel  # noqa: E402

_SONGS = flags.DEFINE_integer('songs', 20, 'Songs per timed run.')
_SECONDS = flags.DEFINE_float('song_seconds', 30.0, 'Song length.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per row; the median is reported.')
_LIBRARY_FILES = flags.DEFINE_integer('library_files', 200, 'Files in the library rows (0: skip).')

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


def write_library(folder: str, count: int, sample_rate: int = 44100) -> list[str]:
  """``count`` synthetic songs of 10, 15, ... 30 s as 16-bit stereo WAV."""
  os.makedirs(folder, exist_ok=True)
  songs = synthetic.list_synthetic_songs(-(-count // len(GENRES)))
  paths = []
  for i, song in enumerate(songs[:count]):
    wave = synthetic.synthesize_song(song.key, sample_rate, 10.0 + 5 * (i % 5))
    path = os.path.join(folder, f'{i:04d}.wav')
    sf.write(path, np.stack([wave, wave[::-1]], axis=1), sample_rate, subtype='PCM_16')
    paths.append(path)
  return paths


def library_rows(model: inference.InferenceModel, folder: str, count: int,
                 repeats: int) -> list[tuple[str, float, str]]:
  """Sequential vs. overlapped decoding on one folder, rows timed in turn each round."""
  paths = write_library(folder, count)
  seconds = sum(sf.info(p).duration for p in paths)
  predict.classify_files(model, paths[:4])  # compiles the batch shapes
  variants = {'decoded in the calling thread (`decode_workers=0`)': 0,
              f'decoded ahead in {predict.DEFAULT_DECODE_WORKERS} threads (default)':
                  predict.DEFAULT_DECODE_WORKERS}
  rates = {name: [] for name in variants}
  for _ in range(repeats):
    for name, workers in variants.items():
      start = time.perf_counter()
      results = predict.classify_files(model, [folder], decode_workers=workers)
      rates[name].append(len(results) / (time.perf_counter() - start))
      assert len(results) == count and all(r['ok'] for r in results)

  def decode_only() -> int:
    for p in paths:
      for _ in audio.stream_segments(p, model.spec.sample_rate, model.spec.segment_samples,
                                     model.spec.hop_samples, model.spec.min_samples):
        pass
    return count

  decode_rate, _ = common.median_rate(decode_only, repeats)
  rows = [(f'library, {name}', statistics.median(r),
           f'runs: {", ".join(f"{x:.2f}" for x in r)}') for name, r in rates.items()]
  rows.append(('library, decode + resample alone', decode_rate,
               f'{count} files, {seconds / 60:.0f} min of audio, 44.1 kHz stereo WAV'))
  return rows


def inference_model(config, mesh) -> inference.InferenceModel:
  variables = common.untrained_state(config, len(GENRES), mesh).variables()
  return inference.make_inference_model(config, GENRES, variables, mesh, step=0)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  hostmem.keep_freed_memory()  # as main.py: before JAX starts its backend
  config = common.reference_config()
  cpu_devices.configure(config.cpu_devices, config.batch_size)  # as dispatch.run does
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
    library = (library_rows(model, os.path.join(tmp, 'library'), _LIBRARY_FILES.value,
                            _REPEATS.value) if _LIBRARY_FILES.value else [])

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
  if library:
    print()
    print(f'| {"library path":60s} | {"files/s":>8s} | note |')
    print(f'|{"-" * 62}|{"-" * 10}|------|')
    for name, rate, note in library:
      print(f'| {name:60s} | {rate:8.2f} | {note} |')
  print()
  if library:
    print(f'SUMMARY: decoding ahead classifies a library at {library[1][1]:.2f} files/s vs. '
          f'{library[0][1]:.2f} decoding in turn ({library[1][1] / library[0][1]:.2f}x).')
  print(f'SUMMARY: --mode=predict classifies {rows[0][1]:.2f} songs/s from 22.05 kHz WAV '
        f'({rows[1][1]:.2f} from 44.1 kHz); evaluation from the cache {rows[2][1]:.2f} songs/s.')


if __name__ == '__main__':
  app.run(main)
