"""Train-step throughput of a musicnn fine-tune by what stays frozen (#31).

  python benchmarks/bench_musicnn_train.py [--frozen=backbone,frontend,input_bn,none] [--rounds=3]

Each row is configs/musicnn_finetune.py's compiled train step (3 s of 16 kHz
audio in, the log-mel computed in the step, batch --batch_size, Adam with the
backbone's own learning rate) with ``config.model.frozen`` set to the row's
value ('none' = every layer trains) and the backbone unfrozen from the first
step, so the row times what that setting's fine-tune phase costs. Weights are
freshly initialised: throughput does not depend on them. Rows alternate within
each round so drift on a shared machine hits all alike; the median round is
reported, compilation excluded.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from melgenre_jax.runtime import cpu_devices  # noqa: E402

_FROZEN = flags.DEFINE_list('frozen', ['backbone', 'frontend', 'input_bn', 'none'],
                            "config.model.frozen values to time ('none': every layer trains).")
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Segments per train step.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds; each row runs ~--round_seconds a round.')
_ROUND_SECONDS = flags.DEFINE_float('round_seconds', 5.0, 'Rough length of one row in a round.')
NUM_CLASSES = 10


def row_config(frozen: str):
  """configs/musicnn_finetune.py as a fine-tune phase with ``model.frozen=frozen``, no import."""
  from configs import musicnn_finetune  # pylint: disable=g-import-not-at-top
  config = musicnn_finetune.get_config()
  config.init_from = ''  # random weights: the step's cost is the same
  config.model.frozen = '' if frozen == 'none' else frozen
  config.finetune.freeze_backbone_epochs = 0
  config.batch_size = _BATCH.value
  return config


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  cpu_devices.configure(int(row_config('none').cpu_devices), _BATCH.value)
  import jax  # pylint: disable=g-import-not-at-top  (after cpu_devices.configure)
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from benchmarks.peers import harness  # pylint: disable=g-import-not-at-top
  from melgenre_jax.runtime import parallel  # pylint: disable=g-import-not-at-top

  mesh = parallel.create_mesh()
  rows = []
  for frozen in _FROZEN.value:
    step, state, batch, compile_s = common.compiled_train_step(row_config(frozen), NUM_CLASSES, mesh)
    start = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    one = time.perf_counter() - start
    rows.append({'frozen': frozen, 'step': step, 'state': state, 'batch': batch,
                 'compile_s': compile_s, 'calls': max(1, int(_ROUND_SECONDS.value / one)),
                 'rates': []})
  for _ in range(_ROUNDS.value):
    for row in rows:
      start = time.perf_counter()
      for _ in range(row['calls']):
        row['state'], _ = row['step'](row['state'], row['batch'])
      jax.block_until_ready(row['state'])
      row['rates'].append(row['calls'] * _BATCH.value / (time.perf_counter() - start))

  print('\n'.join(harness.machine_lines()))
  print(f'musicnn fine-tune train step (configs/musicnn_finetune.py, batch {_BATCH.value}, '
        f'{jax.device_count()} CPU device(s)): median segments/s over {_ROUNDS.value} rounds')
  print(f'| {"model.frozen":<12} | {"segments/s":>10} | {"s / 280 segments":>16} | {"compile s":>9} |')
  print(f'|{"-" * 14}|{"-" * 12}|{"-" * 18}|{"-" * 11}|')
  for row in rows:
    rate = statistics.median(row['rates'])
    print(f'| {row["frozen"]:<12} | {rate:>10.1f} | {280 / rate:>16.0f} | {row["compile_s"]:>9.0f} |')


if __name__ == '__main__':
  app.run(main)
