"""Starting a run from another run's weights (``config.init_from``).

A backbone trained once on a big collection (many devices, many songs, genres
or tags) is worth more to a small genre set than random weights: this module
finds the source run, refuses a source whose front end would feed the backbone
different inputs, and copies every parameter and statistic whose path and
shape match into the new run's fresh state. The classifier head is kept when
the label set is the same (columns reordered if only the order differs) and
re-initialised otherwise. What was loaded, re-initialised and skipped is
logged and written to ``WORKDIR/init_from.json``. How the copied backbone then
trains (frozen, slower) is ``config.finetune``, applied by the optimizer
(schedules.with_finetune).

Reading order: ``resolve_source`` (which run and step), ``check_front_end``,
``initialize_from`` (the merge, called by the train loop on a fresh run only:
a resumed run restores everything from its own checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import checkpointing
from melgenre_jax import inference
from melgenre_jax import steps
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import WorkdirError
from melgenre_jax.runtime import atomic
from melgenre_jax.runtime import parallel

# Settings that change what the backbone's input means: a backbone trained on
# other values would read its input wrongly, so such a source is refused.
FRONT_END_FIELDS = (
    'audio.sample_rate', 'audio.segment_seconds', 'features.n_fft', 'features.hop_length',
    'features.n_mels', 'features.fmin', 'features.fmax', 'features.mel_norm', 'features.htk',
    'features.top_db', 'features.amin', 'features.normalize', 'features.compression',
)


@dataclasses.dataclass(frozen=True)
class Source:
  """The run (and checkpoint step; None = its best) a new run starts from."""

  workdir: str
  step: int | None
  config: ml_collections.ConfigDict


def resolve_source(init_from: str) -> Source:
  """``config.init_from``: a run's workdir, or one of its ``checkpoints/<step>`` folders.

  (A pretrained spec such as ``musicnn:MSD_musicnn`` was already replaced by
  its imported workdir when the run started: modes/import_pretrained.py.)
  """
  path = os.path.abspath(os.path.expanduser(init_from))
  if not os.path.exists(path):
    raise ConfigError(f'config.init_from={init_from!r} does not exist: give the --workdir of a '
                      'finished run, or one of its checkpoint folders (WORKDIR/checkpoints/<step>).')
  parent, name = os.path.split(path.rstrip(os.sep))
  if name.isdigit() and os.path.basename(parent) == workdir_lib.CHECKPOINTS:
    workdir, step = os.path.dirname(parent), int(name)
  elif workdir_lib.has_checkpoints(path):
    workdir, step = path, None
  else:
    raise ConfigError(f'config.init_from={init_from!r} is neither a run\'s workdir (no '
                      'checkpoints/ folder in it) nor a checkpoint folder '
                      '(WORKDIR/checkpoints/<step>).')
  try:
    config = workdir_lib.load_workdir_config(workdir)
  except WorkdirError as e:
    raise ConfigError(f'config.init_from={init_from!r}: {e}') from None
  return Source(workdir=workdir, step=step, config=config)


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value: Any = config
  for part in dotted.split('.'):
    value = value.get(part) if value is not None else None
  return list(value) if isinstance(value, tuple) else value


def front_end_differences(source: ml_collections.ConfigDict,
                          config: ml_collections.ConfigDict) -> list[str]:
  """``FRONT_END_FIELDS`` whose values differ, as 'field: source has A, this run has B'."""
  return [f'{f}: source has {_field(source, f)!r}, this run has {_field(config, f)!r}'
          for f in FRONT_END_FIELDS if _field(source, f) != _field(config, f)]


def check_front_end(source: Source, config: ml_collections.ConfigDict) -> None:
  """Refuses a source whose inputs were made differently, naming each field."""
  diffs = front_end_differences(source.config, config)
  if diffs:
    raise ConfigError(
        f'config.init_from={source.workdir!r} was trained on other inputs than this run '
        'would give it:\n  ' + '\n  '.join(diffs) + '\nSet these fields as the source has '
        'them (--config.<field>=...) or start from scratch (--config.init_from=).')


@dataclasses.dataclass
class MergeReport:
  """Parameter/statistic paths by what happened to them."""

  loaded: list[str] = dataclasses.field(default_factory=list)
  reinitialized: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)


def _name(collection: str, path: tuple[str, ...]) -> str:
  return f'{collection}/' + '/'.join(path)


def head_permutation(source_labels: list[str], labels: list[str]) -> np.ndarray | None:
  """Source column of each of this run's labels, or None when the label sets differ."""
  if sorted(source_labels) != sorted(labels) or len(set(labels)) != len(labels):
    return None
  return np.asarray([source_labels.index(g) for g in labels])


