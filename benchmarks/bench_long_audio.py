"""Peak memory of predict on long recordings: streamed vs. whole-file (issue 15).

Run from the repository root:  python benchmarks/bench_long_audio.py

Writes 16-bit stereo 44.1 kHz WAVs of --short_minutes and --long_minutes
(block by block, so this script stays small; deleted afterwards) and runs
predict on each in a fresh child process that reports its own peak resident
memory (``ru_maxrss``), with the reference model freshly initialised:

- streamed: ``predict.classify_files``, i.e. what ``--mode=predict`` does
  (``audio.stream_segments``: one decoded block and one chunk of windows in
  memory at a time);
- whole file: ``audio.load_audio`` + ``audio.segment_audio`` +
  ``InferenceModel.predict``, what predict did before; only for the short
  file unless --whole_file_long (it holds the decoded wave and every window).
- a 30 s song streamed, for the memory the process needs anyway (JAX, the
  model, the compiled step).

Each row is run --repeats times and its highest peak reported: how the
decoding thread's buffers and the model's temporaries interleave in the heap
varies from run to run.

The long file's streamed peak must stay within 1.5x the short one's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from benchmarks.peers import harness  # noqa: E402
from melgenre_jax.data import synthetic  # noqa: E402

_SHORT = flags.DEFINE_float('short_minutes', 30.0, 'Length of the shorter file.')
_LONG = flags.DEFINE_float('long_minutes', 180.0, 'Length of the longer file.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Child processes per row; the highest peak is '
                                'reported (it varies with how decoding and the model interleave).')
_WHOLE_LONG = flags.DEFINE_bool('whole_file_long', False,
                                'Also run the whole-file path on the long file (~6 GiB).')
_CHILD = flags.DEFINE_string('child', None, 'Internal: classify this file and report.')
_CHILD_PATH = flags.DEFINE_enum('child_path', 'streamed', ['streamed', 'whole'],
                                'Internal: which path the child takes.')

SAMPLE_RATE = 44100
GENRES = list(synthetic.GENRES)


def write_wav(path: str, minutes: float, block_seconds: float = 60.0) -> None:
  """A stereo recording of synthetic songs one after another, written a block at a time."""
  with sf.SoundFile(path, 'w', SAMPLE_RATE, 2, subtype='PCM_16') as f:
    left = minutes * 60.0
    songs = synthetic.list_synthetic_songs(20)
    while left > 0:
      song = songs[int(left / block_seconds) % len(songs)]
      seconds = min(block_seconds, left)
      wave = synthetic.synthesize_song(song.key, SAMPLE_RATE, seconds)
      f.write(np.stack([wave, 0.8 * wave], axis=1))
      left -= seconds


def child(path: str, how: str) -> None:
  """Classifies ``path`` and prints one JSON line: peak RSS, segments, seconds."""
  # pylint: disable=g-import-not-at-top  (the parent needs none of these)
  from benchmarks import common
  from melgenre_jax import inference
  from melgenre_jax.data import audio
  from melgenre_jax.modes import predict
  from melgenre_jax.runtime import hostmem, parallel
  # pylint: enable=g-import-not-at-top
  hostmem.keep_freed_memory()  # as main.py: before JAX starts its backend
  config = common.reference_config()
  mesh = parallel.create_mesh()
  variables = common.untrained_state(config, len(GENRES), mesh).variables()
  model = inference.make_inference_model(config, GENRES, variables, mesh, step=0)
  start = time.perf_counter()
  if how == 'streamed':
    [result] = predict.classify_files(model, [path])
    assert result['ok'], result
    segments = result['num_segments']
  else:
    segments_, _ = predict.song_segments(path, model.spec)
    probs = model.predict(model.spec.host_inputs(segments_))
    segments = len(probs)
    del segments_
  seconds = time.perf_counter() - start
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  print(json.dumps({'peak_mib': peak_kib / 1024, 'segments': segments, 'seconds': seconds,
                    'audio': audio.probe(path).duration_seconds}))


def measure(path: str, how: str) -> dict:
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), f'--child={path}',
                         f'--child_path={how}'], capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'child failed ({how}, {path}):\n{proc.stderr[-3000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _CHILD.value:
    child(_CHILD.value, _CHILD_PATH.value)
    return
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for minutes, paths in ((0.5, ['streamed']), (_SHORT.value, ['streamed', 'whole']),
                           (_LONG.value, ['streamed'] + (['whole'] if _WHOLE_LONG.value
                                                         else []))):
      path = os.path.join(tmp, f'{minutes:g}min.wav')
      write_wav(path, minutes)
      size_mib = os.path.getsize(path) / 2**20
      for how in paths:
        runs = [measure(path, how) for _ in range(_REPEATS.value)]
        got = max(runs, key=lambda r: r['peak_mib'])
        got['peaks'] = [r['peak_mib'] for r in runs]
        rows.append((minutes, how, size_mib, got))
        print(f'{minutes:g} min, {how}: peaks {", ".join(f"{p:.0f}" for p in got["peaks"])} '
              'MiB', flush=True)
      os.remove(path)

  print()
  print('Peak resident memory of predict, reference model (22.05 kHz, 3 s windows), '
        'one child process per row')
  for line in harness.machine_lines():
    print(line)
  print()
  base = rows[0][3]['peak_mib']  # the 30 s song: JAX, the model and its compilation
  print('| recording | WAV size | path | windows | seconds | peak RSS (highest of the runs) '
        '| above the 30 s song | all runs |')
  print('|---|---|---|---|---|---|---|---|')
  for minutes, how, size_mib, got in rows:
    print(f'| {minutes:g} min | {size_mib:.0f} MiB | {how} | {got["segments"]} | '
          f'{got["seconds"]:.1f} | {got["peak_mib"]:.0f} MiB | '
          f'{got["peak_mib"] - base:+.0f} MiB | '
          f'{", ".join(f"{p:.0f}" for p in got["peaks"])} MiB |')
  peak = {(m, h): g['peak_mib'] for m, h, _, g in rows}
  ratio = peak[(_LONG.value, 'streamed')] / peak[(_SHORT.value, 'streamed')]
  print()
  print(f'SUMMARY: streamed predict peaks at {peak[(_SHORT.value, "streamed")]:.0f} MiB on '
        f'{_SHORT.value:g} min and {peak[(_LONG.value, "streamed")]:.0f} MiB on '
        f'{_LONG.value:g} min ({ratio:.2f}x; limit 1.5x); the whole-file path peaks at '
        f'{peak[(_SHORT.value, "whole")]:.0f} MiB on {_SHORT.value:g} min.')
  if ratio > 1.5:
    raise SystemExit(f'FAIL: {ratio:.2f}x > 1.5x')


if __name__ == '__main__':
  app.run(main)
