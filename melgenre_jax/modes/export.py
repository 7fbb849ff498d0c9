"""Serialize the trained waveform -> probabilities function with ``jax.export``.

``export_workdir`` writes ``WORKDIR/export/``:

  * ``model.stablehlo`` - ``jax.export.Exported.serialize()`` bytes: the
    StableHLO module plus JAX's calling convention (a flatbuffer; read it back
    with ``jax.export.deserialize``, no Python model code needed);
  * ``embed.stablehlo`` - the same for ``segments -> embeddings [b, D]``, the
    classifier head's input (see modes/embed.py); ``load_exported(d, 'embed')``;
  * ``model.onnx`` - the same ``inputs -> (probabilities, embedding)`` as an
    ONNX graph (jax2onnx; modes/onnx_export.py), checked with onnxruntime
    against JAX on segments of the run's own data before it is kept;
  * ``contract.json`` - what the function expects and returns (sample rate,
    segment length and hop, genre names, shapes/dtypes, platforms, JAX
    version, checkpoint step) and ``calibration``: the song-level temperature
    fitted on validation for that step (1 when it never was);
  * ``config.json`` - the run's config (a copy of the workdir's), so that the
    folder alone rebuilds the input format (predict ``--model EXPORT_DIR``);
  * ``MODEL_CARD.md`` - what the model is and how well it did, written from
    the workdir's records (modes/model_card.py).

Design choices:
  * The function is ``waves [b, segment_samples] float32 -> probabilities
    [b, genres] float32``: the log-mel front end, the feature normalisation and
    the model in inference mode (BatchNorm running statistics, no dropout), so
    a consumer only has to decode and cut audio as the contract says. (When
    the run used ``config.features.where='host'`` the front end is librosa on
    the host and cannot be exported; the function then takes log-mels
    ``[b, frames, n_mels]`` and the contract says so.)
  * Parameters are baked in as constants: one self-contained artefact, and a
    loader that cannot pair it with the wrong weights. (The reference model
    is a few MB of float32; StableHLO constants handle that fine.)
  * The batch dimension is symbolic (``b``): any batch size, no re-export.
  * Platforms: ``('cpu', 'cuda')`` when lowering for CUDA works on this
    machine (it needs no GPU: the ops are plain StableHLO), else ``('cpu',)``
    and the contract records why. The front end picks its CPU-friendly form
    (per-clip ``lax.map``, block-sparse mel matmul) when exported on a CPU
    machine; it computes the same function on GPU, only less fast.
  * The function returns the raw segment probabilities (as
    ``InferenceModel.predict`` does); calibration is song-level, so it is
    applied after averaging a song's segments: ``song_probabilities`` does it
    with the contract's temperature.

``load_exported`` and ``song_probabilities`` are the consumer side and use only
jax, numpy and json (imported inside them), so a serving process never imports
the training code.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

EXPORT_DIR = 'export'
MODEL_FILE = 'model.stablehlo'
EMBED_FILE = 'embed.stablehlo'
CONTRACT_FILE = 'contract.json'
# 2: adds ``functions`` (predict and embed, each with its file and output);
# 3: adds ``functions.onnx`` and the folder's config.json and MODEL_CARD.md.
CONTRACT_VERSION = 3
FUNCTIONS = ('predict', 'embed')
CONFIG_FILE = 'config.json'
CARD_FILE = 'MODEL_CARD.md'
# Segments of the run's own data the ONNX graph is checked on (onnx_export.write_onnx).
ONNX_CHECK_ROWS = 8


# ----------------------------------------------------------------------------
# Consumer side: jax + numpy + json only.


def load_exported(export_dir: str, function: str = 'predict'
                  ) -> tuple[Callable[[Any], Any], dict[str, Any]]:
  """Returns ``(fn, contract)`` for an export folder.

  ``function='predict'``: ``fn(waves)`` takes float32 ``[b, segment_samples]``
  (numpy or jax) and returns numpy probabilities ``[b, len(contract['genres'])]``.
  ``function='embed'``: the same inputs to embeddings ``[b, D]``
  (``contract['functions']['embed']['dim']``; the mean of a song's rows is its
  embedding). Uses only jax, numpy and json, so it runs without this
  package's training code.

  Raises:
    ValueError: an unknown ``function``, or ``'embed'`` from an export made
      before embeddings were exported (export the workdir again).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  if function not in FUNCTIONS:
    raise ValueError(f'function={function!r}: allowed values are {", ".join(FUNCTIONS)}.')
  with open(os.path.join(export_dir, CONTRACT_FILE)) as f:
    contract = json.load(f)
  entry = contract.get('functions', {}).get(function)
  if entry is None and function != 'predict':
    raise ValueError(
        f'{export_dir} has no {function!r} function: it was exported before embeddings '
        f"were (contract_version {contract.get('contract_version')}). Export the workdir "
        'again (python main.py --workdir WORKDIR --mode export); prediction still loads.')
  with open(os.path.join(export_dir, entry['file'] if entry else MODEL_FILE), 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  want = tuple(contract['input']['shape'][1:])

  def predict(inputs: Any) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim == len(want):
      x = x[None]
    if tuple(x.shape[1:]) != want:
      raise ValueError(f'input shape {x.shape}: expected [batch, {", ".join(map(str, want))}] '
                       f"({contract['input']['description']})")
    return np.asarray(exported.call(x))

  return predict, contract


def song_probabilities(segment_probs: Any, contract: dict[str, Any]) -> Any:
  """Calibrated genre probabilities ``[genres]`` of one song from ``predict``'s rows for it.

  ``softmax(log(mean of the segment probabilities) / T)`` with the
  contract's temperature: the same top genre as the plain mean, with a
  confidence fitted on validation songs. The formula of
  ``melgenre_jax.calibration.song_probabilities``, repeated here so that a
  serving process needs numpy only.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  temperature = float(contract.get('calibration', {}).get('temperature', 1.0))
  mean = np.asarray(segment_probs, np.float64).reshape(-1, len(contract['genres'])).mean(axis=0)
  if contract.get('task') == 'multilabel':
    return mean  # per-tag sigmoid probabilities, not calibrated
  logits = np.log(np.clip(mean, 1e-12, 1.0)) / temperature
  e = np.exp(logits - logits.max())
  return e / e.sum()


# ----------------------------------------------------------------------------
# Producer side.


def _inference_function(model, function: str = 'predict'
                        ) -> tuple[Callable, tuple[int, ...], str]:
  """A single-device ``inputs -> probabilities`` (or ``-> embeddings``), weights as constants."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  v = model.variables
  # Host copies: replicated mesh arrays would carry a sharding into the module.
  variables = jax.tree.map(np.asarray, {'params': v.params, 'batch_stats': v.batch_stats})
  mean = np.asarray(v.feature_mean)
  std = np.asarray(v.feature_std)
  apply_fn = model.apply_fn
  preprocess = model.spec.device_preprocess()

  def features(inputs: jax.Array) -> jax.Array:
    # One clip at a time, as the CPU training path does: the front end
    # compares its clip count with the batch, which a symbolic batch cannot.
    return jax.lax.map(lambda x: preprocess(x[None], mean, std)[0], inputs)

  activation = jax.nn.sigmoid if model.multilabel else functools.partial(jax.nn.softmax, axis=-1)

  def probabilities(inputs: jax.Array) -> jax.Array:
    logits = apply_fn(variables, features(inputs), train=False)
    return activation(logits.astype(jnp.float32))

  def embeddings(inputs: jax.Array) -> jax.Array:
    _, h = apply_fn(variables, features(inputs), train=False, return_embedding=True)
    return h.astype(jnp.float32)

  kind = 'waveform' if model.spec.takes_waves else 'log_mel'
  fn = embeddings if function == 'embed' else probabilities
  return fn, model.spec.input_shape, kind


def export_model(model, platforms: tuple[str, ...] = ('cpu', 'cuda'),
                 function: str = 'predict') -> tuple[Any, dict[str, Any]]:
  """``jax.export`` of the model's inference function (or ``'embed'``), symbolic batch.

  Tries ``platforms``; if lowering for one of them fails, falls back to the
  ones that work (``cpu`` at least) and says why in the returned info.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  fn, shape, kind = _inference_function(model, function)
  (b,) = jax.export.symbolic_shape('b')
  arg = jax.ShapeDtypeStruct((b,) + tuple(shape), jnp.float32)
  info: dict[str, Any] = {'requested_platforms': list(platforms), 'input_kind': kind,
                          'input_shape': shape}
  try:
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(arg)
  except Exception as e:  # pylint: disable=broad-except
    if tuple(platforms) == ('cpu',):
      raise
    info['fallback_reason'] = f'{type(e).__name__}: {str(e)[:500]}'
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning('Export for %s failed (%s); exporting for cpu only.',
                    platforms, info['fallback_reason'])
    exported = jax.export.export(jax.jit(fn), platforms=('cpu',))(arg)
  return exported, info


def _calibration(model, entry: dict[str, Any] | None) -> dict[str, Any]:
  """The contract's record of the song-level temperature (calibration.py)."""
  out: dict[str, Any] = {
      'temperature': float(model.temperature),
      'calibrated': entry is not None,
      'applies_to': 'songs: softmax(log(mean of the segment probabilities) / temperature) '
                    '(modes.export.song_probabilities); the function itself returns raw '
                    'segment probabilities',
  }
  if entry is not None:
    out.update({k: entry[k] for k in ('fitted_on', 'songs', 'song_ece_before',
                                      'song_ece_after') if k in entry})
  return out


def _contract(model, exported, info: dict[str, Any],
              calibration_entry: dict[str, Any] | None = None) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  config, spec = model.config, model.spec
  sr, segment, hop = spec.sample_rate, spec.segment_samples, spec.hop_samples
  shape = list(info['input_shape'])
  if info['input_kind'] == 'waveform':
    description = (f'mono float32 audio at {sr} Hz, one row per {segment}-sample '
                   'segment, roughly in [-1, 1]')
  else:
    description = ('librosa log-mel [frames, n_mels] per segment (config.features; '
                   'melgenre_jax.data.features.librosa_log_mel)')
  output_description = ('probability of each tag (independent sigmoids)' if model.multilabel
                        else 'probabilities over genres (rows sum to 1)')
  return {
      'contract_version': CONTRACT_VERSION,
      'format': 'jax.export serialized Exported (StableHLO inside); load with '
                'jax.export.deserialize(bytes).call(x)',
      'task': 'multilabel' if model.multilabel else 'genre',
      'function': ('segments -> tag probabilities (one sigmoid per tag), inference mode'
                   if model.multilabel else
                   'segments -> genre probabilities (softmax), inference mode'),
      'parameters': 'baked into the module as constants',
      'sample_rate': sr,
      'segment_samples': segment,
      'segment_hop_samples': hop,
      'segment_seconds': float(config.audio.segment_seconds),
      'segment_hop_seconds': float(config.audio.segment_hop_seconds),
      'min_song_samples': spec.min_samples,
      'song_aggregation': 'mean of segment probabilities; a song shorter than one '
                          'segment is zero-padded; a trailing partial segment is dropped',
      'genres': list(model.genres),
      'input': {'kind': info['input_kind'], 'shape': ['b'] + shape,
                'dtype': 'float32', 'description': description},
      'output': {'shape': ['b', len(model.genres)], 'dtype': 'float32',
                 'description': output_description},
      'functions': {
          'predict': {'file': MODEL_FILE, 'output': {
              'shape': ['b', len(model.genres)], 'dtype': 'float32',
              'description': output_description}},
          'embed': {'file': EMBED_FILE, 'dim': int(model.embedding_dim), 'output': {
              'shape': ['b', int(model.embedding_dim)], 'dtype': 'float32',
              'description': "the classifier head's input (both branch summaries "
                             "concatenated), per segment; a song's embedding is the "
                             'mean of its segments\''}},
      },
      'features': config.features.to_dict(),
      'platforms': list(exported.platforms),
      'requested_platforms': info['requested_platforms'],
      **({'platform_fallback_reason': info['fallback_reason']}
         if 'fallback_reason' in info else {}),
      'calling_convention_version': int(exported.calling_convention_version),
      'jax_version': jax.__version__,
      'checkpoint_step': int(model.step),
      'calibration': _calibration(model, calibration_entry),
      'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }


def check_segments(workdir: str, input_shape: tuple[int, ...],
                   rows: int = ONNX_CHECK_ROWS) -> Any:
  """Up to ``rows`` model inputs from the run's data cache, spread over it (None: none usable).

  The ONNX graph is checked on these: real segments of the songs the model
  was trained and evaluated on, not only noise. An imported workdir has no
  cache; a cache of another input shape is not used.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from melgenre_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  try:
    with open(os.path.join(workdir, workdir_lib.DATA_SUMMARY)) as f:
      cache = json.load(f).get('cache') or ''
    inputs = np.load(os.path.join(cache, 'inputs.npy'), mmap_mode='r')
  except (OSError, ValueError):
    return None
  if tuple(inputs.shape[1:]) != tuple(input_shape) or not len(inputs):
    return None
  pick = np.unique(np.linspace(0, len(inputs) - 1, min(rows, len(inputs))).astype(int))
  return np.asarray(inputs[pick], np.float32)


def export_workdir(config, workdir: str, step: int | None = None,
                   platforms: tuple[str, ...] = ('cpu', 'cuda'),
                   command: str | None = None) -> dict[str, Any]:
  """``--mode=export``: writes WORKDIR/export/ (StableHLO, ONNX, contract, config, model card).

  ``command``: the command line recorded in the card (default: this
  process's). Returns the contract (with ``path`` added).
  """
  from melgenre_jax import calibration  # pylint: disable=g-import-not-at-top
  from melgenre_jax import config_checks  # pylint: disable=g-import-not-at-top
  from melgenre_jax import inference  # pylint: disable=g-import-not-at-top
  from melgenre_jax import output_paths  # pylint: disable=g-import-not-at-top
  from melgenre_jax.modes import model_card  # pylint: disable=g-import-not-at-top
  from melgenre_jax.modes import onnx_export  # pylint: disable=g-import-not-at-top
  from melgenre_jax.runtime import atomic  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  output_paths.check_output_dir(os.path.join(workdir, EXPORT_DIR), 'the export folder')
  config_checks.check_workdir_compatible(config, workdir)
  model = inference.load_for_inference(config, workdir, step)
  exported, info = export_model(model, platforms)
  # The platforms prediction lowered for: the two functions share the contract's.
  embedded, _ = export_model(model, tuple(exported.platforms), function='embed')
  contract = _contract(model, exported, info, calibration.entry_for(workdir, model.step))
  out_dir = os.path.join(workdir, EXPORT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  blob = exported.serialize()
  atomic.write_bytes(os.path.join(out_dir, MODEL_FILE), blob)
  atomic.write_bytes(os.path.join(out_dir, EMBED_FILE), embedded.serialize())
  rows = check_segments(workdir, model.spec.input_shape)
  contract['functions']['onnx'] = {
      **onnx_export.write_onnx(onnx_export.inference_outputs(model), model.spec.input_shape,
                               os.path.join(out_dir, onnx_export.ONNX_FILE), inputs=rows),
      'checked_on': (f"{len(rows)} segments of the run's data cache" if rows is not None
                     else f'{len(onnx_export.check_inputs(model.spec.input_shape))} '
                          'noise segments (no data cache in the workdir)')}
  atomic.write_bytes(os.path.join(out_dir, CONFIG_FILE), config.to_json_best_effort(
      indent=1, sort_keys=True))
  command = command if command is not None else ' '.join(['python', *sys.argv])
  atomic.write_bytes(os.path.join(out_dir, CARD_FILE),
                model_card.card(model_card.read_run(workdir, contract, command)))
  with open(os.path.join(out_dir, CONTRACT_FILE), 'w') as f:  # last: it lists the files
    json.dump(contract, f, indent=1)
  print(f'Exported step {model.step} for {", ".join(contract["platforms"])} '  # CLI output
        f'({len(blob) / 1e6:.2f} MB, song temperature {model.temperature:.4g}) to {out_dir} '
        f'(StableHLO, ONNX, {CARD_FILE})')
  return {**contract, 'path': out_dir}
