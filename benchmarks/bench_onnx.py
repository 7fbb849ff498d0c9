"""ONNX Runtime (CPU) beside JAX on the exported inference function (#32): segments/s.

Run from the repository root:  python benchmarks/bench_onnx.py  [--model=musicnn|tiny]

The function is ``onnx_export.inference_outputs`` of a freshly initialised
model (throughput does not depend on the weights; the reference CRNN by
default, musicnn, or configs/tiny.py for a smoke run): waveform
segments in, probabilities and embedding out, log-mel front end included.
Rows per batch size:
- JAX: that function jitted on one device, batched as ``export.py`` exports it;
- JAX, per segment: the same function under ``onnx_export.per_segment``, the
  formulation the ONNX graph has (one segment per loop step);
- onnxruntime: ``export/model.onnx`` as written by ``write_onnx``, CPU
  execution provider, default threads.
The rows alternate within each round (the machine's drift hits all alike);
median of --repeats rounds after one warm-up call each (JAX compiles then).
A row, not a target: it says what a consumer of the ONNX file gets on CPU.
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

from benchmarks import common  # noqa: E402
from benchmarks.peers import harness  # noqa: E402
from melgenre_jax import inference  # noqa: E402
from melgenre_jax.data import synthetic  # noqa: E402
from melgenre_jax.modes import onnx_export  # noqa: E402
from melgenre_jax.runtime import parallel  # noqa: E402

_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '8', '32'], 'Batch sizes to time.')
_SEGMENTS = flags.DEFINE_integer('segments', 64, 'Segments per timed call (whole batches).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed rounds; the median is reported.')
_MODEL = flags.DEFINE_enum('model', 'reference', ['reference', 'musicnn', 'tiny'],
                           'configs/default.py, configs/musicnn.py, configs/tiny.py (smoke run).')

GENRES = list(synthetic.GENRES)


def _config():
  if _MODEL.value == 'reference':
    return common.reference_config()
  from configs import musicnn, tiny  # pylint: disable=g-import-not-at-top
  return (musicnn if _MODEL.value == 'musicnn' else tiny).get_config()


def _segments(spec, count: int) -> np.ndarray:
  """``count`` segments cut from synthetic songs of every genre."""
  rows, i = [], 0
  while len(rows) < count:
    key = f'synthetic/{GENRES[i % len(GENRES)]}/{i:04d}'
    seconds = spec.seconds(spec.segment_samples)
    rows.append(synthetic.synthesize_song(key, spec.sample_rate, seconds))
    i += 1
  return np.stack(rows).astype(np.float32)


def _batched(run_batch, inputs: np.ndarray, batch: int):
  """A timed call: every whole batch of ``inputs`` through ``run_batch``; returns segments done."""
  n = len(inputs) // batch * batch

  def call() -> int:
    for start in range(0, n, batch):
      out = run_batch(inputs[start:start + batch])
      jax.block_until_ready(out)
    return n

  return call


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _config()
  mesh = parallel.create_mesh()
  variables = common.untrained_state(config, len(GENRES), mesh).variables()
  model = inference.make_inference_model(config, GENRES, variables, mesh, step=0)
  fn = onnx_export.inference_outputs(model)
  inputs = _segments(model.spec, _SEGMENTS.value)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, onnx_export.ONNX_FILE)
    start = time.perf_counter()
    info = onnx_export.write_onnx(fn, model.spec.input_shape, path, inputs=inputs[:4])
    convert_s = time.perf_counter() - start
    sess = onnx_export.session(path)
    jitted, per_segment = jax.jit(fn), jax.jit(onnx_export.per_segment(fn))
    variants = {'JAX': jitted, 'JAX, per segment': per_segment,
                'onnxruntime': lambda x: onnx_export.run(sess, x)}
    calls = {(name, b): _batched(f, inputs, int(b)) for b in _BATCHES.value
             for name, f in variants.items()}
    for call in calls.values():  # warm-up: compiles each JAX shape once
      call()
    rates = {key: [] for key in calls}
    for _ in range(_REPEATS.value):
      for key, call in calls.items():
        rates[key].append(common.median_rate(call, 1)[0])

  seconds = model.spec.seconds(model.spec.segment_samples)
  print()
  print(f'ONNX Runtime vs JAX, CPU: {_MODEL.value} model, '
        f'{seconds:g} s segments at {model.spec.sample_rate} Hz (waveform in, log-mel in the '
        f'graph), {len(inputs)} segments per call, median of {_REPEATS.value} rounds, '
        'compile excluded')
  for line in harness.machine_lines():
    print(line)
  print(f'jax {jax.__version__}, {info["converter"]}, onnxruntime {info["onnxruntime_checked"]}, '
        f'opset {info["opset"]}; model.onnx {info["bytes"] / 1e6:.2f} MB, converted and checked '
        f'in {convert_s:.1f} s; max |ONNX - JAX|: '
        + ', '.join(f'{k} {v:.1e}' for k, v in info['max_abs_difference'].items()))
  print()
  print(f'| {"runtime":20s} | {"batch":>5s} | {"segments/s":>10s} | rounds |')
  print(f'|{"-" * 22}|{"-" * 7}|{"-" * 12}|--------|')
  for (name, b), r in rates.items():
    print(f'| {name:20s} | {int(b):5d} | {statistics.median(r):10.1f} | '
          f'{", ".join(f"{x:.1f}" for x in r)} |')
  print()
  best = {name: max(statistics.median(rates[(name, b)]) for b in _BATCHES.value)
          for name in variants}
  print(f'SUMMARY: onnxruntime {best["onnxruntime"]:.1f} segments/s at its best batch vs. '
        f'JAX {best["JAX"]:.1f} ({best["onnxruntime"] / best["JAX"]:.2f}x).')


if __name__ == '__main__':
  app.run(main)
