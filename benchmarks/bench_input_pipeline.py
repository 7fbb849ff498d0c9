"""Input pipeline: batches/s the grain loader delivers vs. what the train step eats (issue 8).

Run from the repository root:  python benchmarks/bench_input_pipeline.py

Builds (or reuses, under --cache_dir) the cache of a synthetic set for both
cache kinds - raw 3 s waves (features.where=device, the default) and librosa
log-mels (features.where=host) - then times, for each kind, the grain train
loader with 0, 1 and 2 worker processes (reference batch 32) and the compiled
reference train step on that kind of batch. Each row is the median of
--repeats timed runs of --batches batches after one warm-up run that starts the
loader (and its workers); the loader's "headroom" is its rate divided by the
step's: below 1 the loader would starve the step.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.peers import harness  # noqa: E402
from melgenre_jax.data import input_pipeline  # noqa: E402
from melgenre_jax.runtime import hostmem, parallel  # noqa: E402

_CACHE_DIR = flags.DEFINE_string('cache_dir', '/tmp/melgenre_bench_cache',
                                 'Where the synthetic caches are built once and reused.')
_SONGS = flags.DEFINE_integer('songs_per_genre', 10, 'Synthetic songs per genre (x 10 genres).')
_SECONDS = flags.DEFINE_float('song_seconds', 30.0, 'Synthetic song length (10 segments at 30 s).')
_BATCHES = flags.DEFINE_integer('batches', 30, 'Batches per timed run of a loader.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Train steps per timed run.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per row; the median is reported.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'grain worker counts to time.')


def kind_config(where: str):
  return common.reference_config(
      data__source='synthetic', data__cache_dir=_CACHE_DIR.value,
      data__synthetic__songs_per_genre=_SONGS.value,
      data__synthetic__song_seconds=_SECONDS.value,
      features__where=where, progress_bar=False)


def loader_rate(train_set, config, workers: int) -> tuple[float, float]:
  """(median batches/s, seconds to the first batch) of one grain loader."""
  loader = input_pipeline.create_train_loader(
      train_set, global_batch_size=config.batch_size, seed=0, worker_count=workers)
  it = iter(loader)
  start = time.perf_counter()
  next(it)  # starts worker processes / reader threads
  first = time.perf_counter() - start
  for _ in range(_BATCHES.value):  # warm-up run: fills the prefetch buffers
    next(it)

  def run() -> int:
    for _ in range(_BATCHES.value):
      batch = next(it)
    assert batch['inputs'].shape[0] == config.batch_size
    return _BATCHES.value

  rate, _ = common.median_rate(run, _REPEATS.value)
  return rate, first  # the loader's workers stop when it is collected


def step_rate(config, num_classes: int, mesh) -> tuple[float, float]:
  step, state, batch, compile_s = common.compiled_train_step(config, num_classes, mesh)
  state, m = step(state, batch)
  jax.block_until_ready(m)
  box = [state]

  def run() -> int:
    for _ in range(_STEPS.value):
      box[0], m = step(box[0], batch)
    jax.block_until_ready(m)
    return _STEPS.value

  rate, _ = common.median_rate(run, _REPEATS.value)
  return rate, compile_s


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  hostmem.keep_freed_memory()  # as main.py: before JAX starts its backend
  mesh = parallel.create_mesh()
  rows = []
  for where, what in (('device', 'raw 3 s waves (features.where=device)'),
                      ('host', 'log-mels (features.where=host)')):
    config = kind_config(where)
    start = time.perf_counter()
    dataset = input_pipeline.load_dataset(config, os.path.join(_CACHE_DIR.value, f'workdir_{where}'))
    built = time.perf_counter() - start
    reused = dataset.summary['cache_reused']
    print(f'{what}: cache {"reused" if reused else "built"} in {built:.1f} s, '
          f'{len(dataset.train)} train segments, '
          f'{dataset.train.inputs[0].nbytes * config.batch_size / 2**20:.1f} MiB per batch', flush=True)
    s_rate, compile_s = step_rate(config, len(dataset.genres), mesh)
    rows.append((what, 'train step (reference model)', s_rate, None, f'compile {compile_s:.0f} s'))
    for w in map(int, _WORKERS.value):
      rate, first = loader_rate(dataset.train, config, w)
      rows.append((what, f'grain loader, worker_count={w}', rate, rate / s_rate,
                   f'first batch {first:.2f} s'))
      print(f'  worker_count={w}: {rate:.1f} batches/s', flush=True)

  print()
  print(f'Input pipeline vs. train step: batch {config.batch_size}, median of {_REPEATS.value} runs '
        f'({_BATCHES.value} loader batches / {_STEPS.value} steps each), warm-up excluded')
  for line in harness.machine_lines():
    print(line)
  print(f'devices: {jax.device_count()} x {jax.devices()[0].device_kind}')
  print()
  print(f'| {"cache holds":38s} | {"row":30s} | {"batches/s":>9s} | {"x step":>7s} | note |')
  print(f'|{"-" * 40}|{"-" * 32}|{"-" * 11}|{"-" * 9}|------|')
  for what, row, rate, ratio, note in rows:
    r = f'{ratio:7.1f}' if ratio is not None else '      -'
    print(f'| {what:38s} | {row:30s} | {rate:9.2f} | {r} | {note} |')
  print()
  worst = min((r for r in rows if r[3] is not None), key=lambda r: r[3])
  print(f'SUMMARY: slowest loader ({worst[1]}, {worst[0]}) delivers {worst[3]:.1f}x the batches '
        f'the train step consumes ({"never the bottleneck" if worst[3] >= 1 else "BOTTLENECK"}).')


if __name__ == '__main__':  # grain spawns worker processes: keep the guard
  app.run(main)
