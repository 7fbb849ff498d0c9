"""musicnn's trained taggers (musicnn 0.1.0, ISC licence) as ordinary workdirs.

Where the weights come from (``resolve``): a spec ``musicnn:MSD_musicnn``,
``musicnn:MTT_musicnn`` (or ``MSD_vgg`` / ``MTT_vgg``, the VGG baselines)
fetches the wheel once with ``pip download --no-deps musicnn==0.1.0`` into
``$MELGENRE_CACHE/wheels`` (default ``~/.cache/melgenre_jax/wheels``); a path
to that wheel (``WHEEL:MODEL`` picks the model), or to an unpacked checkpoint
folder (``.../musicnn/MSD_musicnn/``) works too. The package itself is never
installed: its dependencies (TensorFlow 1, numpy < 1.17) do not exist for this
Python, and only its checkpoint files and tag names are needed. The tag names
are read from its ``configuration.py`` with ``ast``.

``map_variables`` puts every TensorFlow variable onto the Flax tree by name
(creation order of ``tf.compat.v1.layers`` in musicnn/models.py; families
'musicnn' and 'vgg', melgenre_jax/models/); Adam slots
and beta powers are training state and are skipped by rule; anything else
unmapped, missing or of another shape is an error naming it.
``import_to_workdir`` writes config.json, dataset.json and a checkpoint that
predict, embed, export and ``--config.init_from`` read like any run's.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import models
from melgenre_jax import steps
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import ConfigError, UserError
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.pretrained import tf_checkpoint, to_workdir

PACKAGE = 'musicnn'
VERSION = '0.1.0'
WHEEL = f'{PACKAGE}-{VERSION}-py3-none-any.whl'
MODELS = ('MSD_musicnn', 'MTT_musicnn', 'MSD_vgg', 'MTT_vgg')
CACHE_ENV = 'MELGENRE_CACHE'
# TF variables that are optimizer state, not the model: skipped by rule.
_OPTIMIZER_SUFFIXES = ('/Adam', '/Adam_1')
_OPTIMIZER_NAMES = ('beta1_power', 'beta2_power', 'global_step')


class PretrainedError(UserError, ValueError):
  """The pretrained source cannot be found, fetched or mapped; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One musicnn checkpoint on disk: the bundle prefix, its model name, its tag names."""

  model: str
  prefix: str
  labels: tuple[str, ...]


# ------------------------------------------------------------ where from

def cache_root() -> str:
  """``$MELGENRE_CACHE``, default ``~/.cache/melgenre_jax``."""
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache',
                                                   'melgenre_jax')


def cache_dir() -> str:
  """Where the wheel is downloaded once."""
  return os.path.join(cache_root(), 'wheels')


def is_spec(text: str) -> bool:
  """``musicnn:MODEL`` (what ``config.init_from`` may name instead of a workdir)."""
  return text.startswith(PACKAGE + ':')


def imported_workdir(spec: str, base: ml_collections.ConfigDict) -> str:
  """The workdir ``musicnn:MODEL`` is imported into once (under the cache), imported if missing.

  Lets ``--config.init_from=musicnn:MSD_musicnn`` fine-tune without a separate
  ``--mode=import`` step; the import is the same one.
  """
  workdir = os.path.join(cache_root(), 'imported', _check_model(spec[len(PACKAGE) + 1:]))
  if not os.path.isfile(workdir_lib.path(workdir, workdir_lib.CONFIG)):
    logging.info('config.init_from=%s: importing it into %s (once).', spec, workdir)
    import_to_workdir(spec, workdir, base)
  return workdir


def fetch_wheel(directory: str | None = None) -> str:
  """The cached wheel, downloaded first (pip, no dependencies) when missing."""
  directory = directory or cache_dir()
  path = os.path.join(directory, WHEEL)
  if os.path.isfile(path):
    return path
  os.makedirs(directory, exist_ok=True)
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
         '--dest', directory, f'{PACKAGE}=={VERSION}']
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode != 0 or not os.path.isfile(path):
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ['']
    raise PretrainedError(f'Could not download {PACKAGE}=={VERSION} ({tail[0]}); download it '
                          f'elsewhere (pip download --no-deps {PACKAGE}=={VERSION}) and pass '
                          f'--import_from=PATH/{WHEEL}.')
  return path


def labels_from_source(configuration_py: str, model: str) -> tuple[str, ...]:
  """MSD_LABELS or MTT_LABELS from musicnn's configuration.py, parsed, never executed."""
  wanted = 'MSD_LABELS' if model.startswith('MSD') else 'MTT_LABELS'
  for node in ast.parse(configuration_py).body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], 'id', None) == wanted):
      return tuple(str(x) for x in ast.literal_eval(node.value))
  raise PretrainedError(f'{wanted} not found in musicnn\'s configuration.py: not musicnn '
                        f'{VERSION}? Pass its wheel ({WHEEL}).')


