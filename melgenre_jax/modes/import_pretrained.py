"""``--mode=import --import_from=SPEC``: a pretrained tagger becomes an ordinary workdir.

  python main.py --mode=import --import_from=musicnn:MSD_musicnn --workdir runs/msd_musicnn

SPEC is ``musicnn:MSD_musicnn`` / ``musicnn:MTT_musicnn`` (the wheel is fetched
once with ``pip download --no-deps`` into ``$MELGENRE_CACHE/wheels``, default
``~/.cache/melgenre_jax/wheels``), a path to ``musicnn-0.1.0-py3-none-any.whl``
(``WHEEL:MTT_musicnn`` picks the model; MSD by default) or an unpacked
checkpoint folder. The config is the given one (``--config``, e.g.
configs/musicnn.py) with the checkpoint's input format and architecture set
(``pretrained.musicnn.family_config``). Afterwards predict, embed, export and
``--config.init_from=WORKDIR`` work on it like on a trained run.

``resolve_specs`` lets a training config name a tagger directly
(``config.init_from`` or ``config.distill.teacher`` = ``musicnn:MSD_musicnn``):
it is imported once into ``$MELGENRE_CACHE/imported/`` when train, cv or tune
starts, and the config then names that workdir.
"""

from __future__ import annotations

import ml_collections
from absl import logging

from melgenre_jax.errors import ConfigError
from melgenre_jax.pretrained import musicnn


def import_workdir(config: ml_collections.ConfigDict, workdir: str, import_from: str) -> str:
  """Imports ``import_from`` into ``workdir``; returns the workdir's absolute path."""
  if not import_from:
    raise ConfigError('--mode=import needs --import_from=SPEC, e.g. '
                      '--import_from=musicnn:MSD_musicnn (or a path to the musicnn wheel or '
                      'to an unpacked checkpoint folder).')
  if config is None:
    raise ConfigError('--mode=import needs a base config: add --config configs/musicnn.py.')
  path = musicnn.import_to_workdir(import_from, workdir, config)
  print(f'Imported {import_from} into {path}: try --mode=predict, --mode=embed, or '
        f'--config.init_from={path} to fine-tune.')
  logging.info('Imported %s into %s.', import_from, path)
  return path


SPEC_FIELDS = ('init_from', 'distill.teacher')  # config fields that may name a pretrained tagger


def resolve_specs(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with every pretrained spec in ``SPEC_FIELDS`` replaced by its imported workdir."""
  config = ml_collections.ConfigDict(config.to_dict())
  for dotted in SPEC_FIELDS:
    *parents, name = dotted.split('.')
    node = config
    for part in parents:
      node = node.get(part) if node is not None else None
    value = str(node.get(name, '')) if node is not None else ''
    if musicnn.is_spec(value):
      node[name] = musicnn.imported_workdir(value, config)
      logging.info('config.%s=%s -> %s', dotted, value, node[name])
  return config
