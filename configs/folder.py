"""Your own music: ROOT/<genre>/**/<song files>, stratified split by song.

  python main.py --config configs/folder.py --config.data.root=/path/to/music \
      --workdir runs/mine

Genres are the top-level folder names; nested folders are fine. Songs are
split by song (seeded, stratified by genre) with the default fractions.
"""

import importlib.util
import os

import ml_collections


def _default_config_module():
  # ml_collections loads config files by path, not as a package member, so
  # `from configs import default` is not reliable; load the sibling file.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  spec = importlib.util.spec_from_file_location('_melgenre_default_config',
                                                path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config() -> ml_collections.ConfigDict:
  config = _default_config_module().get_config()
  config.data.source = 'folder'
  config.data.root = ''  # required: --config.data.root=/path/to/music
  config.data.split = 'stratified'
  return config