def _check_model(model: str) -> str:
  if model not in MODELS:
    raise ConfigError(f'--import_from: unknown musicnn model {model!r}; choose one of '
                      f'{", ".join(MODELS)} (e.g. --import_from=musicnn:MSD_musicnn).')
  return model


def _from_wheel(wheel: str, model: str, scratch: str) -> Checkpoint:
  try:
    with zipfile.ZipFile(wheel) as z:
      config_py = z.read(f'{PACKAGE}/configuration.py').decode('utf-8')
      for suffix in ('.index', '.data-00000-of-00001'):
        with open(os.path.join(scratch, suffix), 'wb') as f:
          f.write(z.read(f'{PACKAGE}/{model}/{suffix}'))
  except (zipfile.BadZipFile, KeyError, OSError) as e:
    raise PretrainedError(f'{wheel}: not a readable {WHEEL} ({e}); delete it and rerun the '
                          'import to download it again.') from e
  return Checkpoint(model, scratch + os.sep, labels_from_source(config_py, model))


def _from_folder(folder: str) -> Checkpoint:
  folder = os.path.abspath(folder.rstrip(os.sep))
  model = _check_model(os.path.basename(folder))
  config_py = os.path.join(os.path.dirname(folder), 'configuration.py')
  if not os.path.isfile(os.path.join(folder, '.index')) or not os.path.isfile(config_py):
    raise PretrainedError(f'{folder}: expected an unpacked musicnn checkpoint folder (with '
                          '.index, .data-00000-of-00001, and configuration.py in its parent).')
  with open(config_py, encoding='utf-8') as f:
    return Checkpoint(model, folder + os.sep, labels_from_source(f.read(), model))


def resolve(spec: str, scratch: str) -> Checkpoint:
  """``musicnn:MODEL`` | ``WHEEL[:MODEL]`` | checkpoint folder -> a Checkpoint (in scratch)."""
  if spec.startswith(f'{PACKAGE}:'):
    return _from_wheel(fetch_wheel(), _check_model(spec.split(':', 1)[1]), scratch)
  path, _, model = spec.partition('.whl')
  if model or spec.endswith('.whl'):
    model = model.lstrip(':') or 'MSD_musicnn'
    wheel = os.path.expanduser(path + '.whl')
    if not os.path.isfile(wheel):
      raise PretrainedError(f'--import_from={spec!r}: {wheel} does not exist.')
    return _from_wheel(wheel, _check_model(model), scratch)
  if os.path.isdir(os.path.expanduser(spec)):
    return _from_folder(os.path.expanduser(spec))
  raise PretrainedError(f'--import_from={spec!r}: give musicnn:MODEL ({", ".join(MODELS)}), '
                        f'a path to {WHEEL} (optionally WHEEL:MODEL), or an unpacked '
                        'checkpoint folder.')


# ------------------------------------------------------------- mapping

def family_of(model: str) -> str:
  """The Flax family (config.model.name) of a musicnn checkpoint name."""
  return 'vgg' if model.endswith('_vgg') else 'musicnn'


