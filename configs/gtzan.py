"""GTZAN with Kereliuk et al.'s fault-filtered split (443/197/290 songs).

  python main.py --config configs/gtzan.py --config.data.root=/path/to/gtzan \
      --workdir runs/gtzan

The root may hold genres/ (original .au), genres_original/ (Kaggle .wav), a
Data/ folder around either, or be the genres folder itself. Other published
splits: --config.data.split=gtzan_stratified, or gtzan_artist_3fold with
--config.data.fold=0|1|2.
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
  config.data.source = 'gtzan'
  config.data.root = ''  # required: --config.data.root=/path/to/gtzan
  config.data.split = 'gtzan_fault_filtered'
  return config