def merge(fresh: dict[str, Any], source: dict[str, Any], permutation: np.ndarray | None,
          report: MergeReport) -> dict[str, Any]:
  """``fresh`` with every leaf of ``source`` at the same path and shape.

  ``fresh``/``source`` map a collection name ('params', 'batch_stats') to its
  nested dict. The head (paths starting with 'head') is taken only with a
  ``permutation`` of its output columns; otherwise it keeps its fresh values.
  """
  out = {}
  for collection, tree in fresh.items():
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    src = flax.traverse_util.flatten_dict(flax.core.unfreeze(source.get(collection, {})))
    merged = {}
    for path, value in flat.items():
      name = _name(collection, path)
      theirs = src.get(path)
      if path[0] == 'head':
        if permutation is None or theirs is None:
          report.reinitialized.append(name)
          merged[path] = value
          continue
        theirs = np.asarray(theirs)[..., permutation]
      if theirs is None:
        report.reinitialized.append(f'{name} (not in the source)')
        merged[path] = value
      elif tuple(np.shape(theirs)) != tuple(value.shape):
        report.skipped.append(f'{name} (source {tuple(np.shape(theirs))}, '
                              f'this run {tuple(value.shape)})')
        merged[path] = value
      else:
        report.loaded.append(name)
        merged[path] = np.asarray(theirs, value.dtype)
    out[collection] = flax.traverse_util.unflatten_dict(merged)
  return out


def initialize_from(config: ml_collections.ConfigDict, state: steps.TrainState,
                    labels: list[str], workdir: str, mesh) -> steps.TrainState:
  """``state`` (a fresh run's) with the source's matching weights and statistics.

  Feature statistics come from the source when it standardised its inputs: the
  backbone learned on inputs scaled by them. Writes WORKDIR/init_from.json.
  """
  source = resolve_source(config.init_from)
  check_front_end(source, config)
  model = inference.load_for_inference(source.config, source.workdir, source.step,
                                      calibrated=False)  # weights only
  same_task = source.config.task == config.task
  permutation = head_permutation(model.genres, list(labels)) if same_task else None
  report = MergeReport()
  theirs = jax.device_get({'params': model.variables.params,
                           'batch_stats': model.variables.batch_stats})
  ours = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  merged = merge(ours, theirs, permutation, report)
  replicated = parallel.replicated(mesh)
  updates = {k: jax.device_put(v, replicated) for k, v in merged.items()}
  if source.config.features.normalize:
    updates['feature_mean'] = jax.device_put(np.asarray(model.variables.feature_mean), replicated)
    updates['feature_std'] = jax.device_put(np.asarray(model.variables.feature_std), replicated)
  if state.ema_params is not None:  # the average starts from the loaded weights,
    # in buffers of its own: the step donates both trees.
    updates['ema_params'] = jax.device_put(merged['params'], replicated)
  state = state.replace(**updates)

  head = ('kept' if permutation is not None and list(model.genres) == list(labels) else
          'kept, columns reordered' if permutation is not None else
          're-initialised (the label set differs)')
  logging.info('init_from %s step %d: loaded %d arrays, re-initialised %d, skipped %d; '
               'classifier head %s.', source.workdir, model.step, len(report.loaded),
               len(report.reinitialized), len(report.skipped), head)
  for name in report.reinitialized + report.skipped:
    logging.info('init_from: not loaded: %s', name)
  if jax.process_index() == 0:
    record = {'source_workdir': source.workdir, 'source_step': model.step,
              'source_labels': list(model.genres), 'source_task': source.config.task,
              'head': head, **dataclasses.asdict(report)}
    with atomic.replaced_when_written(workdir_lib.path(workdir, workdir_lib.INIT_FROM)) as f:
      json.dump(record, f, indent=1)
  return state


def check_finetune(config: ml_collections.ConfigDict) -> None:
  """``config.finetune``'s values (meaningful with or without ``init_from``)."""
  finetune = config.get('finetune')
  if finetune is None:
    return
  freeze = finetune.freeze_backbone_epochs
  if isinstance(freeze, bool) or not isinstance(freeze, int) or freeze < -1:
    raise ConfigError(f'config.finetune.freeze_backbone_epochs={freeze!r} is invalid: an '
                      'epoch count >= 0, or -1 to keep the backbone frozen for the whole run.')
  multiplier = finetune.backbone_lr_multiplier
  if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not (
      0 <= multiplier < float('inf')):
    raise ConfigError(f'config.finetune.backbone_lr_multiplier={multiplier!r} is invalid: a '
                      'number >= 0 (1 = the schedule\'s rate, 0.1 = ten times slower).')
  if (freeze != 0 or multiplier != 1) and not config.get('init_from'):
    logging.warning('config.finetune is set without config.init_from: the backbone it '
                    'freezes or slows is randomly initialised.')


def check_before_training(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails fast (before data loading and compiles) on bad transfer settings of a fresh run."""
  check_finetune(config)
  if not config.get('init_from') or checkpointing.complete_steps(workdir):
    return
  check_front_end(resolve_source(config.init_from), config)