def _flax_order(family: str) -> list[tuple[str, str]]:
  """(Flax module, kind) in the order musicnn/models.py creates the TF layers."""
  order = [('input_bn', 'bn')]
  if family == 'vgg':
    for i in range(1, 6):
      order += [(f'conv{i}', 'conv'), (f'bn{i}', 'bn')]
    return order + [('head', 'dense')]
  for name in ('timbral_74', 'timbral_77', 'temporal_128', 'temporal_64', 'temporal_32',
               'midend_1', 'midend_2', 'midend_3'):
    order += [(f'{name}_conv', 'conv'), (f'{name}_bn', 'bn')]
  return order + [('pool_bn', 'bn'), ('penultimate_dense', 'dense'), ('penultimate_bn', 'bn'),
                  ('head', 'dense')]


def layer_names(family: str = 'musicnn') -> list[tuple[str, str, str]]:
  """(TF layer name, Flax module name, kind): TF's automatic names count per layer type.

  The VGG names its convolutions ('1CNN' .. '5CNN'); everything else is
  ``batch_normalization[_N]``, ``conv2d[_N]``, ``dense[_N]`` in creation order.
  """
  counts = {'bn': 0, 'conv': 0, 'dense': 0}
  tf_base = {'bn': 'batch_normalization', 'conv': 'conv2d', 'dense': 'dense'}
  out = []
  for flax_name, kind in _flax_order(family):
    n = counts[kind]
    counts[kind] += 1
    tf_name = tf_base[kind] + (f'_{n}' if n else '')
    if family == 'vgg' and kind == 'conv':
      tf_name = f'{n + 1}CNN'
    out.append((tf_name, flax_name, kind))
  return out


_VARIABLES = {
    'bn': (('gamma', 'params', 'scale'), ('beta', 'params', 'bias'),
           ('moving_mean', 'batch_stats', 'mean'), ('moving_variance', 'batch_stats', 'var')),
    'conv': (('kernel', 'params', 'kernel'), ('bias', 'params', 'bias')),
    'dense': (('kernel', 'params', 'kernel'), ('bias', 'params', 'bias')),
}


def is_optimizer_state(name: str) -> bool:
  return name in _OPTIMIZER_NAMES or name.endswith(_OPTIMIZER_SUFFIXES)


def map_variables(tensors: dict[str, np.ndarray], target: dict[str, Any],
                  family: str = 'musicnn') -> dict[str, Any]:
  """TF name -> array onto ``target`` ({'params': ..., 'batch_stats': ...} of the Flax model).

  Returns a tree of the target's structure filled with the checkpoint's arrays.
  Every model variable of the checkpoint is used exactly once and every Flax
  leaf is filled, with the same shape; otherwise the error names the variable.
  """
  out = {'params': {}, 'batch_stats': {}}
  used = set()
  for tf_layer, flax_name, kind in layer_names(family):
    for tf_var, collection, flax_var in _VARIABLES[kind]:
      name = f'{tf_layer}/{tf_var}'
      try:
        want = target[collection][flax_name][flax_var]
      except KeyError:
        raise PretrainedError(f'The Flax model has no {collection}/{flax_name}/{flax_var} for '
                              f'checkpoint variable {name}: not a musicnn checkpoint?') from None
      if name not in tensors:
        raise PretrainedError(f'Checkpoint variable {name} (for {collection}/{flax_name}/'
                              f'{flax_var}) is missing: not a musicnn {family} checkpoint.')
      value = np.asarray(tensors[name], np.float32)
      if tuple(value.shape) != tuple(want.shape):
        raise PretrainedError(f'Checkpoint variable {name} has shape {value.shape}, the Flax '
                              f'{collection}/{flax_name}/{flax_var} {tuple(want.shape)}: '
                              f'another musicnn variant? Use one of {", ".join(MODELS)}.')
      out[collection].setdefault(flax_name, {})[flax_var] = value
      used.add(name)
  left = sorted(n for n in tensors if n not in used and not is_optimizer_state(n))
  if left:
    raise PretrainedError(f'Checkpoint variables not mapped onto the Flax model: {", ".join(left)} '
                          '(a different musicnn architecture?).')
  for collection, modules in target.items():
    for module, leaves in modules.items():
      for leaf in leaves:
        if leaf not in out[collection].get(module, {}):
          raise PretrainedError(f'Flax variable {collection}/{module}/{leaf} got no checkpoint '
                                'value.')
  return out


