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
