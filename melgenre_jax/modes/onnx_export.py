"""The inference function as ONNX (``export/model.onnx``), converted by jax2onnx and checked.

``write_onnx(fn, input_shape, path)`` converts a pure JAX function
``inputs [b, *input_shape] float32 -> (probabilities [b, G], embedding [b, D])``
(weights as constants: ``inference_outputs(model)`` builds it from an
``InferenceModel``) into one ONNX file with a free batch dimension, then runs
it with onnxruntime beside JAX and refuses to keep a file that differs by more
than ``TOLERANCE``.

The graph is jax2onnx's conversion of the function's own primitives: the
log-mel front end (``jnp.fft.rfft`` becomes ONNX ``DFT``), the convolutions,
the custom-VJP max pool (its primal), and each LSTM's ``scan`` as an ONNX
``Loop`` (not unrolled). Three choices make jax2onnx 0.13.0 convert it under
jax 0.10.2 / flax 0.12.8; each answers a failure seen on the reference model:

  * One segment at a time, under ``lax.map``: with a symbolic batch jax2onnx
    lowers ``jnp.pad`` ("Symbolic dimension 'B' used in a context that
    requires a constant") and a broadcast after a loop (the ``Expand`` target
    gets a loop's static extent for B: "invalid expand shape" at run time)
    wrongly. Inside the map every shape is static (a batch of one); the batch
    is only the trip count of the outer ``Loop``, so any batch size runs.
  * Traced by JAX, then the jaxpr replayed for jax2onnx: while tracing,
    jax2onnx swaps ``jnp.shape`` for a primitive, and flax's ``nn.RNN`` scan
    (``flax.core.axes_scan``) then sees a traced shape and fails.
  * Dead code dropped (JAX's own ``dce_jaxpr``): ``nn.RNN`` draws a PRNG key
    for its all-zero initial carry that nothing reads, and jax2onnx has no
    rule for ``random_split``.
  * Max pools as ONNX pools over the pooled axes only (``_MaxPoolOverPooledAxes``):
    jax2onnx 0.13.0 makes every axis of ``reduce_window_max`` a spatial one, so
    vgg's ``nn.max_pool`` on ``[1, T, F, C]`` became a 4-D MaxPool, which
    onnxruntime refuses ("Unsupported pooling size"); ONNX pools 1 to 3 axes.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax2onnx
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime
from jax.extend import core as jax_core
from jax.interpreters import partial_eval
from jax2onnx.plugins import plugin_system
from jax2onnx.plugins._ir_shapes import _ensure_value_metadata
from jax2onnx.plugins._ir_shapes import _stamp_type_and_shape
from jax2onnx.plugins.jax.lax import reduce_window_max
from jax2onnx.plugins.jax.lax._index_utils import _const_i64

from melgenre_jax.runtime import atomic

ONNX_FILE = 'model.onnx'
OUTPUTS = ('probabilities', 'embedding')
INPUT_NAME = 'inputs'
OPSET = 23
# Largest |ONNX - JAX| accepted on any output (probabilities and embedding alike).
TOLERANCE = 1e-4



class OnnxMismatchError(RuntimeError):
  """The converted graph does not compute the JAX function (a converter bug): no file is kept."""


def inference_outputs(model) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """An ``InferenceModel``'s ``inputs -> (probabilities, embedding)``, weights baked in.

  The same computation as ``export``'s functions (front end, feature
  normalisation, the model in inference mode, softmax or sigmoid), in one
  pass so the graph holds the network once. The model is applied directly, outside
  the steps' ``shard_map`` (its only cross-device op, BatchNorm's mean, is training's).
  """
  v = model.variables
  # Host copies: replicated mesh arrays would carry a sharding into the graph.
  variables = jax.tree.map(np.asarray, {'params': v.params, 'batch_stats': v.batch_stats})
  mean, std = np.asarray(v.feature_mean), np.asarray(v.feature_std)
  preprocess = model.spec.device_preprocess()
  activation = jax.nn.sigmoid if model.multilabel else functools.partial(jax.nn.softmax, axis=-1)

  def outputs(inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, h = model.apply_fn(variables, preprocess(inputs, mean, std), train=False,
                               return_embedding=True)
    return activation(logits.astype(jnp.float32)), h.astype(jnp.float32)

  return outputs


def per_segment(fn: Callable) -> Callable:
  """``fn`` applied to one segment at a time (static shapes inside; see the module docstring)."""
  def mapped(inputs: jax.Array) -> Any:
    return jax.lax.map(lambda x: jax.tree.map(lambda y: y[0], fn(x[None])), inputs)
  return mapped


def _traced(fn: Callable, arg: jax.ShapeDtypeStruct) -> Callable:
  """``fn`` as a replay of its dead-code-free jaxpr, traced by JAX alone."""
  closed = jax.make_jaxpr(fn)(arg)
  jaxpr, _ = partial_eval.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars),
                                    instantiate=True)
  return jax_core.jaxpr_as_fun(jax_core.ClosedJaxpr(jaxpr, closed.consts))


class _MaxPoolOverPooledAxes(reduce_window_max.ReduceWindowMaxPrimitivePlugin):
  """``reduce_window_max`` as Transpose -> Reshape -> MaxPool over the pooled axes -> back.

  The axes the window leaves alone (size 1, stride 1, no padding) are
  moved to the front and merged into ONNX's channel axis, so the MaxPool has
  only the pooled axes as spatial ones. All shapes are static here (one
  segment at a time, see the module docstring); otherwise the base rule runs.
  """

  def lower(self, ctx: Any, eqn: Any) -> None:
    p = eqn.params
    operand, out = eqn.invars[0], eqn.outvars[0]
    shape, out_shape = tuple(operand.aval.shape), tuple(out.aval.shape)
    rank = len(shape)
    pooled = [i for i in range(rank) if (p['window_dimensions'][i], p['window_strides'][i],
                                         tuple(p['padding'][i]), p['window_dilation'][i],
                                         p['base_dilation'][i]) != (1, 1, (0, 0), 1, 1)]
    free = [i for i in range(rank) if i not in pooled]
    if (not free or not 1 <= len(pooled) <= 3
        or not all(isinstance(d, int) for d in shape + out_shape)):
      return super().lower(ctx, eqn)
    perm = free + pooled
    x = ctx.get_value_for_var(operand, name_hint=ctx.fresh_name('pool_in'))

    def emit(value: Any, dims: Sequence[int]) -> Any:
      value.type = ir.TensorType(x.type.dtype)
      _stamp_type_and_shape(value, tuple(dims))
      _ensure_value_metadata(ctx, value)
      return value

    def reshape(value: Any, dims: Sequence[int]) -> Any:
      dims = [int(d) for d in dims]
      return emit(ctx.builder.Reshape(value, _const_i64(ctx, np.asarray(dims, np.int64),
                                                         'pool_shape'),
                                      _outputs=[ctx.fresh_name('pool_reshape')]), dims)

    moved = emit(ctx.builder.Transpose(x, perm=perm, _outputs=[ctx.fresh_name('pool_perm')]),
                 [shape[i] for i in perm])
    channels = int(np.prod([shape[i] for i in free]))
    x4 = reshape(moved, [1, channels, *(shape[i] for i in pooled)])
    pads = [int(p['padding'][i][0]) for i in pooled] + [int(p['padding'][i][1]) for i in pooled]
    kwargs: dict[str, Any] = {
        'kernel_shape': tuple(int(p['window_dimensions'][i]) for i in pooled),
        'strides': tuple(int(p['window_strides'][i]) for i in pooled)}
    if any(pads):
      kwargs['pads'] = tuple(pads)
    if any(p['window_dilation'][i] != 1 for i in pooled):
      kwargs['dilations'] = tuple(int(p['window_dilation'][i]) for i in pooled)
    if any(p['base_dilation'][i] != 1 for i in pooled):
      return super().lower(ctx, eqn)
    pooled_out = [out_shape[i] for i in pooled]
    y = emit(ctx.builder.MaxPool(x4, _outputs=[ctx.fresh_name('pool')], **kwargs),
             [1, channels, *pooled_out])
    y = reshape(y, [*(shape[i] for i in free), *pooled_out])
    spec = ctx.get_value_for_var(out, name_hint=ctx.fresh_name('pool_out'))
    result = emit(ctx.builder.Transpose(
        y, perm=[perm.index(i) for i in range(rank)],
        _outputs=[getattr(spec, 'name', None) or ctx.fresh_name('pool_out')]), out_shape)
    ctx.bind_value_for_var(out, result)


@functools.cache
def _load_plugins() -> None:
  """jax2onnx's conversion rules, loaded once (seconds: it imports every plugin it ships).

  Its dm_pix plugins fail to import on jax 0.10 and log a traceback each; the
  models use none of them. jax 0.10 binds ``jnp.stack`` as its own primitive
  ``stack``, which jax2onnx 0.13.0 lowers only under its patched name: the
  alias below is the one 0.14.0 registers itself (0.14 pins orbax-checkpoint
  below this project's).
  """
  logging.getLogger('jax2onnx.plugins.plugin_system').setLevel(logging.ERROR)
  plugin_system.import_all_plugins()
  registry = plugin_system.PLUGIN_REGISTRY
  registry.setdefault('stack', registry['jax.numpy.stack'])
  base, rule = registry['reduce_window_max'], _MaxPoolOverPooledAxes()
  rule.primitive, rule.metadata = base.primitive, base.metadata
  registry['reduce_window_max'] = rule


def convert(fn: Callable, input_shape: Sequence[int],
            output_names: Sequence[str] = OUTPUTS) -> onnx.ModelProto:
  """The ONNX graph of ``fn`` over inputs ``[batch, *input_shape]`` float32, batch free."""
  _load_plugins()
  (batch,) = jax.export.symbolic_shape('batch')
  arg = jax.ShapeDtypeStruct((batch, *map(int, input_shape)), jnp.float32)
  model = jax2onnx.to_onnx(_traced(per_segment(fn), arg), [arg], model_name='melgenre_jax',
                           opset=OPSET, input_names=[INPUT_NAME],
                           output_names=list(output_names))
  for value in model.graph.output:  # jax2onnx names the outputs' free dimension by a sentinel
    value.type.tensor_type.shape.dim[0].dim_param = 'batch'
  onnx.checker.check_model(model, full_check=True)
  return model


def session(path: str) -> onnxruntime.InferenceSession:
  """An onnxruntime CPU session for ``path`` (warnings about unused initialisers silenced)."""
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3
  return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run(sess: onnxruntime.InferenceSession, inputs: np.ndarray) -> dict[str, np.ndarray]:
  """The graph's outputs by name for a float32 batch ``[b, *input_shape]``."""
  names = [o.name for o in sess.get_outputs()]
  values = sess.run(names, {INPUT_NAME: np.asarray(inputs, np.float32)})
  return dict(zip(names, values))


def max_differences(sess: onnxruntime.InferenceSession, fn: Callable, inputs: np.ndarray,
                    output_names: Sequence[str] = OUTPUTS) -> dict[str, float]:
  """Largest ``|ONNX - JAX|`` per output on ``inputs`` (JAX: ``fn`` jitted, as exported).

  JAX runs on a CPU device when there is one: the graph is checked against
  full float32 arithmetic, not an accelerator's faster matmul passes (TF32).
  """
  cpus = _cpu_devices()
  x = np.asarray(inputs, np.float32)
  want = jax.tree.leaves(jax.jit(fn)(jax.device_put(x, cpus[0]) if cpus else x))
  got = run(sess, inputs)
  return {name: float(np.max(np.abs(got[name] - np.asarray(w)), initial=0.0))
          for name, w in zip(output_names, want)}


def _cpu_devices() -> list[Any]:
  try:
    return jax.devices('cpu')
  except RuntimeError:  # JAX_PLATFORMS without cpu
    return []


def check_inputs(input_shape: Sequence[int], batch: int = 2, seed: int = 0) -> np.ndarray:
  """Noise segments to compare the two runtimes on when the caller has none."""
  x = np.random.default_rng(seed).standard_normal((batch, *map(int, input_shape)))
  return (0.1 * x).astype(np.float32)


def write_onnx(fn: Callable, input_shape: Sequence[int], out_path: str,
               inputs: np.ndarray | None = None,
               output_names: Sequence[str] = OUTPUTS) -> dict[str, Any]:
  """Converts ``fn``, checks it against JAX with onnxruntime, writes ``out_path``.

  ``inputs``: segments to check on (default: ``check_inputs``; use real
  audio where there is some). Returns what a contract records: file, input
  and output names, opset, converter versions and the measured differences.

  Raises:
    OnnxMismatchError: an output differs by more than ``TOLERANCE``; nothing
      is written.
  """
  model = convert(fn, input_shape, output_names)
  with atomic.replacing(out_path) as tmp:
    onnx.save(model, tmp)
    diffs = max_differences(session(tmp), fn,
                            check_inputs(input_shape) if inputs is None else inputs,
                            output_names)
    bad = {k: d for k, d in diffs.items() if not d <= TOLERANCE}
    if bad:
      raise OnnxMismatchError(
          f'ONNX conversion differs from the JAX function by {bad} (> {TOLERANCE}); '
          f'no {os.path.basename(out_path)} written. Report it with the jax2onnx version.')
  return {'file': os.path.basename(out_path), 'input': INPUT_NAME,
          'outputs': list(output_names), 'opset': OPSET,
          'converter': f'jax2onnx {importlib.metadata.version("jax2onnx")}',
          'onnxruntime_checked': onnxruntime.__version__,
          'max_abs_difference': diffs, 'tolerance': TOLERANCE,
          'bytes': os.path.getsize(out_path)}