def load(spec: str, scratch: str | None = None) -> tuple[Checkpoint, dict[str, np.ndarray]]:
  """The checkpoint's description and all its tensors (crc-checked), read without TensorFlow."""
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = resolve(spec, scratch or tmp)
    return ckpt, tf_checkpoint.read_bundle(ckpt.prefix)


# -------------------------------------------------------------- workdir

# The fields a musicnn checkpoint fixes: its input format and architecture
# (configs/musicnn.py spells the same values out as a recipe).
FAMILY_FIELDS = (
    ('task', 'multilabel'),
    ('audio.sample_rate', 16000),
    ('audio.segment_seconds', 186 * 256 / 16000),  # 187 centred frames at hop 256
    ('audio.segment_hop_seconds', 186 * 256 / 16000),
    ('features.n_fft', 512), ('features.hop_length', 256), ('features.n_mels', 96),
    ('features.fmin', 0.0), ('features.fmax', 0.0), ('features.mel_norm', 'slaney'),
    ('features.htk', False), ('features.compression', 'log10_10000'),
    ('features.normalize', False),
    ('model.dropout', 0.5), ('model.batchnorm_momentum', 0.99), ('model.bn_epsilon', 1e-3),
    ('model.dtype', 'float32'), ('model.frozen', ''),
)
MODEL_FIELDS = {
    'musicnn': (('model.name', 'musicnn'), ('model.frontend_filters', 1.6),
                ('model.midend_filters', 64), ('model.backend_units', 200)),
    'vgg': (('model.name', 'vgg'), ('model.filters', 128), ('model.conv_dropout', 0.25)),
}


def family_config(base: ml_collections.ConfigDict,
                  family: str = 'musicnn') -> ml_collections.ConfigDict:
  """``base`` (e.g. configs/musicnn.py, or any recipe) with the checkpoint's fixed fields set."""
  config = ml_collections.ConfigDict(base.to_dict())
  for dotted, value in FAMILY_FIELDS + MODEL_FIELDS[family]:
    *parents, name = dotted.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[name] = value  # new keys too (ConfigDict item assignment adds them)
  config.init_from = ''
  return config


def flax_target(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """The Flax model's variables as shapes only (what ``map_variables`` fills)."""
  spec = InputSpec.from_config(config)
  model = models.create_model(config.model, num_classes)
  fresh = jax.eval_shape(lambda rng: steps.init_variables(spec, model, rng),
                         jax.random.PRNGKey(0))
  return {'params': fresh.params, 'batch_stats': fresh.batch_stats}


def import_to_workdir(spec: str, workdir: str, base: ml_collections.ConfigDict) -> str:
  """Reads the checkpoint named by ``spec``, maps it, writes an ordinary workdir; its path."""
  ckpt, tensors = load(spec)
  family = family_of(ckpt.model)
  config = family_config(base, family)
  variables = map_variables(tensors, flax_target(config, len(ckpt.labels)), family)
  source = {'import_from': spec, 'package': f'{PACKAGE}=={VERSION}', 'model': ckpt.model,
            'licence': 'ISC (musicnn, Jordi Pons and Xavier Serra)',
            'variables': len(tensors),
            'optimizer_state_skipped': sorted(n for n in tensors if is_optimizer_state(n))[:4]}
  return to_workdir.write(config, workdir, list(ckpt.labels), variables, source)
