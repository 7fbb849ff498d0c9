"""A run's folder (``--workdir``): one owner for what it holds and for its saved config.

Training writes the files below; eval, predict, embed, export, calibrate, a
resumed run and a transfer source read them back. Naming each file here, and
reading ``config.json`` in one place, keeps the writers and the readers from
drifting apart, and lets a config saved before a field existed get that
field's old meaning once, at load, instead of a ``config.get(field, default)``
in every reader.

  WORKDIR/config.json             the run's config (rewritten by every run)
  WORKDIR/dataset.json            genres (tags), task and the song keys of each split
  WORKDIR/data_summary.json       what the data loader found (songs, skips, split)
  WORKDIR/calibration.json        temperature per checkpoint step
  WORKDIR/metrics.json, .csv      one row per epoch
  WORKDIR/init_from.json          what a transfer run took from its source
  WORKDIR/checkpoints/<step>/     Orbax checkpoints
  WORKDIR/cache/                  the decoded-audio cache (config.data.cache_dir overrides)
  WORKDIR/eval/, predictions/, embeddings/, cv/, tune/: the modes' outputs
  WORKDIR/export/                 named by modes/export.py alone (its loader imports nothing)
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import ml_collections

from melgenre_jax.errors import WorkdirError

CONFIG = 'config.json'
DATASET = 'dataset.json'
DATA_SUMMARY = 'data_summary.json'
CALIBRATION = 'calibration.json'
CALIBRATION_PLOT = 'calibration_reliability.png'
METRICS_JSON = 'metrics.json'
METRICS_CSV = 'metrics.csv'
INIT_FROM = 'init_from.json'
IMPORTED_FROM = 'imported_from.json'  # --mode=import: where the weights came from
EVAL_REPORT = 'report.json'  # in EVAL
LEARNING_RATE_PLOT = 'learning_rate.png'
TRAINING_CURVES_PLOT = 'training_curves.png'
CHECKPOINTS = 'checkpoints'
CACHE = 'cache'
EVAL = 'eval'
PREDICTIONS = 'predictions'
EMBEDDINGS = 'embeddings'
CV = 'cv'
TUNE = 'tune'

# Fields added after runs were first saved, with the meaning an older
# config.json had without them: task (a genre run), model.name (the one family).
OLD_CONFIG_DEFAULTS = (('task', 'genre'), ('model.name', 'crnn'), ('model.distill_outputs', 0))


def path(workdir: str, name: str) -> str:
  """``WORKDIR/name`` (``name`` one of this module's constants)."""
  return os.path.join(workdir, name)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def has_checkpoints(workdir: str) -> bool:
  return os.path.isdir(checkpoint_dir(workdir))


def read_config_dict(workdir: str) -> dict[str, Any]:
  """``config.json`` as a dict (JSON lists), old configs' missing fields filled in."""
  file = path(workdir, CONFIG)
  if not os.path.exists(file):
    raise WorkdirError(
        f'{file} not found: is {workdir!r} the --workdir of a training run? Train '
        'first (python main.py --config configs/synthetic.py --workdir ...) or '
        'point --workdir at an existing run.')
  try:
    with open(file) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f'{file} cannot be read ({e}): restore it from a copy, or start over with a new '
        '--workdir (and --config).') from None
  if not isinstance(saved, dict):
    raise WorkdirError(f'{file} holds no config (a JSON object was expected): restore it '
                       'from a copy, or start over with a new --workdir (and --config).')
  return fill_old_defaults(saved)


def fill_old_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """A copy of ``saved`` with each ``OLD_CONFIG_DEFAULTS`` field it lacks set."""
  saved = copy.deepcopy(saved)
  for dotted, value in OLD_CONFIG_DEFAULTS:
    *parents, name = dotted.split('.')
    node = saved
    for part in parents:
      node = node.get(part)
      if not isinstance(node, dict):
        break
    else:
      node.setdefault(name, value)
  return saved


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (``config.json``, written by the train loop)."""
  return ml_collections.ConfigDict(_tuples(read_config_dict(workdir)))


def config_or_none(workdir: str) -> ml_collections.ConfigDict | None:
  """``load_workdir_config``, or None when there is none to read (the mode says why)."""
  try:
    return load_workdir_config(workdir)
  except WorkdirError:
    return None


def _tuples(d: Any) -> Any:
  """JSON lists back to tuples, as the config files write them."""
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d


def read_dataset_info(workdir: str) -> dict[str, Any]:
  """``dataset.json``: genres (a multi-label run's tags), task and each split's song keys."""
  file = path(workdir, DATASET)
  if not os.path.exists(file):
    raise WorkdirError(f'{file} not found: {workdir!r} is not a training workdir '
                       '(or training never got past loading the data).')
  with open(file) as f:
    return json.load(f)


def load_genres(workdir: str) -> list[str]:
  return list(read_dataset_info(workdir)['genres'])
