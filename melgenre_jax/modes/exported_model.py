"""A model served from an export folder alone, behind ``InferenceModel``'s interface.

``--mode=export`` writes a folder that is enough to predict with: the
serialized function (``model.stablehlo``, or ``model.onnx``), ``contract.json``
(genres, sample rate, segments, temperature) and ``config.json`` (the input
format). ``ExportedModel`` wraps it with the attributes the predict and serve
code read from an ``inference.InferenceModel`` (``predict``, ``spec``,
``config``, ``genres``, ``step``, ``temperature``, ``multilabel``,
``song_probabilities``), so one streaming and output path serves both: no
workdir, no checkpoint, no Flax model is built.

``load_model_for_inference(path)`` is the one loader for either kind of
folder: an export folder (it holds contract.json) or a training workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from melgenre_jax import inference
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import WorkdirError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.modes import export

RUNTIMES = ('stablehlo', 'onnx')


@dataclasses.dataclass(frozen=True)
class ExportedModel:
  """An export folder's prediction function with ``InferenceModel``'s interface."""

  export_dir: str
  contract: dict[str, Any]
  config: ml_collections.ConfigDict
  spec: InputSpec
  segment_fn: Callable[[np.ndarray], np.ndarray]  # [b, *input_shape] -> probabilities [b, G]
  runtime: str = 'stablehlo'

  @property
  def genres(self) -> list[str]:
    return list(self.contract['genres'])

  @property
  def step(self) -> int:
    return int(self.contract['checkpoint_step'])

  @property
  def temperature(self) -> float:
    return float(self.contract.get('calibration', {}).get('temperature', 1.0))

  @property
  def multilabel(self) -> bool:
    return self.contract.get('task') == 'multilabel'

  @property
  def embedding_dim(self) -> int:
    return int(self.contract['functions']['embed']['dim'])

  def predict(self, inputs: np.ndarray, batch_size: int | None = None,
              progress: str | None = None) -> np.ndarray:
    """Raw segment probabilities ``[N, genres]`` for inputs ``[N, *spec.input_shape]``."""
    del progress  # the caller's stream shows progress; batches here are one call each
    x = np.asarray(inputs, np.float32)
    batch = max(1, int(batch_size or self.config.eval_batch_size))
    out = [np.asarray(self.segment_fn(x[i:i + batch]), np.float32)
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, len(self.genres)), np.float32)

  def song_probabilities(self, segment_probs: np.ndarray) -> np.ndarray:
    """A song's calibrated probabilities (the contract's temperature; tags: the plain mean)."""
    return export.song_probabilities(segment_probs, self.contract)

  @functools.cached_property
  def embed_fn(self) -> Callable[[np.ndarray], np.ndarray]:
    return export.load_exported(self.export_dir, 'embed')[0]

  def embed(self, inputs: np.ndarray, batch_size: int | None = None,
            progress: str | None = None) -> np.ndarray:
    """Embeddings ``[N, D]`` (the exported embed function)."""
    del progress
    x = np.asarray(inputs, np.float32)
    batch = max(1, int(batch_size or self.config.eval_batch_size))
    out = [np.asarray(self.embed_fn(x[i:i + batch]), np.float32)
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)


def is_export_dir(path: str) -> bool:
  """Whether ``path`` is an export folder (it holds contract.json) rather than a workdir."""
  return os.path.isfile(os.path.join(path, export.CONTRACT_FILE))


def _onnx_fn(export_dir: str, contract: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
  """``model.onnx``'s probabilities under onnxruntime (CPU)."""
  from melgenre_jax.modes import onnx_export  # pylint: disable=g-import-not-at-top  (heavy)

  entry = contract.get('functions', {}).get('onnx')
  if entry is None:
    raise WorkdirError(f'{export_dir} has no model.onnx: it was exported before ONNX was; '
                       'export the workdir again (python main.py --workdir W --mode export).')
  sess = onnx_export.session(os.path.join(export_dir, entry['file']))
  return lambda x: onnx_export.run(sess, x)['probabilities']


def load_export_dir(export_dir: str, runtime: str = 'stablehlo') -> ExportedModel:
  """The export folder's model, run by jax.export (``'stablehlo'``) or onnxruntime (``'onnx'``).

  Raises:
    WorkdirError: the folder lacks a file (exported by an older version: export again).
    ConfigError: an unknown ``runtime``.
  """
  if runtime not in RUNTIMES:
    raise ConfigError(f'runtime={runtime!r}: allowed values are {", ".join(RUNTIMES)}.')
  export_dir = os.path.abspath(export_dir)
  if not os.path.isfile(os.path.join(export_dir, export.CONFIG_FILE)):
    raise WorkdirError(f'{export_dir} has no {export.CONFIG_FILE}: it was exported before '
                       'export folders could predict alone; export the workdir again '
                       '(python main.py --workdir W --mode export).')
  config = workdir_lib.load_workdir_config(export_dir)  # the same reader as a workdir's
  predict_fn, contract = export.load_exported(export_dir)
  fn = _onnx_fn(export_dir, contract) if runtime == 'onnx' else predict_fn
  spec = InputSpec.from_config(config)
  if list(spec.input_shape) != list(contract['input']['shape'][1:]):
    raise WorkdirError(f'{export_dir}: config.json gives inputs {list(spec.input_shape)} but '
                       f"contract.json {contract['input']['shape'][1:]}: the files come from "
                       'different exports; export the workdir again.')
  return ExportedModel(export_dir=export_dir, contract=contract, config=config, spec=spec,
                       segment_fn=fn, runtime=runtime)


def load_model_for_inference(path: str, config: ml_collections.ConfigDict | None = None,
                             step: int | None = None, runtime: str = 'stablehlo'
                             ) -> inference.InferenceModel | ExportedModel:
  """A model to predict with from an export folder or a training workdir.

  Export folder (contract.json in it): ``load_export_dir`` (``config`` and
  ``step`` must be None: the folder fixes both). Workdir: its best
  checkpoint (or ``step``) with ``config`` (default: the workdir's).
  """
  if is_export_dir(path):
    if step is not None:
      raise ConfigError(f'--step={step}: {path} is an export folder, which holds one '
                        'checkpoint; drop --step (or export that step from the workdir).')
    return load_export_dir(path, runtime)
  config = config if config is not None else workdir_lib.load_workdir_config(path)
  return inference.load_for_inference(config, path, step)
