"""End-to-end epoch on a GTZAN-sized synthetic set, and the one-off cache build (issue 8).

Run from the repository root:  python benchmarks/bench_epoch.py

The set is configs/default.py's synthetic source: 1000 songs x 30 s (100 per
genre), 10 segments each, song-level split 70/20/10. Timed:
1. building the cache (synthesis + segmentation, config.data.cache_workers
   processes) in a fresh --workdir/cache; a rerun with --reuse_cache skips it;
2. ``train.train_and_evaluate`` for one epoch of the reference model with the
   cache already built: the whole call, and inside it the epoch's train steps
   (metrics.json's epoch_seconds) and the rest (compile, validation, checkpoint);
3. the bare compiled train step of the same config on one device-resident
   batch, called back to back (--bare_steps calls, one sync at the end): the
   loop's steps/s can at best equal it, and the ratio shows what the loop
   (loading, transfer, metrics, progress bar) costs on top.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.peers import harness  # noqa: E402
from melgenre_jax import train  # noqa: E402
from melgenre_jax.data import input_pipeline  # noqa: E402
from melgenre_jax.runtime import cpu_devices  # noqa: E402
from melgenre_jax.runtime import parallel  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/melgenre_bench_epoch', 'Run directory (replaced).')
_REUSE = flags.DEFINE_bool('reuse_cache', False, 'Keep WORKDIR/cache from an earlier run.')
_SONGS = flags.DEFINE_integer('songs_per_genre', 100, 'Songs per genre (100: GTZAN-sized).')
_BARE_STEPS = flags.DEFINE_integer('bare_steps', 30, 'Timed calls of the bare compiled step.')


def bare_step_rate(config, num_classes: int, calls: int) -> float:
  """Steps/s of the compiled train step alone: same batch, no host work between calls."""
  mesh = parallel.create_mesh()
  step, state, batch, _ = common.compiled_train_step(config, num_classes, mesh)
  state, m = step(state, batch)  # warm-up
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(calls):
    state, m = step(state, batch)
  jax.block_until_ready((state, m))
  return calls / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  cache_dir = os.path.join(workdir, 'cache')
  run_dir = os.path.join(workdir, 'run')
  shutil.rmtree(run_dir, ignore_errors=True)
  if not _REUSE.value:
    shutil.rmtree(cache_dir, ignore_errors=True)
  config = common.reference_config(
      data__source='synthetic', data__cache_dir=cache_dir,
      data__synthetic__songs_per_genre=_SONGS.value, num_epochs=1, progress_bar=False,
      # Epoch 1 of the reference schedule (its warm-up) as the whole schedule.
      schedule__stage_ends=(1,), schedule__stage_start_lrs=(5e-5,),
      schedule__stage_end_lrs=(1.55e-4,))
  cpu_devices.configure(config.cpu_devices, config.batch_size)  # as dispatch.run does

  start = time.perf_counter()
  dataset = input_pipeline.load_dataset(config, os.path.join(workdir, 'cache_probe'))
  cache_s = time.perf_counter() - start
  reused = dataset.summary['cache_reused']
  steps = input_pipeline.steps_per_epoch(len(dataset.train), config.batch_size)
  print(f'cache {"reused" if reused else "built"} in {cache_s:.1f} s: '
        f'{len(dataset.train.songs) + len(dataset.validation.songs) + len(dataset.test.songs)} '
        f'songs, {len(dataset.train)} train segments ({steps} steps of {config.batch_size})',
        flush=True)

  start = time.perf_counter()
  train.train_and_evaluate(config, run_dir)
  total_s = time.perf_counter() - start
  with open(os.path.join(run_dir, 'metrics.json')) as f:
    row = json.load(f)[-1]
  epoch_s = row['epoch_seconds']
  loop_rate = steps / epoch_s
  bare_rate = bare_step_rate(config, len(dataset.genres), _BARE_STEPS.value)

  print()
  print(f'End-to-end epoch, reference model on the synthetic set: {_SONGS.value * 10} songs x '
        f'{config.data.synthetic.song_seconds:.0f} s, {len(dataset.train)} train / '
        f'{len(dataset.validation)} validation segments, batch {config.batch_size}, '
        f'features.where={config.features.where}, cache_workers={config.data.cache_workers}')
  for line in harness.machine_lines():
    print(line)
  print(f'devices: {jax.device_count()} x {jax.devices()[0].device_kind}')
  print()
  print('| phase | seconds | note |')
  print('|---|---|---|')
  print(f'| cache build (one-off) | {cache_s:.1f} | {"REUSED, not built" if reused else "synthesis + segmenting"} |')
  print(f'| train steps of epoch 1 | {epoch_s:.1f} | {steps} steps, {steps / epoch_s:.2f} steps/s, '
        f'{steps * config.batch_size / epoch_s:.1f} samples/s |')
  print(f'| rest of train_and_evaluate | {total_s - epoch_s:.1f} | init, compile, validation, '
        'checkpoint, plots |')
  print(f'| bare compiled step, same config | {_BARE_STEPS.value / bare_rate:.1f} | '
        f'{_BARE_STEPS.value} calls, {bare_rate:.2f} steps/s; the loop reaches '
        f'{loop_rate / bare_rate:.1%} of it |')
  print(f'| train_and_evaluate, 1 epoch | {total_s:.1f} | cache already built |')
  print()
  print(f'SUMMARY: one epoch of {len(dataset.train)} segments takes {total_s:.0f} s end to end '
        f'({epoch_s:.0f} s of train steps, {loop_rate / bare_rate:.1%} of the bare step rate); the cache build {"was reused" if reused else f"takes {cache_s:.0f} s once"}.')


if __name__ == '__main__':
  app.run(main)
