"""Inference throughput of the Flax musicnn port against the original TF implementation (#31).

  python benchmarks/bench_musicnn_flax.py --tf_python=/work/tfenv/bin/python [--passes=2] [--out=r.json]

The Flax side mirrors benchmarks/bench_musicnn_tf.py row for row: the same
excerpt (tests/fixtures/musicnn/excerpt.flac) tiled to the batch, the same two
inputs (``logmel``: the model alone on [batch, 187, 96] log-mel patches;
``waveform``: 16 kHz audio in, the log-mel computed in the compiled step, as
predict runs it), batch 1 and 32, warm-up untimed, then rounds of about
--round_seconds each, the median reported. It runs the imported MSD_musicnn
workdir (``musicnn:MSD_musicnn``, imported once into the cache) through the
same compiled predict step as ``--mode=predict``, on one JAX device per core
(runtime/cpu_devices.py; a batch of 1 is padded to the device count, and only
the real segment is counted). The tag probabilities are fetched; the
penultimate embedding TF also fetches is on their path, so costs nothing extra.

--layers adds where the time goes: each front-end convolution block (conv ->
ReLU -> max over the mel axis, with the imported kernels) and the first mid-end
convolution, alone, on one device's share of a batch of 32, with its
multiply-adds counted as two FLOPs and the rate achieved; the last row,
``matmul``, is batched 512 x 512 float32 products of the same FLOP count: the
rate this machine's cores reach on a dense, cache-sized product.

With --tf_python (an interpreter of a side environment with TensorFlow and the
musicnn package, see bench_musicnn_tf.py) each pass runs the TF script in a
subprocess and then the Flax rows, so both see the same machine within
minutes; the ratios are of medians over all passes. Without it only the Flax
rows are measured (a ratio needs both in one window).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from melgenre_jax.runtime import cpu_devices  # noqa: E402

_TF_PYTHON = flags.DEFINE_string('tf_python', None, 'Python of a side env with TF + musicnn.')
_PASSES = flags.DEFINE_integer('passes', 2, 'TF-then-Flax passes (with --tf_python).')
_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '32'], 'Segments per call.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds per row and pass.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed calls per row before timing.')
_ROUND_SECONDS = flags.DEFINE_float('round_seconds', 2.0, 'Rough length of one timed round.')
_OUT = flags.DEFINE_string('out', None, 'Write the results as JSON here.')
_LAYERS = flags.DEFINE_bool('layers', False, 'Also time each front-end conv block alone.')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', None,
                                    'config.cpu_devices (default: configs/musicnn.py\'s).')
_MICROBATCH = flags.DEFINE_integer('eval_microbatch', None,
                                   'config.eval_microbatch for both rows (default: the config\'s).')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXCERPT = os.path.join(REPO_ROOT, 'tests', 'fixtures', 'musicnn', 'excerpt.flac')
TF_SCRIPT = os.path.join(REPO_ROOT, 'benchmarks', 'bench_musicnn_tf.py')
MODEL = 'MSD_musicnn'
INPUTS = ('logmel', 'waveform')


def load_model():
  """The imported MSD_musicnn workdir as predict loads it (``--eval_microbatch`` applied)."""
  # Imported here, after main's cpu_devices.configure: JAX must not start before it.
  from configs import musicnn as musicnn_config  # pylint: disable=g-import-not-at-top
  from melgenre_jax import inference  # pylint: disable=g-import-not-at-top
  from melgenre_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from melgenre_jax.pretrained import musicnn  # pylint: disable=g-import-not-at-top

  workdir = musicnn.imported_workdir(f'{musicnn.PACKAGE}:{MODEL}', musicnn_config.get_config())
  config = workdir_lib.load_workdir_config(workdir)
  if _MICROBATCH.value is not None:
    config.eval_microbatch = _MICROBATCH.value
  return inference.load_for_inference(config, workdir)


def flax_rows(model, batches: list[int]) -> list[dict]:
  """One callable per (input, batch) row on the imported model; each returns segments done."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from melgenre_jax import inference, steps  # pylint: disable=g-import-not-at-top
  from melgenre_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from melgenre_jax.runtime import parallel  # pylint: disable=g-import-not-at-top

  spec = model.spec
  wave = audio_lib.load_audio(EXCERPT, spec.sample_rate)
  seg = spec.segment_samples
  segments = np.stack([wave[i:i + seg] for i in range(0, len(wave) - seg + 1, seg)])
  logmel = np.asarray(jax.jit(lambda x: spec.device_preprocess()(x, 0.0, 1.0))(segments))
  p_logmel = steps.make_predict_step(model.mesh, model.apply_fn, lambda x, m, s: x,
                                     steps.resolve_microbatch(model.config.eval_microbatch),
                                     multilabel=True)
  steps_of = {'logmel': (p_logmel, logmel), 'waveform': (model.p_predict, segments)}
  rows = []
  for kind in INPUTS:
    for b in batches:
      step, pool = steps_of[kind]
      padded = inference.inference_batch_size(b)
      batch = np.concatenate([pool] * (-(-padded // len(pool))))[:padded].astype(np.float32)
      placed = parallel.global_batch({'x': batch}, model.mesh)['x']

      def call(step=step, placed=placed, b=b) -> int:
        jax.block_until_ready(step(model.variables, placed))
        return b
      rows.append({'model': MODEL, 'input': kind, 'batch_size': b, 'fn': call, 'rates': []})
  return rows


def layer_rows(params, batch: int) -> list[dict]:
  """Each front-end conv block and the first mid-end conv, jitted alone on ``batch`` segments."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.standard_normal((batch, 187, 96, 1)), jnp.float32)
  dims = ('NHWC', 'HWIO', 'NHWC')

  def conv2d(padding: str):
    return lambda x, kernel: jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                                          dimension_numbers=dims)

  def block(conv):
    return lambda x, kernel: jnp.max(jax.nn.relu(conv(x, kernel)), axis=2)

  def conv1d(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel[:, :, 0, :], (1,), 'VALID',
                                        dimension_numbers=('NWC', 'WIO', 'NWC'))

  padded = jnp.pad(image, ((0, 0), (3, 3), (0, 0), (0, 0)))
  cases = [(name, conv2d('VALID'), block(conv2d('VALID')), padded)
           for name in ('timbral_74', 'timbral_77')]
  cases += [(name, conv2d('SAME'), block(conv2d('SAME')), image)
            for name in ('temporal_128', 'temporal_64', 'temporal_32')]
  front = jnp.asarray(rng.standard_normal((batch, 193, 561)), jnp.float32)
  cases.append(('midend_1', conv1d, conv1d, front))
  rows = []
  for name, conv, fn, x in cases:
    kernel = jnp.asarray(np.asarray(params[f'{name}_conv']['kernel']))  # on one device
    compiled = jax.jit(fn).lower(x, kernel).compile()
    # A multiply and an add per kernel tap (inputs x taps) and output value.
    out_values = np.prod(jax.eval_shape(conv, x, kernel).shape)
    flops = 2.0 * out_values * np.prod(kernel.shape[:-1])

    def call(compiled=compiled, x=x, kernel=kernel) -> int:
      jax.block_until_ready(compiled(x, kernel))
      return batch
    rows.append({'layer': name, 'kernel': tuple(kernel.shape), 'flops': flops, 'fn': call,
                 'rates': []})
  return rows + [matmul_row(batch)]


def matmul_row(batch: int) -> dict:
  """The machine's yardstick: cache-sized float32 matrix products, as many FLOPs as timbral_74."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  size = 512
  count = max(1, round(batch * 187 * 59 * 204 * 7 * 38 / size ** 3))
  a = jnp.ones((count, size, size), jnp.float32) * 1e-3
  compiled = jax.jit(lambda a: jnp.einsum('nij,njk->nik', a, a)).lower(a).compile()

  def call() -> int:
    jax.block_until_ready(compiled(a))
    return batch
  return {'layer': 'matmul', 'kernel': (count, size, size), 'flops': 2.0 * count * size ** 3,
          'fn': call, 'rates': []}


def print_layers(rows: list[dict], batch: int) -> list[dict]:
  """The --layers table: ms per call, share of the blocks' sum, GFLOP/s; its JSON rows."""
  ms = {r['layer']: 1e3 * batch / statistics.median(r['rates']) for r in rows}
  total = sum(v for k, v in ms.items() if k != 'matmul')  # the yardstick is not a layer
  print(f'\nwhere the time goes: each block alone, {batch} segments on one device, median ms')
  print(f'| {"layer":<12} | {"kernel":<16} | {"ms":>6} | {"share":>5} | {"GFLOP/s":>7} |')
  print(f'|{"-" * 14}|{"-" * 18}|{"-" * 8}|{"-" * 7}|{"-" * 9}|')
  out = []
  for r in rows:
    rate = r['flops'] / ms[r['layer']] / 1e6
    share = '-' if r['layer'] == 'matmul' else f'{ms[r["layer"]] / total:.0%}'
    print(f'| {r["layer"]:<12} | {"x".join(map(str, r["kernel"])):<16} | {ms[r["layer"]]:>6.1f} | '
          f'{share:>5} | {rate:>7.1f} |')
    out.append({'layer': r['layer'], 'kernel': r['kernel'], 'ms': ms[r['layer']],
                'gflop_per_s': rate})
  return out


def calibrate(rows: list[dict]) -> None:
  """Warm-up (compiles each shape) and the calls per round that make ~round_seconds."""
  for row in rows:
    for _ in range(_WARMUP.value):
      row['fn']()
    start = time.perf_counter()
    row['fn']()
    row['calls'] = max(1, int(_ROUND_SECONDS.value / max(time.perf_counter() - start, 1e-6)))


def timed_rounds(rows: list[dict]) -> None:
  """--rounds rounds, rows alternating within each so drift hits all alike."""
  for _ in range(_ROUNDS.value):
    for row in rows:
      start = time.perf_counter()
      done = sum(row['fn']() for _ in range(row['calls']))
      row['rates'].append(done / (time.perf_counter() - start))


def tf_pass(batches: list[int]) -> dict:
  """One run of bench_musicnn_tf.py in the side environment; its JSON."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'tf.json')
    cmd = [_TF_PYTHON.value, TF_SCRIPT, f'--models={MODEL}', f'--out={out}',
           f'--batch_sizes={",".join(map(str, batches))}', f'--rounds={_ROUNDS.value}',
           f'--warmup={_WARMUP.value}', f'--round_seconds={_ROUND_SECONDS.value}']
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
      raise app.UsageError(f'the TF side failed ({done.returncode}): {done.stderr[-800:]}')
    with open(out) as f:
      return json.load(f)


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  from configs import musicnn as musicnn_config  # pylint: disable=g-import-not-at-top
  family_default = int(musicnn_config.get_config().get('cpu_devices', -1))  # what import writes
  cpu_devices.configure(family_default if _CPU_DEVICES.value is None else _CPU_DEVICES.value, 32)
  batches = [int(b) for b in _BATCHES.value]
  model = load_model()
  rows = flax_rows(model, batches)
  calibrate(rows)
  import jax  # pylint: disable=g-import-not-at-top
  per_device = 32 // jax.device_count()
  layers = layer_rows(model.variables.params, per_device) if _LAYERS.value else []
  calibrate(layers)
  tf_rates: dict[str, list[float]] = {}
  tf_info = None
  for _ in range(_PASSES.value if _TF_PYTHON.value else 1):
    if _TF_PYTHON.value:
      tf_info = tf_pass(batches)
      for r in tf_info['rows']:
        tf_rates.setdefault(f'{r["input"]}/b{r["batch_size"]}', []).extend(
            r['segments_per_s_rounds'])
    timed_rounds(rows)
    timed_rounds(layers)

  from benchmarks.peers import harness  # pylint: disable=g-import-not-at-top
  print('\n'.join(harness.machine_lines()))
  print(f'musicnn {MODEL}: Flax port (jax {jax.__version__}, {jax.device_count()} CPU devices, '
        'predict step) vs. the original (' + (f'TF {tf_info["versions"]["tensorflow"]}, '
                                              'tf.compat.v1 Session' if tf_info else 'not run')
        + f'); median segments/s over {len(rows[0]["rates"])} rounds each, '
        f'{_PASSES.value if tf_info else 1} pass(es); segment = 187 frames = 3 s at 16 kHz')
  print(f'| {"input":<9} | {"batch":>5} | {"Flax seg/s":>10} | {"TF seg/s":>8} | {"Flax/TF":>7} |')
  print(f'|{"-" * 11}|{"-" * 7}|{"-" * 12}|{"-" * 10}|{"-" * 9}|')
  result = {'model': MODEL, 'rows': [], 'tf': tf_info}
  for row in rows:
    key = f'{row["input"]}/b{row["batch_size"]}'
    flax = statistics.median(row['rates'])
    tf = statistics.median(tf_rates[key]) if key in tf_rates else None
    ratio = flax / tf if tf else None
    print(f'| {row["input"]:<9} | {row["batch_size"]:>5} | {flax:>10.1f} | '
          f'{tf if tf is not None else float("nan"):>8.1f} | '
          f'{ratio if ratio is not None else float("nan"):>7.2f} |')
    result['rows'].append({'input': row['input'], 'batch_size': row['batch_size'],
                           'flax_segments_per_s': flax, 'flax_rounds': row['rates'],
                           'tf_segments_per_s': tf, 'tf_rounds': tf_rates.get(key),
                           'flax_over_tf': ratio})
  if layers:
    result['layers'] = print_layers(layers, per_device)
  best = {side: max(r[f'{side}_segments_per_s'] or 0 for r in result['rows'])
          for side in ('flax', 'tf')}
  if best['tf']:
    print(f'SUMMARY: Flax {best["flax"]:.1f} segments/s at its best row vs. TF {best["tf"]:.1f} '
          f'({best["flax"] / best["tf"]:.2f}x)')
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      json.dump({**result, 'best': best}, f, indent=1)
      f.write('\n')


if __name__ == '__main__':
  app.run(main)
